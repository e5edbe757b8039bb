"""A modality the core does not know (a LiDAR on sensor_msgs/PointCloud2) gets its data into the frame through its
plugin's decoder, with no core edit; its decoder's failures are isolated like the built-ins' (issue 11)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.drives import messages as M
from edge.drives import topics as T
from edge.drives.bag import BagWriter
from edge.drives.sync import Synchronizer
from edge.modalities import MessageDecoder, ModalityPlugin, SyncKind, TokenSpec
from edge.modalities.builtin import BUILTINS

S = 1_700_000_000_000_000_000
MS = 1_000_000
PC2 = "sensor_msgs/msg/PointCloud2"
POINTS = "/lidar/roof/points"


def cloud(t: int, marker: int, n: int = 6) -> Any:
    """n points (x, y, z) float32, x = marker: which message a frame got."""
    xyz = np.zeros((n, 3), np.float32)
    xyz[:, 0] = marker
    field = M._t("sensor_msgs/msg/PointField")
    fields = [field(name=a, offset=4 * i, datatype=field.FLOAT32, count=1) for i, a in enumerate("xyz")]
    return M._t(PC2)(header=M.header(t, "lidar_roof"), height=1, width=n, fields=fields, is_bigendian=False,
                     point_step=12, row_step=12 * n, data=xyz.view(np.uint8).reshape(-1), is_dense=True)


def decode_points(payload: Any, msgtype: str, ctx: Any) -> np.ndarray:
    msg = ctx.message(payload, msgtype)
    return np.frombuffer(bytes(msg.data), np.float32).reshape(-1, 3)


def decode_points_but_the_third(payload: Any, msgtype: str, ctx: Any) -> np.ndarray:
    xyz = decode_points(payload, msgtype, ctx)
    if xyz[0, 0] == 2:
        raise ValueError("cloud 2 is corrupt")
    return xyz


POINTS_DECODER = MessageDecoder(types=(PC2,), decode=decode_points, noun="cloud")
FLAKY_DECODER = MessageDecoder(types=(PC2,), decode=decode_points_but_the_third, noun="cloud")
NOT_A_DECODER = {"decode": decode_points}
LIDAR = ModalityPlugin(
    name="lidar", sensors=lambda rig: ("roof",), default_sensors=("roof",),
    topics=lambda sensors: tuple(T.TopicSpec(f"/lidar/{n}/points", (PC2,), True) for n in sensors),
    sync=SyncKind.NEAREST, bev=True, tokens=TokenSpec(8, 128, "pillars-v1"), weights="lidar.safetensors",
    health_streams=("lidar",), encoder="edge_lidar.encoder:build", decoder=f"{__name__}:POINTS_DECODER")


@pytest.fixture(scope="module")
def bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 frames at 10 Hz: the front fisheye (compressed) and the roof LiDAR 5 ms after it."""
    path = tmp_path_factory.mktemp("lidar") / "bag"
    img = np.full((48, 64, 3), 128, np.uint8)
    with BagWriter(path) as w:
        for i in range(5):
            t = S + i * 100 * MS
            w.write(T.fisheye_image_topic("front") + T.COMPRESSED_SUFFIX, T.COMPRESSED_IMAGE, t,
                    M.compressed_image(t, "front", img))
            w.write(POINTS, PC2, t + 5 * MS, cloud(t + 5 * MS, i))
    return path


def _frames(bag: Path, plugin: ModalityPlugin | None) -> tuple[list[Any], Synchronizer]:
    """The built-ins and this fake plugin (not the installed registry: the real LiDAR plugin would hold its name)."""
    sync = Synchronizer(bag, plugins=(*BUILTINS, *((plugin,) if plugin is not None else ())))
    return list(sync), sync


def test_a_new_plugin_gets_its_decoded_data_in_the_frame(bag: Path) -> None:
    frames, sync = _frames(bag, LIDAR)
    assert len(frames) == 5 and not sync.diagnostics
    for i, f in enumerate(frames):
        xyz = f.sensor("lidar", "roof")
        assert xyz.shape == (6, 3) and np.all(xyz[:, 0] == i)  # the cloud of its own frame, never reused
        assert f.source_stamps["lidar/roof"] == f.stamp_ns + 5 * MS and f.sensor("fisheye", "front") is not None
    plain, sync = _frames(bag, None)  # not installed: the topic is not read, the rest is the same
    assert "lidar" not in plain[0].data and [f.stamp_ns for f in plain] == [f.stamp_ns for f in frames]
    assert not sync.diagnostics


def test_a_plugin_decoder_that_raises_loses_that_message_only(bag: Path) -> None:
    frames, sync = _frames(bag, dataclasses.replace(LIDAR, decoder=f"{__name__}:FLAKY_DECODER"))
    assert len(frames) == 5 and all(f.sensor("fisheye", "front") is not None for f in frames)
    assert [f.sensor("lidar", "roof") is None for f in frames] == [i == 2 for i in range(5)]
    assert "lidar/roof" in frames[2].missing and "lidar/roof" not in frames[2].source_stamps
    lines = [d for d in sync.diagnostics if POINTS in d]
    assert len(lines) == 1 and "cloud not decoded (ValueError: cloud 2 is corrupt)" in lines[0]
    rec = [d for d in sync.degradations if d["kind"] == "undecodable"]
    assert len(rec) == 1 and rec[0]["source"] == POINTS and rec[0]["count"] == 1


@pytest.mark.parametrize("decoder, why", [("no_such_lidar_package.decode:POINTS", "failed to import (ModuleNotFound"),
                                          (f"{__name__}:NOT_A_DECODER", "is a dict, not an edge.modalities.Message")])
def test_a_plugin_whose_decoder_is_unusable_is_named_and_the_rest_runs(bag: Path, decoder: str, why: str) -> None:
    frames, sync = _frames(bag, dataclasses.replace(LIDAR, decoder=decoder))
    assert len(frames) == 5 and all(f.sensor("fisheye", "front") is not None for f in frames)
    assert all(f.data["lidar"] == {"roof": None} for f in frames)
    assert len(sync.diagnostics) == 1 and f"modality 'lidar': decoder {decoder}" in sync.diagnostics[0] \
        and why in sync.diagnostics[0]


def test_a_plugin_whose_sensors_raise_is_named_and_the_rest_runs(bag: Path) -> None:
    frames, sync = _frames(bag, dataclasses.replace(LIDAR, recorded_sensors=lambda names: 1 / 0))
    assert len(frames) == 5 and all(f.sensor("fisheye", "front") is not None and f.data["lidar"] == {} for f in frames)
    assert len(sync.diagnostics) == 1 and "modality 'lidar': its sensors or topics raised (ZeroDivisionError" \
        in sync.diagnostics[0]
