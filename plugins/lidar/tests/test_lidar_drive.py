"""End to end through the core's hooks: `edge drive generate` on the package's rig writes the LiDAR's scans beside
the built-ins' streams, the synchroniser reads them back into the frames, and the encoder takes those frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.drives.bag import open_bag
from edge.drives.generate import generate_drive
from edge.drives.sync import Synchronizer
from edge.encoders.config import PerceptionConfig
from edge.sensors.rig import load_rig

from edge_lidar.encoder import build as build_encoder

from test_lidar_simulator import RIG_FILE


@pytest.fixture(scope="module")
def drive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("drive") / "bag"
    generate_drive(out, seed=3, duration=1.0, scenario="parking-night", rig_path=RIG_FILE, progress=False)
    return out


def test_generated_drive_holds_the_scans(drive: Path):
    with open_bag(drive) as bag:
        info = bag.topics["/lidar/roof/points"]
    assert info.msgtype == "sensor_msgs/msg/PointCloud2" and info.count == 10  # 10 Hz over one second
    frames = list(Synchronizer(drive))
    clouds = [f.sensor("lidar", "roof") for f in frames]
    assert len(frames) >= 8 and sum(c is not None for c in clouds) >= len(frames) - 1
    cloud = next(c for c in clouds if c is not None)
    assert cloud.dtype == np.float32 and cloud.shape[1] == 4 and len(cloud) > 10000  # at night too
    enc = build_encoder(PerceptionConfig(), load_rig(RIG_FILE)).eval()
    out = enc.encode(frames[len(frames) // 2])
    assert out is not None and out.bev.features.shape[1] == enc.bev_channels


def test_the_default_rig_has_no_lidar_stream(tmp_path: Path):
    generate_drive(tmp_path / "bag", seed=3, duration=0.2, scenario="parking-day", progress=False)
    frames = list(Synchronizer(tmp_path / "bag"))
    assert frames and all(f.sensor("lidar", "roof") is None for f in frames)
