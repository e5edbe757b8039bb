"""Stages from declarations (issue 11): the fusion head is a stage of every plan with two BEV modalities or more,
a plugin declaring several keep ratios is measured and costed at each ("<name>@<keep>"), and the core modules that
derive them name no modality. The fake plugins are declarations handed to the stage helpers as their registry.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.encoders.stack import PerceptionOutput
from edge.errors import PluginError
from edge.frames import Frame
from edge.modalities import Registry
from edge.modalities.registry import registry
from edge.runtime import stages
from edge.runtime.cost_model import CostModel
from edge.runtime.runtime import Runtime
from edge.runtime import scheduler as scheduler_module

ROOT = Path(__file__).resolve().parents[1]
BUILTIN_NAMES = ("fisheye", "ultrasonic", "audio", "camera")


@pytest.fixture()
def fakes(monkeypatch: pytest.MonkeyPatch) -> Registry:
    """The built-ins plus lidar (a BEV modality) and thermal (two keep ratios), as the stage helpers' registry."""
    base = registry()
    lidar = dataclasses.replace(base["ultrasonic"], name="lidar", health_streams=("lidar",))
    thermal = dataclasses.replace(base["audio"], name="thermal", health_streams=("thermal",), keep_ratios=(1.0, 0.6))
    reg = Registry((*base.plugins, lidar, thermal), (*base.sources, "lidar = fake", "thermal = fake"))
    monkeypatch.setattr(stages, "registry", lambda: reg)
    return reg


def test_builtin_plans_keep_their_component_names() -> None:
    assert CostModel.components(BUILTIN_NAMES, 0.25) == ["fisheye", "ultrasonic", "audio", "camera@0.25", "fusion"]
    assert CostModel.components(("fisheye", "camera"), 0.5) == ["fisheye", "camera@0.5"]
    assert all(p.keep_ratios == (1.0,) for p in registry() if p.name != "camera")


def test_a_bev_plugin_makes_fusion_a_component_of_its_plans(fakes: Registry) -> None:
    assert CostModel.components(("fisheye", "lidar"), 1.0) == ["fisheye", "lidar", "fusion"]
    assert CostModel.components(("lidar", "audio"), 1.0) == ["lidar", "audio"]  # alone: decoded in its own stage
    assert CostModel.components(("thermal", "camera"), 0.6) == ["thermal@0.6", "camera@0.6"]
    assert stages.every_stage(("thermal", "ultrasonic", "lidar")) == ["thermal@1", "thermal@0.6", "ultrasonic",
                                                                      "lidar", "fusion"]
    assert stages.run_of("fusion", ("fisheye", "audio", "lidar")) == (("fisheye", "lidar"), {})
    assert stages.run_of("thermal@0.6", ("thermal",)) == (("thermal",), {"thermal": 0.6})


def test_the_scheduler_plans_each_keep_ratio_a_plugin_declares(fakes: Registry) -> None:
    """Candidates carry the keep ratios of the modality that declares several (thermal's 1 and 0.6; the camera's
    three); with two of them, the ratios both declare; none: 1."""
    assert stages.plan_keeps(("fisheye", "camera")) == (1.0, 0.5, 0.25)
    assert stages.plan_keeps(("fisheye", "audio")) == (1.0,)
    assert stages.plan_keeps(("thermal", "camera")) == (1.0,)
    figures = {"audio_event": 0.5, "audio_direction": 0.5, "camera_lighting": 0.5}
    s = scheduler_module.Scheduler(scheduler_module.QualityTable({}, figures), CostModel(),
                                   scheduler_module.Budget(100.0), available=("fisheye", "thermal", "camera"),
                                   n_blocks=8, plugins=fakes)
    keeps = {(p.modalities, p.keep) for p in s.candidates(("fisheye", "thermal", "camera"))}
    assert keeps == {((), 1.0), (("fisheye",), 1.0), (("thermal",), 1.0), (("thermal",), 0.6),
                     (("camera",), 1.0), (("camera",), 0.5), (("camera",), 0.25), (("fisheye", "thermal"), 1.0),
                     (("fisheye", "thermal"), 0.6), (("fisheye", "camera"), 1.0), (("fisheye", "camera"), 0.5),
                     (("fisheye", "camera"), 0.25), (("thermal", "camera"), 1.0),
                     (("fisheye", "thermal", "camera"), 1.0)}


class _Stack:
    """PerceptionStack.run as the runtime's measuring passes see it: each stage timed by its name."""

    def __init__(self, bev: tuple[str, ...]) -> None:
        self.bev, self.runs = bev, []

    def run(self, sample: Frame, use: tuple[str, ...], settings: dict[str, float],
            timer: Callable[[str, Callable[[], Any]], Any], isolate: bool) -> None:
        self.runs.append((use, settings))
        for m in use:
            timer(f"{m}@{settings[m]:g}" if m in settings else m, lambda: 1)
        if sum(m in self.bev for m in use) > 1:
            timer("fusion", lambda: 1)


