"""`edge run` streams its report: an exception, SIGINT or SIGTERM after N frames leaves report.json with those N
frames marked partial with the reason, beside frames.jsonl; a process killed outright leaves frames.jsonl that
`read_report` merges into the stub."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from edge.config import RuntimeConfig
from edge.runtime.report import FRAMES_FILE, RUNNING, read_report

ROOT = Path(__file__).resolve().parents[1]
CFG = dict(use_llm=False, policy="all", budget_ms=10_000.0, quality_per_ms=0.0)


@pytest.fixture(scope="module")
def drive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated 2 s drive (20 frames, ground truth on the model's grid)."""
    from edge.drives.generate import generate_drive

    return generate_drive(tmp_path_factory.mktemp("stream") / "siren", seed=7, duration=2.0, scenario="siren",
                          progress=False).path


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_exception_after_n_frames_leaves_a_partial_report(drive: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from edge.runtime.cli import run_drive

    def fault() -> None:
        raise RuntimeError("simulated fault in frame 4")

    calls = _fail_at(monkeypatch, 4, fault)
    with pytest.raises(RuntimeError, match="simulated fault"):
        run_drive(drive, RuntimeConfig(**CFG), tmp_path / "rep", progress=False)
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    s = doc["summary"]
    assert s["partial"] is True and s["frames"] == len(doc["frames"]) == 3
    assert s["partial_reason"] == "stopped by an error after 3 frames: RuntimeError: simulated fault in frame 4"
    assert [f["stamp_ns"] for f in doc["frames"]] == calls[:3]
    assert _lines(tmp_path / "rep" / FRAMES_FILE) == doc["frames"]
    assert s["latency_ms"]["p50"] is not None  # the summary covers the frames done
    assert "Partial report" in (tmp_path / "rep" / "report.html").read_text()


def _fail_at(monkeypatch: pytest.MonkeyPatch, frame: int, fault: Any) -> list[int]:
    """Patch Runtime.step to call `fault()` on its `frame`-th call (1-based); returns the stamps stepped."""
    from edge.runtime.runtime import Runtime

    step, calls = Runtime.step, []

    def patched(self: Runtime, sample: Any) -> Any:
        calls.append(sample.stamp_ns)
        if len(calls) == frame:
            fault()
        return step(self, sample)

    monkeypatch.setattr(Runtime, "step", patched)
    return calls


def test_sigterm_ends_the_run_as_sigint_does(drive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge.runtime.cli import run_drive

    before = signal.getsignal(signal.SIGTERM)
    _fail_at(monkeypatch, 3, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(KeyboardInterrupt):
        run_drive(drive, RuntimeConfig(**CFG), tmp_path / "rep", progress=False)
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is edge run's only while it runs
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert doc["summary"]["partial"] and doc["summary"]["partial_reason"] == "interrupted by SIGTERM after 2 frames"
    assert len(doc["frames"]) == 2 and _lines(tmp_path / "rep" / FRAMES_FILE) == doc["frames"]


def test_killed_outright_the_stub_and_frames_file_still_read(drive: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """No summary written at all (SIGKILL, out of memory: here write() never runs): report.json is the stub
    written at start, frames.jsonl has the frames done; read_report merges them, ignoring a torn last line."""
    from edge.runtime.cli import run_drive
    from edge.runtime.report import ReportBuilder

    def boom() -> None:
        raise RuntimeError("never reported")

    calls = _fail_at(monkeypatch, 3, boom)
    monkeypatch.setattr(ReportBuilder, "write", lambda self, *a, **k: None)
    with pytest.raises(RuntimeError):
        run_drive(drive, RuntimeConfig(**CFG), tmp_path / "rep", progress=False)
    with (tmp_path / "rep" / FRAMES_FILE).open("a") as f:
        f.write('{"t": 0.2, "stamp')  # killed in the middle of the third line
    stub = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert stub["summary"]["partial"] and stub["summary"]["partial_reason"] == RUNNING and stub["frames"] == []
    doc = read_report(tmp_path / "rep")
    assert doc["summary"]["frames"] == len(doc["frames"]) == 2
    assert [f["stamp_ns"] for f in doc["frames"]] == calls[:2]


SLOW_RUN = textwrap.dedent("""
    import signal, sys, time
    # A shell's background job starts with SIGINT ignored, and children inherit that: Python then never raises
    # KeyboardInterrupt. Take SIGINT as a terminal would deliver it, whatever ran this suite.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from edge.runtime.runtime import Runtime
    step = Runtime.step
    def slow(self, sample):  # 0.3 s a frame: the signal surely comes mid-drive
        time.sleep(0.3)
        return step(self, sample)
    Runtime.step = slow
    from edge.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _slow_run_past_three_frames(drive: Path, tmp_path: Path, config: str, out: Path) -> subprocess.Popen:
    """`edge run` (SLOW_RUN, no LLM, `config` added) in its own process, returned once frames.jsonl has 3 frames."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text("use_llm: false\n" + config)
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUN, "run", str(drive), "--config", str(cfg),
                             "--report", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / FRAMES_FILE).exists() and len((out / FRAMES_FILE).read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.fail(f"edge run ended before 3 frames:\n{proc.communicate()[1][-2000:]}")
    return proc


def test_sigint_mid_run_leaves_a_partial_report(drive: Path, tmp_path: Path) -> None:
    """`edge run` in its own process, interrupted with SIGINT after >= 3 frames: exit 130, no traceback."""
    out = tmp_path / "rep"
    proc = _slow_run_past_three_frames(drive, tmp_path, "policy: all\nbudget_ms: 10000.0\nquality_per_ms: 0.0\n", out)
    try:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    doc = json.loads((out / "report.json").read_text())
    s = doc["summary"]
    n = len(doc["frames"])
    assert s["partial"] is True and s["frames"] == n and 3 <= n < 20
    assert s["partial_reason"] == f"interrupted by SIGINT after {n} frames"
    assert _lines(out / FRAMES_FILE) == doc["frames"]
    assert f"partial report in {out}" in err


def test_sigkill_mid_run_then_edge_report_rebuilds_summary_and_html(drive: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`edge run` killed outright (SIGKILL: no handler, no summary) after >= 3 frames; `edge report DIR` writes
    report.json's summary and report.html from frames.jsonl, leaves frames.jsonl as recorded, and refuses to run
    twice or on a directory without a report."""
    from edge.cli import main

    out = tmp_path / "rep"
    proc = _slow_run_past_three_frames(drive, tmp_path, "policy: adaptive\nbudget_ms: 10000.0\n", out)
    try:
        proc.kill()
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    recorded = (out / FRAMES_FILE).read_text()
    assert "edge report DIR" in (out / "report.html").read_text()  # the stub page says how to recover
    assert main(["report", str(out)]) == 0
    lines = [json.loads(x) for x in recorded.splitlines() if x.endswith("}")]
    doc = json.loads((out / "report.json").read_text())
    s = doc["summary"]
    assert s["frames"] == len(doc["frames"]) == len(lines) >= 3 and doc["frames"] == lines[:len(doc["frames"])]
    assert s["partial"] is True and s["partial_reason"].startswith("recovered by `edge report`")
    assert s["latency_ms"]["p50"] == pytest.approx(
        float(__import__("numpy").percentile([f["timings_ms"]["total"] for f in lines], 50)))
    assert doc["switches"] and doc["switches"][0] == lines[0]["plan_change"]  # the first plan, rebuilt
    page = (out / "report.html").read_text()
    assert "recovered by" in page and "edge report DIR" not in page
    assert (out / FRAMES_FILE).read_text() == recorded
    assert f"{len(lines)} frames recovered" in capsys.readouterr().err
    assert main(["report", str(out)]) == 2  # summary written already: nothing to recover
    assert "nothing to recover" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "no such report" in capsys.readouterr().err
