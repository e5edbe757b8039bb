"""The topic contract of DESIGN.md: names, message types and roles of every topic in a drive.

Which sensor topics the contract holds is declared by the modality plugins (edge.modalities, docs/plugins.md):
`known_topics` asks the registry. The built-in plugins' topic names (`FISHEYE_CAMERAS`, `fisheye_image_topic`,
`ultrasonic_topic`, `AUDIO`, ...) are defined with their declarations in edge.modalities.builtin; the historic names
here are aliases of those (`BUILTIN_NAMES`, resolved on first use), so that a plugin's topics are known without
editing this module.

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

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from difflib import get_close_matches

from edge.errors import EdgeError

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
RANGE = "sensor_msgs/msg/Range"
ODOMETRY = "nav_msgs/msg/Odometry"
OCCUPANCY_GRID = "nav_msgs/msg/OccupancyGrid"
MARKER_ARRAY = "visualization_msgs/msg/MarkerArray"
STRING = "std_msgs/msg/String"
CLOCK = "rosgraph_msgs/msg/Clock"

ODOM = "/odom"
CLOCK_TOPIC = "/clock"

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


# The built-in plugins' topic names, defined in edge.modalities.builtin with their declarations: name here -> name
# there. Resolved by the module's __getattr__ (the declarations import this module, so not at import time).
BUILTIN_NAMES: dict[str, str] = {
    "FISHEYE_CAMERAS": "FISHEYE_CAMERAS", "fisheye_image_topic": "fisheye_image_topic",
    "fisheye_info_topic": "fisheye_info_topic", "camera_image_topic": "camera_image_topic",
    "camera_info_topic": "camera_info_topic", "FRONT_CAMERA_IMAGE": "FRONT_CAMERA_IMAGE",
    "FRONT_CAMERA_INFO": "FRONT_CAMERA_INFO", "AUDIO": "AUDIO_TOPIC", "ultrasonic_topic": "ultrasonic_topic",
}


def __getattr__(name: str) -> object:
    """The built-ins' topic names under their historic names here (BUILTIN_NAMES)."""
    if name in BUILTIN_NAMES:
        from edge.modalities import builtin

        return getattr(builtin, BUILTIN_NAMES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ====================================================================== remapping (edge run / edge bench)

class RemapError(EdgeError):
    """A `--remap` or `--namespace` that cannot apply to a bag; the message names the rule and the topic."""


_NAME = re.compile(r"^(/[A-Za-z_][A-Za-z0-9_]*)+$")


def _absolute(name: str, namespace: str) -> str:
    """A ROS name resolved as a node in `namespace` resolves it: relative names go under the namespace."""
    return name if name.startswith("/") else f"{namespace}/{name}"


def is_contract_topic(name: str) -> bool:
    """A topic the runtime reads or the generator writes (known_topics), including the topics of any sensor a
    plugin names from a recording's topics (its `recorded_sensors`: any range sensor's `/ultrasonic/<name>`, any
    LiDAR's `/lidar/<name>/points`)."""
    from edge.modalities.registry import registry  # here: the plugins' declarations import this module

    return name in known_topics(()) or name in known_topics(registry().recorded_sensors((name,)))


@dataclass(frozen=True)
class TopicRemap:
    """How a bag's topic names map to the contract's, as `edge node --ros-args -r FROM:=TO` and `__ns` do.

    `namespace` ("/vehicle1"): the contract's topic X is read from `<namespace>X`; topics outside it are not read.
    `rules`: (FROM, TO) pairs, FROM a contract topic (relative = in the root namespace, as the node's own names),
    TO the bag's topic (relative = under the namespace); a remapped camera base also maps its image_transport
    `/compressed` form. A bag topic a rule reads is read under that rule's name only."""

    namespace: str = ""
    rules: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, rules: Sequence[str] = (), namespace: str | None = None) -> "TopicRemap":
        """From the command line (`FROM:=TO` strings, a namespace); errors name the rule at fault."""
        ns = (namespace or "").rstrip("/")
        if ns and not _NAME.match(_absolute(ns, "")):
            raise RemapError(f"--namespace '{namespace}': not a ROS namespace (e.g. /vehicle1)")
        ns = _absolute(ns, "") if ns else ""
        out: list[tuple[str, str]] = []
        for text in rules:
            src, sep, dst = text.partition(":=")
            if not sep or not src.strip() or not dst.strip():
                raise RemapError(f"--remap '{text}': expected FROM:=TO (the contract's topic := the bag's topic, "
                                 "e.g. /odom:=/vehicle/odom)")
            src, dst = _absolute(src.strip(), ""), _absolute(dst.strip(), ns)
            for name in (src, dst):
                if not _NAME.match(name):
                    raise RemapError(f"--remap '{text}': '{name}' is not a valid ROS topic name")
            if not is_contract_topic(src):
                hint = get_close_matches(src, list(known_topics(())), n=1)
                raise RemapError(f"--remap '{text}': '{src}' is not a topic the runtime reads (DESIGN.md's topics"
                                 + (f"; did you mean '{hint[0]}'?)" if hint else ")"))
            for prev_src, prev_dst in out:
                if prev_src == src:
                    raise RemapError(f"--remap '{text}': '{src}' is already remapped to '{prev_dst}'")
                if prev_dst == dst:
                    raise RemapError(f"--remap '{text}': the bag's topic '{dst}' is already read as '{prev_src}' "
                                     "(two remaps to one topic)")
            out.append((src, dst))
        return cls(ns, tuple(out))

    def __bool__(self) -> bool:
        return bool(self.namespace or self.rules)

    def view(self, recorded: Collection[str], source: str) -> "TopicView":
        """The names of `recorded` (a bag's topics, at `source`) as the contract's; an error names a rule whose
        bag topic is missing, or a namespace with no topic under it."""
        names: dict[str, str] = {}  # recorded -> contract, from the rules
        for src, dst in self.rules:
            compressed = (src + COMPRESSED_SUFFIX, dst + COMPRESSED_SUFFIX)
            transport = not src.endswith(COMPRESSED_SUFFIX) and compressed[1] in recorded \
                and is_contract_topic(compressed[0])
            if dst not in recorded and not transport:
                near = get_close_matches(dst, list(recorded), n=1)
                raise RemapError(f"--remap {src}:={dst}: {source} has no topic '{dst}'"
                                 + (f" (did you mean '{near[0]}'?)" if near else ""))
            if dst in recorded:
                names[dst] = src
            if transport and compressed[1] not in names:
                names[compressed[1]] = compressed[0]
        if self.namespace and not any(t.startswith(self.namespace + "/") for t in recorded):
            spaces = sorted({"/" + t.split("/")[1] for t in recorded if t.count("/") > 1})
            raise RemapError(f"--namespace {self.namespace}: {source} has no topic under it"
                             + (f" (its namespaces: {', '.join(spaces[:8])})" if spaces else ""))
        return TopicView(self.namespace, names)