def test_a_plugin_with_keep_ratios_is_calibrated_per_ratio(fakes: Registry) -> None:
    rt = Runtime.__new__(Runtime)  # the measuring passes only: no weights loaded
    rt.stack, rt._stopwatch = _Stack(fakes.bev_names), lambda name, fn: (fn(), 2.0, 1.5)
    runs: dict[tuple[str, int], list[tuple[float, float]]] = {}
    rt._time_stages(Frame(0, {}, None, None, {}, []), ("fisheye", "lidar", "thermal", "camera"), 0, runs)
    assert rt.stack.runs == [(("fisheye", "lidar", "thermal", "camera"), {"thermal": 1.0, "camera": 1.0}),
                             (("thermal",), {"thermal": 0.6}), (("camera",), {"camera": 0.5}),
                             (("camera",), {"camera": 0.25})]
    assert sorted(name for name, _ in runs) == sorted(["fisheye", "lidar", "fusion", "thermal@1", "thermal@0.6",
                                                       "camera@1", "camera@0.5", "camera@0.25"])


def test_the_witness_of_the_health_models_is_the_declared_one(fakes: Registry) -> None:
    """The BEV handed to the health models as the previous frame's witness is that of a plugin declaring `witness`:
    lidar's when it declares it and fisheye does not, none when no plugin that ran declares it."""
    from edge.encoders.config import BEV_CLASSES, OBSTACLE_CLASSES, PerceptionConfig
    from edge.runtime.isolation import Detacher
    from edge.runtime.scheduler import Plan

    assert [p.name for p in registry() if p.witness] == ["fisheye"]
    cfg = PerceptionConfig()
    probs = np.zeros((len(BEV_CLASSES), cfg.bev_grid.nx, cfg.bev_grid.ny), np.float32)
    probs[OBSTACLE_CLASSES[0], 3, 4] = 1.0
    plugins = {p.name: p for p in fakes}
    plugins["fisheye"] = dataclasses.replace(plugins["fisheye"], witness=False)
    plugins["lidar"] = dataclasses.replace(plugins["lidar"], witness=True)

    class Stack:
        def __init__(self) -> None:
            self.cfg, self.plugins = cfg, plugins

        def run(self, sample: Frame, use: tuple[str, ...], settings: dict[str, float], timer: Any,
                isolate: bool) -> PerceptionOutput:
            return PerceptionOutput(sample.stamp_ns, None, None, list(use), alone={m: probs for m in use if plugins[m].bev})

    rt = Runtime.__new__(Runtime)  # the perception step only: no weights loaded
    rt.stack, rt.detacher, rt._use_threads = Stack(), Detacher(), lambda threads: None
    rt._perceive(Frame(7, {}, None, None, {}, []), Plan(("lidar", "audio"), 0, 1.0, "eager", "", 1), {})
    assert rt._obstacles is not None and rt._obstacles.stamp_ns == 7 and rt._obstacles.obstacle.sum() == 1
    rt._perceive(Frame(8, {}, None, None, {}, []), Plan(("fisheye", "audio"), 0, 1.0, "eager", "", 1), {})
    assert rt._obstacles is None
    with pytest.raises(PluginError, match="witness .* True only for a BEV modality"):
        dataclasses.replace(registry()["audio"], witness=True)


def test_keep_ratios_are_checked() -> None:
    for bad in ((), (1.5,), (1.0, 1.0), (1,)):
        with pytest.raises(PluginError, match="keep_ratios .* must be a non-empty tuple of distinct floats"):
            dataclasses.replace(registry()["audio"], keep_ratios=bad)


@pytest.mark.parametrize("rel", ["edge/runtime/context.py", "edge/runtime/stages.py", "edge/runtime/cost_model.py",
                                 "edge/runtime/isolation.py", "edge/encoders/stack.py", "edge/encoders/fusion.py",
                                 "edge/runtime/scheduler.py", "edge/runtime/plan_value.py",
                                 *(f"edge/perception/{m}.py" for m in ("cache", "batches", "train", "evaluate", "labels",
                                                                        "data", "metrics", "cli"))])
def test_the_core_modules_moved_to_declarations_name_no_modality(rel: str) -> None:
    """No built-in's name as a string, attribute or variable in their code (docstrings and comments may give
    examples)."""
    tree = ast.parse((ROOT / rel).read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        words: list[str] = []
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words = re.findall(r"[a-z]+", node.value)
        elif isinstance(node, ast.Attribute):
            words = [node.attr]
        elif isinstance(node, (ast.Name, ast.arg)):
            words = [node.id if isinstance(node, ast.Name) else node.arg]
        found += [(w, node.lineno) for w in words if w in BUILTIN_NAMES]
    assert not found, f"{rel} names modalities: {found}"
