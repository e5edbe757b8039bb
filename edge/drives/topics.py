"""The topic contract of DESIGN.md: names, message types and roles of every topic in a drive.

Which sensor topics the contract holds is declared by the modality plugins (edge.modalities, docs/plugins.md):
`known_topics` asks the registry; the names below are the ones the built-in plugins use.

Images follow the image_transport convention: a recorder stores `<base>/compressed`
(sensor_msgs/CompressedImage, JPEG) beside or instead of `<base>` (sensor_msgs/Image); readers accept either.

Audio (`/audio/raw`) is a sensor_msgs/Image used as a stamped PCM container, chosen because it is a standard
type every ROS 2 tool can record and replay: height = number of microphones (rows in the rig's microphone
order), width = samples per channel in the chunk, encoding "16SC1" (signed 16-bit little-endian PCM, planar:
row i holds microphone i), header.stamp = time of the first sample, header.frame_id = the array's frame.
The sample rate is the rig's `microphones.sample_rate_hz`.

Ground truth written by the generator lives under `/ground_truth/` in the same bag; a real recorded bag simply
lacks it. The BEV class values in the OccupancyGrid are documented in `edge.drives.groundtruth`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

FISHEYE_CAMERAS: tuple[str, ...] = ("front", "rear", "left", "right")

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
RANGE = "sensor_msgs/msg/Range"
ODOMETRY = "nav_msgs/msg/Odometry"
OCCUPANCY_GRID = "nav_msgs/msg/OccupancyGrid"
MARKER_ARRAY = "visualization_msgs/msg/MarkerArray"
STRING = "std_msgs/msg/String"
CLOCK = "rosgraph_msgs/msg/Clock"


def fisheye_image_topic(camera: str) -> str:
    return f"/fisheye/{camera}/image_raw"


def fisheye_info_topic(camera: str) -> str:
    return f"/fisheye/{camera}/camera_info"


def camera_image_topic(camera: str) -> str:
    return f"/camera/{camera}/image_raw"


def camera_info_topic(camera: str) -> str:
    return f"/camera/{camera}/camera_info"


FRONT_CAMERA_IMAGE = camera_image_topic("front")
FRONT_CAMERA_INFO = camera_info_topic("front")
AUDIO = "/audio/raw"
ODOM = "/odom"
CLOCK_TOPIC = "/clock"


def ultrasonic_topic(sensor_name: str) -> str:
    return f"/ultrasonic/{sensor_name}"


GT_BEV = "/ground_truth/bev_occupancy"
GT_OBJECTS = "/ground_truth/objects"
GT_AUDIO_EVENTS = "/ground_truth/audio_events"
GT_QA = "/ground_truth/qa"
GT_CONDITIONS = "/ground_truth/conditions"

# Outputs of the runtime (DESIGN.md).
OUT_BEV = "/perception/bev_occupancy"
OUT_PLAN = "/mpnp/plan"
QUESTION = "/mpnp/question"
ANSWER = "/mpnp/answer"
DIAGNOSTICS = "/diagnostics"

COMPRESSED_SUFFIX = "/compressed"


@dataclass(frozen=True)
class TopicSpec:
    """A topic the project knows: accepted message types and whether it carries sensor data (best-effort QoS)."""

    name: str
    types: tuple[str, ...]
    sensor: bool


def image_topics(base: str) -> tuple[TopicSpec, TopicSpec]:
    """Both image_transport forms of one camera stream."""
    return (TopicSpec(base, (IMAGE,), True), TopicSpec(base + COMPRESSED_SUFFIX, (COMPRESSED_IMAGE,), True))


def known_topics(sensors: Sequence[str] | Mapping[str, Sequence[str]] = ()) -> dict[str, TopicSpec]:
    """Every topic of the contract: each installed modality plugin's sensor topics (edge.modalities), odometry and
    the ground truth.

    `sensors`: per modality, the names of its sensors on the rig (`registry().rig_sensors(rig)`); a modality left
    out declares its defaults (the rig not known). A plain sequence, the historic form, names the range sensors
    (the sensors of the plugins that synchronise as latest-value range sensors, e.g. a rig's ultrasonic names: all
    a bag's topic names show of its rig)."""
    from edge.modalities.interface import SyncKind  # here: the plugins' declarations import this module
    from edge.modalities.registry import registry

    plugins = registry()
    if not isinstance(sensors, Mapping):
        sensors = {p.name: tuple(sensors) for p in plugins if p.sync is SyncKind.LATEST}
    specs = [s for p in plugins for s in p.topics(tuple(sensors.get(p.name, p.default_sensors)))]
    specs += [
        TopicSpec(ODOM, (ODOMETRY,), True),
        TopicSpec(GT_BEV, (OCCUPANCY_GRID,), False),
        TopicSpec(GT_OBJECTS, (MARKER_ARRAY,), False),
        TopicSpec(GT_AUDIO_EVENTS, (MARKER_ARRAY,), False),
        TopicSpec(GT_QA, (STRING,), False),
        TopicSpec(GT_CONDITIONS, (STRING,), False),
    ]
    return {s.name: s for s in specs}