class TopicView:
    """A bag's recorded topic names <-> the contract's (`TopicRemap.view`): remapped topics under their rule's name,
    the rest stripped of the namespace; a topic outside the namespace, or whose name a rule took, is not read."""

    def __init__(self, namespace: str, rules: Mapping[str, str]) -> None:
        self.namespace = namespace
        self.rules = dict(rules)  # recorded -> contract
        self._inverse = {c: r for r, c in self.rules.items()}
        self._cache: dict[str, str | None] = {}  # asked per message: kept

    def contract_name(self, recorded: str) -> str | None:
        """The name the runtime reads `recorded` under, or None where it does not read it."""
        if recorded in self._cache:
            return self._cache[recorded]
        name: str | None = self.rules.get(recorded)
        if name is None:
            inside = not self.namespace or recorded.startswith(self.namespace + "/")
            name = recorded[len(self.namespace):] if inside else None
            if name in self._inverse:  # a rule reads another bag topic under this name
                name = None
        self._cache[recorded] = name
        return name

    def recorded_name(self, contract: str) -> str:
        """The bag's topic read as `contract`."""
        return self._inverse.get(contract, self.namespace + contract)

    def describe(self, recorded: Collection[str]) -> str:
        """One line for the report: what is read under which name, and what is not read."""
        parts = [f"namespace {self.namespace}"] if self.namespace else []
        parts += [f"{r} read as {c}" for r, c in sorted(self.rules.items())]
        hidden = sorted(t for t in recorded if self.contract_name(t) is None)
        if hidden:
            parts.append(f"not read: {', '.join(hidden[:6])}" + (f" and {len(hidden) - 6} more" if len(hidden) > 6
                                                                   else ""))
        return "topic names: " + "; ".join(parts)
