"""The LiDAR's declaration: what the core needs to know of it, exposed as the entry point `edge.modalities: lidar`.

Light on purpose (the registry imports it to read the topic contract): no torch, no kernels; the encoder, decoder
and simulator are "module:callable" references the core imports when it needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge.drives.topics import TopicSpec
from edge.modalities import ModalityPlugin, SyncKind, TokenSpec

from edge_lidar.messages import POINTCLOUD2
from edge_lidar.rig import NAME, lidars, points_topic

if TYPE_CHECKING:  # the core's rig module pulls in camera maths; the declaration needs only its type
    from edge.sensors.rig import Rig

# A BEV modality's LLM tokens are the stack's scene tokens of the posterior it alone gives (one per side and the
# surround: edge.encoders.scene_tokens.BEV_TOKENS), laid out as the fisheye's, without side features of its own.
TOKENS = TokenSpec(5, 128, "sector-posteriors-v3")


def sensors(rig: Rig) -> tuple[str, ...]:
    """The LiDARs of the rig's `plugins: lidar:` section; none when it has no such section."""
    return tuple(lidar.name for lidar in lidars(rig))


def recorded(topics: tuple[str, ...]) -> tuple[str, ...]:
    """The LiDARs of a recording, named by their `/lidar/<sensor>/points` topics: a LiDAR is optional on a vehicle,
    so a bag read without its rig expects none (no default sensor) and reads those it holds."""
    head, tail = points_topic("\0").split("\0")
    return tuple(t[len(head):-len(tail)] for t in topics
                 if t.startswith(head) and t.endswith(tail) and "/" not in t[len(head):-len(tail)] and len(t) > len(head + tail))


def topics(names: tuple[str, ...]) -> tuple[TopicSpec, ...]:
    return tuple(TopicSpec(points_topic(n), (POINTCLOUD2,), True) for n in names)


LIDAR = ModalityPlugin(
    name=NAME, sensors=sensors, default_sensors=(), recorded_sensors=recorded, topics=topics, sync=SyncKind.NEAREST, bev=True,
    tokens=TOKENS, weights="lidar.safetensors", health_streams=(NAME,), encoder="edge_lidar.encoder:build",
    decoder="edge_lidar.decode:POINTS", simulator="edge_lidar.simulator:build")
