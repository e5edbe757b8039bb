"""The runtime end to end on a generated drive: plans, stamps, BEV output, report; bad input."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from edge.config import RuntimeConfig
from edge.drives.generate import generate_drive
from edge.drives.sync import SyncConfig, Synchronizer
from edge.errors import ConfigError, EdgeError
from edge.runtime.cli import run_drive
from edge.runtime.cost_model import timed_call
from edge.runtime.runtime import WARMUP_PASSES, Runtime
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
    assert last.extras["audio"] is not None and last.extras["audio"]["event"] in ("none", "siren", "horn")


def test_bounded_queue_drops_the_oldest(drive: Path) -> None:
    rt = Runtime(queue_depth=2)
    samples = list(Synchronizer(drive, SyncConfig(image_reduce=rt.stack.cfg.image_reduce)))[:5]
    for s in samples:
        rt.submit(s)
    assert rt.dropped == 3
    out = rt.drain()
    assert [r.stamp_ns for r in out] == [s.stamp_ns for s in samples[-2:]]


def test_run_writes_report_without_llm(drive: Path, tmp_path: Path) -> None:
    summary = run_drive(drive, RuntimeConfig(use_llm=False, budget_ms=10_000.0, quality_per_ms=0.0), tmp_path / "rep",
                        progress=False)
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert summary["frames"] == len(doc["frames"]) == 20
    assert doc["summary"]["partial"] is False and doc["frames_file"] == "frames.jsonl"  # streamed as it ran
    frames_file = (tmp_path / "rep" / "frames.jsonl").read_text().splitlines()
    assert [json.loads(line)["stamp_ns"] for line in frames_file] == [f["stamp_ns"] for f in doc["frames"]]
    frame = doc["frames"][-1]
    assert {"plan", "timings_ms", "rss_mb", "source_stamps", "occupancy_near5m", "obstacle_iou_near5m"} <= set(frame)
    assert doc["switches"][0]["reason"] == "first plan"
    assert 0.0 <= summary["obstacle_iou_near5m_mean"] <= 1.0
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "<svg" in html and "data:image/png;base64," in html and "Plan changes" in html


def test_impossible_budget_keeps_running_and_says_so(drive: Path, tmp_path: Path) -> None:
    # 1 ms: the smallest budget the configuration accepts, below any plan's cost (encoders alone take more)
    summary = run_drive(drive, RuntimeConfig(use_llm=False, budget_ms=1.0, max_frames=5), tmp_path / "rep",
                        progress=False)
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert summary["frames"] == 5 and doc["frames"][-1]["plan"]["modalities"]  # still serving the cheapest plan
    assert "no plan fits the budget" in doc["switches"][0]["reason"]


def test_bad_configuration_is_a_clear_error(tmp_path: Path) -> None:
    from edge.config import load_yaml_model

    bad = tmp_path / "run.yaml"
    bad.write_text("policy: sometimes\n")
    with pytest.raises(ConfigError, match="key 'policy'"):
        load_yaml_model(bad, RuntimeConfig)
    bad.write_text("budget_ms: 100\nbudget_msec: 5\n")
    with pytest.raises(ConfigError, match="key 'budget_msec': unknown key"):
        load_yaml_model(bad, RuntimeConfig)
    with pytest.raises(EdgeError, match="eval.json: missing"):
        empty = tmp_path / "perception"
        empty.mkdir()
        import shutil

        for f in Path(RuntimeConfig().perception_dir).glob("*.safetensors"):
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


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: one thread option, half the calibration, and no 2-thread stalls on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_slow_first_measurement_is_re_measured_and_the_plan_recovers_within_the_bound(
        drive: Path, one_thread: None) -> None:
    clock = [0.0]
    rt: Runtime | None = None

    def slow_at_start_up(name: str, fn: Any) -> tuple[Any, float, float]:
        out, wall, cpu = timed_call(fn)
        if name == "fisheye" and not rt._calibrated:  # type: ignore[union-attr]
            wall, cpu = wall + 5000.0, cpu + 5000.0  # slow, not visibly preempted: start-up cannot tell
        return out, wall, cpu

    rt = Runtime(budget=Budget(latency_ms=2000.0), quality_per_ms=0.0, dwell=2, clock=lambda: clock[0],
                 stopwatch=slow_at_start_up)
    samples = list(Synchronizer(drive, SyncConfig(image_reduce=rt.stack.cfg.image_reduce)))
    frames = []
    for s in samples:
        clock[0] += 0.5  # 2 Hz of a fake clock: 20 frames span 10 s
        frames.append((clock[0], rt.step(s)))
    assert "fisheye" not in frames[0][1].plan.modalities  # 5 s a frame does not fit 2 s
    probed = [t for t, r in frames if "fisheye/1" in r.probes_ms]
    assert probed and probed[0] - frames[0][0] <= rt.costs.max_age_s  # re-measured within the bound
    chosen = [t for t, r in frames if "fisheye" in r.plan.modalities]
    assert chosen and chosen[0] <= probed[0] + 2 * 0.5  # and chosen within the dwell
    assert rt.costs.p50("fisheye") < 5000.0


@pytest.fixture
def two_threads() -> Iterator[None]:
    """Two intra-op threads: the runtime calibrates every stage at 1 and at 2."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_calibration_warms_every_thread_count_then_times_them_in_turn(drive: Path, two_threads: None) -> None:
    """Timed one thread count after the other, the first one counted was the cold one (fisheye on 1 thread
    calibrated at 40 ms, ran at 21-23 ms in frames: the 40 ms budget's best plan was never chosen, issue 16)."""
    calls: list[int] = []
    rt: Runtime | None = None

    def cold_at_first(name: str, fn: Any) -> tuple[Any, float, float]:
        out, _, _ = timed_call(fn)
        if name != "fisheye" or rt._calibrated:  # type: ignore[union-attr]
            return out, 1.0, 1.0
        calls.append(torch.get_num_threads())
        ms = 100.0 if len(calls) <= 2 * WARMUP_PASSES else 10.0 + len(calls)  # the warm-up passes are slow
        return out, ms, ms

    rt = Runtime(budget=Budget(latency_ms=2000.0), stopwatch=cold_at_first)
    assert rt.thread_options == (1, 2)
    rt.calibrate(next(iter(Synchronizer(drive, SyncConfig(image_reduce=rt.stack.cfg.image_reduce)))))
    assert calls == [1, 2] * (WARMUP_PASSES + 3)  # warm-ups at each count, then the counted repeats in turn
    assert rt.costs.p50("fisheye", threads=1) == 10.0 + 2 * WARMUP_PASSES + 3  # repeats 1, 3, 5 after warm-up
    assert rt.costs.p50("fisheye", threads=2) == 10.0 + 2 * WARMUP_PASSES + 4


