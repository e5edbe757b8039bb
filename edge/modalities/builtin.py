"""The four built-in modalities, declared through the same interface as any installed plugin.

They reach the registry only through the entry points in pyproject.toml (`[project.entry-points."edge.modalities"]`),
exactly as an external package's would. `BUILTINS` gives their order (the order of today's lists and report keys);
the registry puts them first in it. Token counts are those of the encoders (edge/encoders/scene_tokens.py: one
token per side plus the surround for the BEV modalities, one for audio; the front camera's pruned ViT keeps
PerceptionConfig.tokens["camera"]); tests/test_modality_plugins.py checks that they agree. Each names its encoder
factory, its message decoder (edge/drives/decoders.py) and its health model (edge/runtime/health_models.py) as
strings (`encoder`, `decoder`, `health`): importing this module never imports the encoders, decoders or runtime.
Audio declares the extras of its frame record, its ground truth and its scores (edge/modalities/scoring.py); the
camera drops its front map (made for training) before the runtime hands its output on. The fisheye and the camera
make up the static "camera" policy; audio and the camera name what their own outputs add to a plan's score
(edge/runtime/value_models.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edge.drives import topics as T
from edge.modalities.interface import ModalityPlugin, SyncKind, TokenSpec
from edge.names import Policy
from edge.token_layouts import TOKEN_LAYOUTS

if TYPE_CHECKING:
    from edge.sensors.rig import Rig

D_ENC = 128  # token width of every built-in encoder (edge.encoders.base.D_ENC)
KEEP_RATIOS = (1.0, 0.5, 0.25)  # the front camera's token keep ratios (the scheduler plans each: Plan.keep)
HEALTH = "edge.runtime.health_models"  # the built-ins' health models (edge.runtime.health)
VALUE = "edge.runtime.value_models"  # the built-ins' plan-value models (edge.runtime.plan_value)


# ---------------------------------------------------------------- the built-ins' topic names (DESIGN.md)
# Also reachable under their historic names in edge.drives.topics (its BUILTIN_NAMES), which tests, the drive
# generator and fault injection use.
FISHEYE_CAMERAS: tuple[str, ...] = ("front", "rear", "left", "right")


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
AUDIO_TOPIC = "/audio/raw"  # one topic for the whole array: PCM in an Image (edge.drives.topics)


def ultrasonic_topic(sensor_name: str) -> str:
    return f"/ultrasonic/{sensor_name}"


# ---------------------------------------------------------------- declarations
def _image_topics(image: str, info: str) -> tuple[T.TopicSpec, ...]:
    """Both image_transport forms of one camera and its camera_info."""
    return (*T.image_topics(image), T.TopicSpec(info, (T.CAMERA_INFO,), True))


def _fisheye_sensors(rig: Rig) -> tuple[str, ...]:
    return tuple(c for c in FISHEYE_CAMERAS if c in rig.fisheye)


def _fisheye_topics(cameras: tuple[str, ...]) -> tuple[T.TopicSpec, ...]:
    return tuple(s for c in cameras for s in _image_topics(fisheye_image_topic(c), fisheye_info_topic(c)))


def _ultrasonic_sensors(rig: Rig) -> tuple[str, ...]:
    return tuple(s.name for s in rig.ultrasonic)


def _ultrasonic_topics(sensors: tuple[str, ...]) -> tuple[T.TopicSpec, ...]:
    return tuple(T.TopicSpec(ultrasonic_topic(n), (T.RANGE,), True) for n in sensors)


def _no_sensors(rig: Rig) -> tuple[str, ...]:
    return ()


def _audio_topics(sensors: tuple[str, ...]) -> tuple[T.TopicSpec, ...]:
    return (T.TopicSpec(AUDIO_TOPIC, (T.IMAGE,), True),)  # one array, one topic: PCM in an Image (edge.drives.topics)


def _recorded_ultrasonic(topics: tuple[str, ...]) -> tuple[str, ...]:
    """Range sensors are named by their topics (a recording's rig may have other sensors than ours)."""
    prefix = ultrasonic_topic("")
    return tuple(t[len(prefix):] for t in topics if t.startswith(prefix))


def _audio_truth(gt: Any) -> dict[str, Any]:
    """The classes of the audio events sounding at the frame (a frame record's gt.audio_events)."""
    return {"audio_events": [e["class"] for e in gt.audio_events or []]}


def _camera_key(sensor: str) -> str:
    return sensor  # the front camera's stream key is "front" (SyncConfig.reference, reports), not "camera/front"


def _camera_sensors(rig: Rig) -> tuple[str, ...]:
    return ("front",) if "front" in rig.cameras else ()  # the front camera is the one the encoder reads


def _camera_topics(cameras: tuple[str, ...]) -> tuple[T.TopicSpec, ...]:
    return tuple(s for c in cameras for s in _image_topics(camera_image_topic(c), camera_info_topic(c)))


FISHEYE = ModalityPlugin(
    name="fisheye", sensors=_fisheye_sensors, default_sensors=FISHEYE_CAMERAS, topics=_fisheye_topics,
    sync=SyncKind.NEAREST, bev=True, tokens=TokenSpec(5, D_ENC, TOKEN_LAYOUTS["fisheye"]),
    weights="fisheye.safetensors", health_streams=("fisheye",), encoder="edge.encoders.fisheye:build",
    decoder="edge.drives.decoders:IMAGE", health=f"{HEALTH}:fisheye", witness=True, policies=(Policy.CAMERA,))
ULTRASONIC = ModalityPlugin(
    name="ultrasonic", sensors=_ultrasonic_sensors, default_sensors=(), topics=_ultrasonic_topics,
    sync=SyncKind.LATEST, bev=True, tokens=TokenSpec(5, D_ENC, TOKEN_LAYOUTS["ultrasonic"]),
    weights="ultrasonic.safetensors", health_streams=("ultrasonic",), encoder="edge.encoders.ultrasonic:build",
    decoder="edge.drives.decoders:RANGE", recorded_sensors=_recorded_ultrasonic,
    health=f"{HEALTH}:ultrasonic")
AUDIO = ModalityPlugin(
    name="audio", sensors=_no_sensors, default_sensors=(), topics=_audio_topics,
    sync=SyncKind.WINDOW, bev=False, tokens=TokenSpec(1, D_ENC, TOKEN_LAYOUTS["audio"]),
    weights="audio.safetensors", health_streams=("audio",), encoder="edge.encoders.audio:build",
    decoder="edge.drives.decoders:AUDIO", health=f"{HEALTH}:audio",
    record=("event", "event_prob", "direction", "direction_prob"), truth=_audio_truth,
    scores="edge.modalities.scoring:AUDIO", plan_value=f"{VALUE}:AudioEvents")
CAMERA = ModalityPlugin(
    name="camera", sensors=_camera_sensors, default_sensors=("front",), topics=_camera_topics,
    sync=SyncKind.NEAREST, bev=False, tokens=TokenSpec(16, D_ENC, TOKEN_LAYOUTS["camera"]),
    weights="camera.safetensors", health_streams=("camera",), encoder="edge.encoders.camera:build",
    decoder="edge.drives.decoders:IMAGE", stream_key=_camera_key, health=f"{HEALTH}:camera",
    keep_ratios=KEEP_RATIOS, transient=("front_map",), policies=(Policy.CAMERA,), plan_value=f"{VALUE}:FrontCamera")

BUILTINS: tuple[ModalityPlugin, ...] = (FISHEYE, ULTRASONIC, AUDIO, CAMERA)
