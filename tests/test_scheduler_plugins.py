"""The scheduler plans from declarations (issue 11): the static policies a plugin joins (`policies`) and what its
own output adds to a plan's score (`plan_value`). The built-ins' scores are the terms the scheduler wrote out for
audio and the camera before, to the last bit; a fake plugin is planned like any other modality."""

from __future__ import annotations

import dataclasses
import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge.errors import EdgeError, PluginError
from edge.modalities import ModalityPlugin
from edge.modalities.registry import registry
from edge.runtime.context import CameraHealth, Context, StreamHealth
from edge.runtime.cost_model import CostModel
from edge.runtime.scheduler import AlignerSet, Budget, Plan, QualityTable, Scheduler

EVAL = Path(__file__).resolve().parents[1] / "models" / "perception" / "eval.json"
BUILTINS = ("fisheye", "ultrasonic", "audio", "camera")
SETS = (AlignerSet("day", ("fisheye", "camera"), {"day": 0.773, "night": 0.128}, ("day",)),
        AlignerSet("cam5", ("camera", "audio"), {"day": 0.75, "dusk": 0.4}, ("day",), keep=0.5))
WARMTH = '''
class Warmth:
    """A thermal camera: worth 0.3 at night, nothing by day."""

    def __init__(self, setup):
        self.name = setup.plugin.name

    def observe(self, ctx):
        pass

    def value(self, keep, scene):
        return 0.3 if scene.lighting == "night" else 0.0

    def cue(self, ctx):
        return "warm bodies in the dark"
'''


def ctx(lighting: str = "day", audio_db: float = -40.0, glare: bool = False, silent: tuple[str, ...] = (),
        extra: tuple[str, ...] = ()) -> Context:
    ok, dead = StreamHealth(True, 0.0, 0.0), StreamHealth(False, 2.0, 1.0)
    streams = {m: dead if m in silent else ok for m in BUILTINS + extra}
    return Context(0, {"camera/front": CameraHealth(True, 0.5, 2.0, 0.05 if glare else 0.0)}, streams, audio_db, 3.0,
                   lighting)


def costs(**more: float) -> CostModel:
    c = CostModel(backend="eager", clock=lambda: 0.0)
    for name, ms in {"fisheye": 30.0, "ultrasonic": 5.0, "fusion": 10.0, "audio": 4.0, "camera@1": 40.0,
                     "camera@0.5": 25.0, "camera@0.25": 18.0, **more}.items():
        c.observe(name, ms)
    return c


def former_score(s: Scheduler, plan: Plan, c: Context, eventful: bool) -> float:
    """The scheduler's score as it was written before the plugins declared their terms (issue 11), verbatim."""
    q = json.loads(EVAL.read_text())
    audio_event, audio_direction = q["audio_event"]["accuracy"], q["audio_direction"]["accuracy"]
    camera_lighting = q["camera_lighting"]["accuracy"]
    lighting = c.lighting if c.lighting in ("day", "dusk", "night") else "night"
    value = s.quality.bev_quality(plan.modalities, lighting)
    if "audio" in plan.modalities:
        value += (0.6 if eventful else 0.05) * audio_event * audio_direction
    if "camera" in plan.modalities and not s.aligner_sets:
        sight = {"day": 1.0, "dusk": 0.5, "night": 0.05}[lighting]
        if "camera/front" in c.glare_cameras:
            sight *= 0.2
        value += 0.02 * sight * camera_lighting * (0.9 + 0.1 * plan.keep)
    if plan.aligners in s.aligner_sets:
        value += s.answer_weight * s.aligner_sets[plan.aligners].expected(lighting)
    value -= s.quality_per_ms * (s.costs.plan_latency(plan, 50.0) or 0.0)
    return value - s.edge_penalty(plan)


