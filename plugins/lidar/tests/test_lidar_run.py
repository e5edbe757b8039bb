"""`edge run` on a LiDAR drive, as a user runs it: the config names the package's model directory and rig, the
runtime loads all five encoders, the cost model measures the LiDAR stage at start-up, and the scheduler attaches
it. Issue 11's target for the runtime (docs/plugins.md); no LLM (no aligner set reads the LiDAR's tokens)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edge.config import RuntimeConfig
from edge.drives.generate import generate_drive
from edge.names import Policy
from edge.runtime.cli import run_drive

from test_lidar_simulator import RIG_FILE

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "perception"


@pytest.fixture(scope="module")
def drive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One and a half seconds at night: the scheduler's quality table has the LiDAR far ahead there."""
    out = tmp_path_factory.mktemp("run") / "bag"
    generate_drive(out, seed=31, duration=1.5, scenario="street-night", rig_path=RIG_FILE, progress=False)
    return out


def run(drive: Path, report: Path, policy: Policy, max_frames: int) -> list[dict[str, Any]]:
    """Frames of `edge run` with the package's model directory and rig (the config keys a user sets)."""
    cfg = RuntimeConfig(perception_dir=str(MODEL_DIR), rig=str(RIG_FILE), use_llm=False, policy=policy,
                        max_frames=max_frames)
    run_drive(drive, cfg, report, progress=False)
    return json.loads((report / "report.json").read_text())["frames"]


def lidar_frames(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if "lidar" in f["plan"]["modalities"]]


def test_the_adaptive_runtime_attaches_the_lidar(drive: Path, tmp_path: Path):
    frames = run(drive, tmp_path / "report", Policy.ADAPTIVE, max_frames=12)
    ran = lidar_frames(frames)
    assert len(ran) >= len(frames) - 1  # chosen from the first plan (or the second) on
    assert ran[0]["predicted_ms"] is not None  # costed: the calibration measured the LiDAR stage before planning
    for f in ran:
        assert "lidar" in f["bev_modalities"] and f["timings_ms"]["lidar"] > 0
        assert sum(f["occupancy_near5m"].values()) > 0 and f["obstacle_iou_near5m"] is not None
    assert sum(f["obstacle_iou_near5m"] for f in ran) / len(ran) > 0.7


def test_the_static_policy_all_runs_the_lidar_with_the_builtins(drive: Path, tmp_path: Path):
    """`all` runs every healthy modality (audio joins once its window has filled, after these frames)."""
    frames = run(drive, tmp_path / "report", Policy.ALL, max_frames=4)
    assert len(lidar_frames(frames)) == len(frames) == 4
    assert all({"fisheye", "ultrasonic", "camera", "lidar"} <= set(f["plan"]["modalities"]) for f in frames)
    assert all(set(f["bev_modalities"]) == {"fisheye", "ultrasonic", "lidar"} for f in frames)
    assert all("lidar" in f["timings_ms"] for f in frames)


def test_edge_node_subscribes_to_the_lidar_and_loads_its_encoder():
    """`edge node` with the same keys (its parameters): the LiDAR's topic among its subscriptions and the five
    encoders in its runtime; on the core's default rig neither (no ROS here: the node's own builders)."""
    from edge.sensors.rig import load_rig
    from ros_nodes import node_io as io
    from ros_nodes.runtime_node import build_runtime

    def subscriptions(rig: Any) -> list[str]:
        return [s.stream for s in io.inputs(rig, {b: ("compressed",) for b in io.camera_bases(rig)})]

    cfg = RuntimeConfig(perception_dir=str(MODEL_DIR), rig=str(RIG_FILE), use_llm=False)
    runtime, rig = build_runtime(cfg, with_llm=False)
    assert "/lidar/roof/points" in subscriptions(rig)
    assert tuple(runtime.stack.encoders) == ("fisheye", "ultrasonic", "audio", "camera", "lidar")
    assert "lidar" in runtime.scheduler.quality.bev
    assert "/lidar/roof/points" not in subscriptions(load_rig())


def test_without_the_lidar_encoder_no_plan_lists_it(drive: Path, tmp_path: Path):
    """The core's model directory and default rig on the same LiDAR drive: the clouds arrive (the stream is
    healthy) but the stack has no LiDAR encoder, so even `all` leaves it out of the plan (it listed it, and the
    report counted a LiDAR duty of 100 % for an encoder that never ran); the summary's duty lists the modalities the
    stack built, so not the LiDAR (it printed "lidar 0%")."""
    cfg = RuntimeConfig(use_llm=False, policy=Policy.ALL, max_frames=3)
    run_drive(drive, cfg, tmp_path / "report", progress=False)
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert not lidar_frames(report["frames"])
    assert list(report["summary"]["modality_duty"]) == ["fisheye", "ultrasonic", "audio", "camera"]
    assert all(set(f["bev_modalities"]) == {"fisheye", "ultrasonic"} for f in report["frames"])