def test_a_sensor_that_arrives_after_start_up_is_measured_on_arrival_and_chosen(
        drive: Path, one_thread: None) -> None:
    rt = Runtime(budget=Budget(latency_ms=10_000.0), quality_per_ms=0.0, dwell=2)
    samples = list(Synchronizer(drive, SyncConfig(image_reduce=rt.stack.cfg.image_reduce)))

    def without_ultrasonic(s: Any) -> Any:
        return dataclasses.replace(s.with_data(ultrasonic={k: None for k in s.data["ultrasonic"]}), source_stamps={
            k: v for k, v in s.source_stamps.items() if not k.startswith("ultrasonic/")})

    results = [rt.step(without_ultrasonic(s) if i < 8 else s) for i, s in enumerate(samples)]
    assert not rt.costs.measured("ultrasonic", threads=1) or "ultrasonic/1" in results[8].probes_ms
    assert all("ultrasonic" not in r.plan.modalities for r in results[:8])
    assert {"ultrasonic/1", "fusion/1"} <= set(results[8].probes_ms)  # measured on its first sample
    assert "ultrasonic" in results[11].plan.modalities  # and chosen once the dwell passed


class _SlowLLM:
    """An answerer whose generation waits until released: proves frames go on while it talks."""

    n_blocks = 8
    prior = {"reverse": "yes"}

    def __init__(self) -> None:
        self.release = threading.Event()
        self.fed: list[tuple[str, ...]] = []
        self.attached: tuple[str, ...] = ()

    def aligner_sets(self) -> tuple:
        return ()

    def apply(self, plan: Any, tokens: dict[str, torch.Tensor]) -> None:
        self.attached = tuple(sorted(tokens))
        self.fed.append(self.attached)

    def answer(self, question: str) -> str:
        assert self.release.wait(timeout=60)
        return "yes"


def test_answers_are_generated_off_the_frame_path_on_the_tokens_of_their_frame(drive: Path, one_thread: None) -> None:
    llm = _SlowLLM()
    rt = Runtime(budget=Budget(latency_ms=10_000.0), quality_per_ms=0.0, answerer=llm)
    samples = list(Synchronizer(drive, SyncConfig(image_reduce=rt.stack.cfg.image_reduce)))
    rt.step(samples[0])
    rt.ask("Is it safe to reverse?", kind="reverse", answer="yes")
    asked_at = rt.step(samples[1])
    later = [rt.step(s) for s in samples[2:6]]  # the LLM is still "talking": frames keep coming
    assert not asked_at.answers and not any(r.answers for r in later)
    assert rt.answers is not None and rt.answers.pending == 1
    llm.release.set()
    done = rt.finish(timeout_s=60)
    assert len(done) == 1
    a = done[0]
    assert a["data_stamp_ns"] == asked_at.stamp_ns and a["response"] == "yes" and a["blind_prior"] == "yes"
    assert a["modalities"] == sorted(asked_at.plan.modalities)  # the tokens of the frame it was asked at
    assert a["latency_ms"] >= a["generate_ms"] > 0 and "within_budget" in a
    rt.close()


def test_an_unmet_budget_names_the_cheapest_plan_in_the_report(drive: Path, tmp_path: Path, one_thread: None) -> None:
    run_drive(drive, RuntimeConfig(use_llm=False, budget_ms=1.0, max_frames=4), tmp_path / "rep", progress=False)
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    budget = doc["summary"]["budget"]
    assert budget["latency_ms"] == 1.0 and budget["share_within"] == 0.0 and budget["frames_unmet"] == 4
    assert budget["unmet"]["cheapest_plan"] == doc["frames"][-1]["budget_miss"]["cheapest_plan"]
    assert budget["unmet"]["cheapest_ms"] > 1.0
    assert f"the cheapest is {doc['frames'][0]['budget_miss']['cheapest_plan']}," in doc["switches"][0]["reason"]
