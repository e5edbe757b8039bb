"""Adding a modality touches no core file (issue 11): `edge run`'s report and summary list the modalities the run's
perception stack built, not every installed plugin. A fake "thermal" plugin, registered only in
these tests, stands for a modality the core has never heard of."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edge.drives import topics as T
from edge.encoders.config import PerceptionConfig
from edge.modalities import ModalityPlugin, SyncKind, TokenSpec
from edge.modalities import registry as registry_module
from edge.modalities.builtin import BUILTINS
from edge.modalities.registry import Registry
# imported here, before any test puts its registry in place: modules that read the registry at import
# (edge.runtime.scheduler.MODALITIES) must hold the installed one
from edge.runtime import report as R
from edge.runtime.cli import print_summary
from edge.runtime.context import Context
from edge.runtime.runtime import FrameResult
from edge.runtime.scheduler import Decision, Plan

S = 1_700_000_000_000_000_000
MS = 1_000_000
HEAD = "/thermal/"
BUILTIN_NAMES = tuple(p.name for p in BUILTINS)


def _thermal_topic(sensor: str) -> str:
    return f"{HEAD}{sensor}/image_raw"


def _recorded(topics: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(t[len(HEAD):-len("/image_raw")] for t in topics if t.startswith(HEAD) and t.endswith("/image_raw"))


THERMAL = ModalityPlugin(
    name="thermal", sensors=lambda rig: (), default_sensors=(), recorded_sensors=_recorded,
    topics=lambda sensors: tuple(T.TopicSpec(_thermal_topic(s), (T.IMAGE,), True) for s in sensors),
    sync=SyncKind.NEAREST, bev=False, tokens=TokenSpec(4, 128, "thermal-v1"), weights="thermal.safetensors",
    health_streams=("thermal",), encoder="edge_thermal:build", decoder="edge.drives.decoders:IMAGE")


@pytest.fixture()
def with_thermal(monkeypatch: pytest.MonkeyPatch) -> Registry:
    """The built-ins and the fake plugin as the installed registry (not the real one: no LiDAR here)."""
    reg = Registry((*BUILTINS, THERMAL), tuple(f"{p.name} = test" for p in (*BUILTINS, THERMAL)))
    monkeypatch.setattr(registry_module, "registry", lambda: reg)
    monkeypatch.setattr(R, "registry", lambda: reg)  # the report's own binding (its default plugins)
    return reg


# ---------------------------------------------------------------- report and summary


def _frame_result(t: int, modalities: tuple[str, ...], timings: dict[str, float]) -> Any:
    plan = Plan(modalities, 0, 1.0, "eager", "", 1)
    return FrameResult(S + t * 100 * MS, {}, plan, Decision(plan, t == 0, "first plan", 0.0),
                       Context(S, {}, {}, -120.0, 0.0, "day"), {"total": sum(timings.values()), **timings}, 100.0,
                       None, 0.1, [], {m: None for m in modalities})


def test_the_report_lists_the_modalities_the_stack_built(with_thermal: Registry, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A plugin installed but not built (a LiDAR on the default rig) is not in the duty, stages or timeline."""
    assert "thermal" in with_thermal.names
    built = list(BUILTINS)  # what edge run passes: runtime.stack.plugins.values()
    rep = R.ReportBuilder(PerceptionConfig(), (-1.0, 3.0, -1.0, 1.0), {"bag": "b"}, built)
    out = rep.start(tmp_path / "rep")
    stub = json.loads((out / "report.json").read_text())
    assert list(stub["summary"]["modality_duty"]) == list(BUILTIN_NAMES)
    rep.add(_frame_result(0, ("fisheye", "audio"), {"fisheye": 3.0, "fusion": 1.0, "audio": 2.0}))
    rep.add(_frame_result(1, ("ultrasonic",), {"ultrasonic": 1.0, "fusion": 1.0}))
    s = rep.summary()
    assert s["modality_duty"] == {"fisheye": 0.5, "ultrasonic": 0.5, "audio": 0.5, "camera": 0.0}
    assert list(s["stages_ms"]) == ["fisheye", "ultrasonic", "fusion", "audio"]
    assert rep.stages == ("context+plan", "fisheye", "ultrasonic", "fusion", "audio", "camera", "attach")
    assert ">thermal<" not in rep._timeline_svg() and ">camera<" in rep._timeline_svg()
    print_summary({**s, "report": str(out)})
    line = next(x for x in capsys.readouterr().out.splitlines() if "modality duty" in x)
    assert line.endswith("modality duty: fisheye 50%, ultrasonic 50%, audio 50%, camera 0%")

    # a run killed outright: `edge report` rebuilds the summary with the run's modalities (the stub's duty)
    recovered, n = R.recover(out)
    doc = json.loads((recovered / "report.json").read_text())
    assert n == 2 and doc["summary"]["modality_duty"] == s["modality_duty"]
    assert list(doc["summary"]["stages_ms"]) == list(s["stages_ms"])

    # without the plugins given (tests, older callers): every installed plugin, as before
    assert "thermal" in R.ReportBuilder(None, None, {}).summary()["modality_duty"]


def test_a_built_plugin_is_in_the_report(with_thermal: Registry) -> None:
    rep = R.ReportBuilder(PerceptionConfig(), (-1.0, 3.0, -1.0, 1.0), {}, [*BUILTINS, THERMAL])
    rep.add(_frame_result(0, ("thermal",), {"thermal": 2.0}))
    s = rep.summary()
    assert s["modality_duty"]["thermal"] == 1.0 and list(s["modality_duty"])[-1] == "thermal"
    assert s["stages_ms"]["thermal"]["p50"] == 2.0 and ">thermal<" in rep._timeline_svg()
