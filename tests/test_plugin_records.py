"""Frame records from declarations (issue 11): a plugin's declared extras (`record`, under `record_key`) and ground
truth (`truth`) reach the frame record, its `transient` extras never leave the runtime, and its scorer (`scores`)
scores the records in `edge eval scheduler`; the built-ins' declarations give today's record and scores."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from edge.encoders.config import PerceptionConfig
from edge.encoders.stack import PerceptionOutput
from edge.errors import PluginError
from edge.frames import Frame, GroundTruth
from edge.modalities.registry import registry
from edge.runtime.context import Context
from edge.runtime.report import ReportBuilder
from edge.runtime.runtime import FrameResult, Runtime
from edge.runtime.scheduler import Decision, Plan


def _thermal() -> Any:
    return dataclasses.replace(registry()["audio"], name="thermal", health_streams=("thermal",),
                               record=("hot", "hot_prob"), record_key="heat", transient=("heat_map",),
                               truth=lambda gt: {"hot_spots": len(gt.objects or [])}, scores=None)


def test_a_plugins_declared_extras_and_truth_reach_the_frame_record() -> None:
    plugins = {p.name: p for p in registry()}
    plugins["thermal"] = _thermal()
    extras = {"hot": "engine", "hot_prob": 0.9, "other": 1, "heat_map": object()}

    class Stack:
        def __init__(self) -> None:
            self.cfg, self.plugins = PerceptionConfig(), plugins

        def run(self, sample: Frame, use: tuple[str, ...], settings: dict[str, float], timer: Any,
                isolate: bool) -> PerceptionOutput:
            return PerceptionOutput(sample.stamp_ns, None, None, [], {"thermal": dict(extras)})

    from edge.runtime.isolation import Detacher

    rt = Runtime.__new__(Runtime)  # the perception step only: no weights loaded
    rt.stack, rt.detacher, rt._use_threads = Stack(), Detacher(), lambda threads: None
    plan = Plan(("thermal",), 0, 1.0, "eager", "", 1)
    out = rt._perceive(Frame(7, {}, None, None, {}, []), plan, {})
    assert out["extras"]["thermal"] == {"hot": "engine", "hot_prob": 0.9, "other": 1}  # heat_map is transient
    assert out["extras"]["audio"] is None and set(out["extras"]) == set(plugins)

    r = FrameResult(7, {}, plan, Decision(plan, False, "", 0.0), Context(7, {}, {}, -120.0, 0.0, "day"),
                    {"total": 1.0}, 100.0, None, 0.1, [], out["extras"])
    cfg = PerceptionConfig()
    rep = ReportBuilder(cfg, (-1.0, 3.0, -1.0, 1.0), {}, plugins.values())
    frame = rep.add(r, GroundTruth(objects=[{}, {}], conditions={"lighting": "night"}))
    assert frame["heat"] == {"hot": "engine", "hot_prob": 0.9} and "thermal" not in frame and "audio" not in frame
    assert frame["gt"] == {"lighting": "night", "audio_events": [], "hot_spots": 2}


def test_the_builtins_declare_todays_record() -> None:
    reg = registry()
    assert reg["audio"].record == ("event", "event_prob", "direction", "direction_prob")
    assert reg["audio"].record_name == "audio" and reg["camera"].transient == ("front_map",)
    assert [p.name for p in reg if p.record or p.truth or p.scores] == ["audio"]
    assert reg["audio"].truth(GroundTruth(audio_events=[{"class": "siren"}])) == {"audio_events": ["siren"]}


def test_record_declarations_are_checked() -> None:
    audio = registry()["audio"]
    for bad in ({"record": ["event"]}, {"record": ("event", "event")}, {"transient": ("",)},
                {"record": ("event",), "transient": ("event",)}, {"record_key": "Audio"}, {"truth": "x"},
                {"scores": "not a factory"}):
        with pytest.raises(PluginError):
            dataclasses.replace(audio, **bad)


def test_the_evaluation_scores_what_the_plugins_declare() -> None:
    from edge.modalities import Scorer
    from edge.runtime.evaluate import markdown, scorers

    (audio,) = scorers()
    frames = [{"t": 0.0, "gt": {"lighting": "day", "audio_events": ["siren"]}, "audio": {"event": "siren"}},
              {"t": 0.1, "gt": {"lighting": "day", "audio_events": ["siren"]}}]
    assert audio.score(frames) == {"audio_event_accuracy": 1.0, "audio_event_frames_missed": 0.5}
    import sys
    import types

    module = types.ModuleType("fake_thermal_scores")
    module.SCORER = Scorer(lambda fr: {"hot_acc": 0.25}, (("hot_acc", "hot acc.", 2),))  # type: ignore[attr-defined]
    sys.modules["fake_thermal_scores"] = module
    try:
        plugins = [*registry(), dataclasses.replace(_thermal(), scores="fake_thermal_scores:SCORER")]
        assert [s.score([]) for s in scorers(plugins)][1] == {"hot_acc": 0.25}
        row = {"drive": "d", "policy": "adaptive", "obstacle_iou_near5m": 0.7, "audio_event_accuracy": None,
               "audio_event_frames_missed": 0.0, "hot_acc": 0.25, "exact_match": None, "mean_compute_ms": 12.0,
               "switches": 3, "reaction_s_mean": None}
        header, _, line = markdown([row], plugins).splitlines()[:3]
        assert "| audio event acc. | event frames without audio | hot acc. |" in header
        assert "| n/a | 0.00 | 0.25 |" in line
    finally:
        del sys.modules["fake_thermal_scores"]