@pytest.mark.parametrize("sets", [(), SETS], ids=["no LLM", "aligner sets"])
def test_the_builtins_score_as_the_terms_the_scheduler_wrote_out(sets: tuple[AlignerSet, ...]) -> None:
    s = Scheduler(QualityTable.from_perception_eval(EVAL), costs(), Budget(100.0), BUILTINS, 8, aligner_sets=sets)
    contexts = [ctx("day"), ctx("day", glare=True), ctx("dusk"), ctx("night"), ctx("fog"),
                ctx("night", audio_db=-45.0), ctx("night", audio_db=-20.0), ctx("day", glare=True, audio_db=-5.0)]
    eventful = []
    for c in contexts:
        s.step(c)
        eventful.append(s.values["audio"].eventful)
        for plan in s.candidates(BUILTINS, c.lighting):
            assert s.score(plan, c) == former_score(s, plan, c, eventful[-1]), plan.describe()
    assert eventful == [False, False, False, False, False, False, True, True]


@pytest.fixture()
def thermal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModalityPlugin]:
    """A fifth, non-BEV plugin in the camera setup, worth something at night by its own plan-value model."""
    (tmp_path / "fake_thermal_value.py").write_text(textwrap.dedent(WARMTH))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield dataclasses.replace(registry()["audio"], name="thermal", health_streams=("thermal",), record=(),
                              truth=None, scores=None, policies=("camera",), plan_value="fake_thermal_value:Warmth")
    sys.modules.pop("fake_thermal_value", None)


def test_a_plugin_is_planned_through_its_declarations(thermal: ModalityPlugin) -> None:
    plugins = (*registry(), thermal)
    everything = BUILTINS + ("thermal",)
    quality = QualityTable.from_perception_eval(EVAL)
    s = Scheduler(quality, costs(thermal=3.0), Budget(100.0), everything, 8, dwell=1, plugins=plugins)
    assert "thermal" not in s.step(ctx("day", extra=("thermal",))).plan.modalities  # worth nothing by day
    night = s.step(ctx("night", extra=("thermal",)))
    assert night.changed and "thermal" in night.plan.modalities and "warm bodies in the dark" in night.reason
    static = Scheduler(quality, costs(thermal=3.0), Budget(100.0), everything, 8, policy="camera", plugins=plugins)
    assert static.step(ctx("night", extra=("thermal",))).plan.modalities == ("fisheye", "camera", "thermal")
    # the built-ins' plans score as they do without it
    alone = Scheduler(quality, costs(thermal=3.0), Budget(100.0), BUILTINS, 8)
    c = ctx("night", extra=("thermal",))
    alone.step(c)
    assert all(s.score(p, c) == alone.score(p, c) for p in alone.candidates(BUILTINS, "night"))


def test_plan_value_failures_stop_the_scheduler_and_declarations_are_checked(thermal: ModalityPlugin) -> None:
    quality = QualityTable.from_perception_eval(EVAL)
    missing = dataclasses.replace(thermal, plan_value="fake_thermal_value:Nothing")
    with pytest.raises(PluginError, match="modality 'thermal'.*failed to import"):
        Scheduler(quality, costs(), Budget(100.0), BUILTINS, 8, plugins=(*registry(), missing))
    with pytest.raises(EdgeError, match="not a perception evaluation with 'camera_lighting'"):
        Scheduler(QualityTable({}, {"audio_event": 0.5, "audio_direction": 0.5}), costs(), Budget(100.0), BUILTINS, 8)
    with pytest.raises(PluginError, match="policies .* must be a tuple of static policies"):
        dataclasses.replace(thermal, policies=("adaptive",))
    with pytest.raises(PluginError, match="plan_value .* must be 'module:callable'"):
        dataclasses.replace(thermal, plan_value="fake_thermal_value")


def test_the_plan_json_keeps_its_camera_keep() -> None:
    """`camera_keep` in the plan JSON (/mpnp/plan) is the plan's keep ratio, as before (a reader's contract)."""
    from ros_nodes.node_io import plan_json

    plan = Plan(("fisheye", "camera"), 4, 0.5)
    assert plan.describe() == "fisheye+camera, N=4, camera keep 0.5, eager"
    out = json.loads(plan_json(SimpleNamespace(plan=plan, stamp_ns=1, decision=SimpleNamespace(reason="first plan"))))
    assert out["camera_keep"] == 0.5 and out["modalities"] == ["fisheye", "camera"]
