"""The runtime end to end on a generated drive: plans, stamps, BEV output, report; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.drives.generate import generate_drive
from edge.drives.sync import SyncConfig, Synchronizer
from edge.errors import ConfigError, EdgeError
from edge.runtime.cli import RunConfig, run_drive
from edge.runtime.runtime import Runtime
from edge.runtime.scheduler import Budget


@pytest.fixture(scope="module")
def drive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_drive(tmp_path_factory.mktemp("rt") / "siren", seed=7, duration=2.0, scenario="siren",
                          progress=False).path


def test_frames_carry_input_stamps_and_bev(drive: Path) -> None:
    # A budget everything fits and compute valued at nothing: every encoder with data runs.
    rt = Runtime(budget=Budget(latency_ms=10_000.0), quality_per_ms=0.0)
    samples = list(Synchronizer(drive, SyncConfig(image_reduce=rt.stack.cfg.image_reduce)))
    results = [rt.step(s) for s in samples]
    assert results[0].decision.changed and results[0].decision.reason == "first plan"
    last = results[-1]
    assert set(last.plan.modalities) == {"fisheye", "ultrasonic", "audio", "camera"}
    assert last.source_stamps == samples[-1].source_stamps and last.stamp_ns == samples[-1].stamp_ns
    grid = last.occupancy_grid()
    assert grid is not None and grid.dtype.name == "int8" and set(map(int, set(grid.ravel()))) <= {0, 100, 90, 80, -1}
    assert last.timings_ms["fisheye"] > 0 and last.timings_ms["total"] >= last.timings_ms["fisheye"]
    assert last.audio is not None and last.audio["event"] in ("none", "siren", "horn")


def test_bounded_queue_drops_the_oldest(drive: Path) -> None:
    rt = Runtime(queue_depth=2)
    samples = list(Synchronizer(drive, SyncConfig(image_reduce=rt.stack.cfg.image_reduce)))[:5]
    for s in samples:
        rt.submit(s)
    assert rt.dropped == 3
    out = rt.drain()
    assert [r.stamp_ns for r in out] == [s.stamp_ns for s in samples[-2:]]


def test_run_writes_report_without_llm(drive: Path, tmp_path: Path) -> None:
    summary = run_drive(drive, RunConfig(use_llm=False, budget_ms=10_000.0, quality_per_ms=0.0), tmp_path / "rep",
                        progress=False)
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert summary["frames"] == len(doc["frames"]) == 20
    frame = doc["frames"][-1]
    assert {"plan", "timings_ms", "rss_mb", "source_stamps", "occupancy_near5m", "obstacle_iou_near5m"} <= set(frame)
    assert doc["switches"][0]["reason"] == "first plan"
    assert 0.0 <= summary["obstacle_iou_near5m_mean"] <= 1.0
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "<svg" in html and "data:image/png;base64," in html and "Plan changes" in html


def test_impossible_budget_keeps_running_and_says_so(drive: Path, tmp_path: Path) -> None:
    summary = run_drive(drive, RunConfig(use_llm=False, budget_ms=0.001, max_frames=5), tmp_path / "rep",
                        progress=False)
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert summary["frames"] == 5 and doc["frames"][-1]["plan"]["modalities"]  # still serving the cheapest plan
    assert "no plan fits the budget" in doc["switches"][0]["reason"]


def test_bad_configuration_is_a_clear_error(tmp_path: Path) -> None:
    from edge.config import load_yaml_model

    bad = tmp_path / "run.yaml"
    bad.write_text("policy: sometimes\n")
    with pytest.raises(ConfigError, match="key 'policy'"):
        load_yaml_model(bad, RunConfig)
    bad.write_text("budget_ms: 100\nbudget_msec: 5\n")
    with pytest.raises(ConfigError, match="key 'budget_msec': unknown key"):
        load_yaml_model(bad, RunConfig)
    with pytest.raises(EdgeError, match="eval.json: missing"):
        empty = tmp_path / "perception"
        empty.mkdir()
        import shutil

        for f in Path(RunConfig().perception_dir).glob("*.safetensors"):
            shutil.copy(f, empty / f.name)
        Runtime(empty)


def test_bench_reports_latency_by_header_stamp_and_compares(drive: Path, tmp_path: Path) -> None:
    from edge.runtime.bench import compare, run_bench

    report = run_bench(drive, rates=[2.0], frames=8, warmup=2, policy="all", use_llm=False, peak=False)
    run = report["fixed_rate"][0]
    assert run["samples"] == 8 and run["processed"] + run["dropped"] >= 6
    assert run["latency_ms"]["p50"] is not None and run["latency_ms"]["min"] <= run["latency_ms"]["p99"]
    assert {"fisheye", "fusion", "total"} <= set(run["stages_ms"])
    assert report["meta"]["data_sha256"] and report["meta"]["cpu"] and "torch" in report["meta"]
    text = compare(report, report)
    assert "2Hz" in text and "1.00" in text
