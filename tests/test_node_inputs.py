"""The runtime node subscribes to what the modality plugins declare (issue 11): each plugin's data topics on the
rig (those its decoder takes), a transport choice for a stream with several forms (a camera's raw and /compressed),
odometry the core's. No ROS here: the subscription list, the assembler's stream plan and the message classes."""

from __future__ import annotations

import dataclasses

from edge.drives import topics as T
from edge.drives.decoders import IMAGE
from edge.drives.sync import SampleAssembler, SyncConfig
from edge.modalities import MessageDecoder, ModalityPlugin, SyncKind, TokenSpec
from edge.modalities.registry import registry
from edge.sensors.rig import load_rig
from ros_nodes import node_io as io

PC2 = "sensor_msgs/msg/PointCloud2"
POINTS = MessageDecoder(types=(PC2,), decode=lambda payload, msgtype, ctx: payload, noun="cloud")
LIDAR = ModalityPlugin(
    name="lidar", sensors=lambda rig: ("roof",), default_sensors=("roof",),
    topics=lambda sensors: tuple(T.TopicSpec(f"/lidar/{n}/points", (PC2,), True) for n in sensors),
    sync=SyncKind.NEAREST, bev=True, tokens=TokenSpec(8, 128, "pillars-v1"), weights="lidar.safetensors",
    health_streams=("lidar",), encoder="edge_lidar.encoder:build", decoder=f"{__name__}:POINTS")
THERMAL = dataclasses.replace(  # a camera of its own: both image transports and its camera_info
    registry()["camera"], name="thermal", sensors=lambda rig: ("rear",), default_sensors=("rear",),
    topics=lambda sensors: tuple(s for n in sensors for s in (*T.image_topics(f"/thermal/{n}/image_raw"),
                                                               T.TopicSpec(f"/thermal/{n}/camera_info",
                                                                           (T.CAMERA_INFO,), True))),
    health_streams=("thermal",), stream_key=None, keep_ratios=(1.0,))
BROKEN = dataclasses.replace(LIDAR, name="sonar", topics=lambda sensors: (T.TopicSpec("/sonar", (PC2,), True),),
                             health_streams=("sonar",), decoder="edge_sonar_missing.decode:SONAR")


def test_the_node_subscribes_to_a_plugins_topics() -> None:
    rig, plugins = load_rig(), (*registry(), LIDAR, THERMAL, BROKEN)
    assert IMAGE.types == (T.IMAGE, T.COMPRESSED_IMAGE)  # the thermal plugin's decoder takes both forms
    bases = io.camera_bases(rig, plugins)
    assert bases == [*io.camera_bases(rig), "/thermal/rear/image_raw"]  # a transport choice for its camera
    subs = io.inputs(rig, {b: ("raw", "compressed") for b in bases}, plugins)
    ours = [s for s in subs if s.name.startswith(("lidar/", "thermal/", "sonar"))]
    assert ours == [io.Input("lidar/roof/points", PC2, "/lidar/roof/points"),
                    io.Input("thermal/rear/image_raw", T.IMAGE, "/thermal/rear/image_raw", "raw"),
                    io.Input("thermal/rear/image_raw/compressed", T.COMPRESSED_IMAGE, "/thermal/rear/image_raw",
                             "compressed")]  # no camera_info; the plugin whose decoder is missing is left out
    assert [s for s in subs if s not in ours] == io.inputs(rig, {b: ("raw", "compressed") for b in bases})
    assert [s.name for s in io.inputs(rig, {b: ("compressed",) for b in bases}, plugins)
            if s.name.startswith("thermal/")] == ["thermal/rear/image_raw/compressed"]
    types = io.stream_types(rig, plugins)
    assert types["/lidar/roof/points"] == PC2 and types["/thermal/rear/image_raw"] == T.IMAGE
    assert types[T.ODOM] == T.ODOMETRY and "/sonar" not in types
    assert io.message_class(PC2) == ("sensor_msgs.msg", "PointCloud2")
    assert io.message_class(T.RANGE) == ("sensor_msgs.msg", "Range")
    # the node's assembler plans the new streams from these types
    asm = SampleAssembler(types, SyncConfig(ground_truth=False), source="ros", plugins=plugins[:-1])
    assert asm.routes["/lidar/roof/points"][0] == "lidar/roof"
    assert asm.routes["/thermal/rear/image_raw"][0] == "thermal/rear"


def test_the_builtins_subscriptions_are_the_topic_contract() -> None:
    """The built-ins' subscriptions on the default rig: docs/ros.md's names, both forms of every camera."""
    rig = load_rig()
    bases = io.camera_bases(rig)
    assert sorted(bases) == sorted([T.fisheye_image_topic(c) for c in rig.fisheye] + [T.FRONT_CAMERA_IMAGE])
    names = {s.name for s in io.inputs(rig, {b: ("raw", "compressed") for b in bases})}
    assert names == {b.lstrip("/") + f for b in bases for f in ("", T.COMPRESSED_SUFFIX)} | \
        {T.ultrasonic_topic(s.name).lstrip("/") for s in rig.ultrasonic} | {"audio/raw", "odom"}
