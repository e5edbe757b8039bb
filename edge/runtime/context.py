"""What the scheduler knows about the world right now, estimated from the sensor data itself.

Each modality plugin's health model (edge.runtime.health, the built-ins' in edge.runtime.health_models) says what
its data looked like this frame: whether it delivered, per camera brightness, noise and glare, which sensors are
implausible (stuck or contradicted range readings, frozen images), a sound level. Here, per health stream:
staleness and dropout rate over a sliding window, the same for every stream; the lighting from the cameras; ego
speed from odometry. Nothing here reads ground truth: the same estimates come from a live vehicle.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from edge.errors import PluginError
from edge.frames import Frame
from edge.kernels.grid import BevGrid
from edge.modalities.interface import ModalityPlugin
from edge.modalities.registry import registry
from edge.runtime.health import HealthModel, HealthSetup, HealthUpdate, Observation, build_health_model
from edge.runtime.plausibility import ObstacleView

if TYPE_CHECKING:
    from edge.sensors.rig import Rig

log = logging.getLogger(__name__)

# Immerkaer's fast noise estimator: a Laplacian-difference kernel insensitive to image structure.
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
SATURATED = 250
DARK_BRIGHTNESS = 0.12  # mean luma below this (0..1, valid pixels) is night for a camera
DUSK_BRIGHTNESS = 0.25
GLARE_FRACTION = 0.005  # share of saturated lens pixels that marks a camera as blinded (a sun disc with bloom)


@dataclass(frozen=True)
class CameraHealth:
    present: bool
    brightness: float = 0.0  # mean luma of the lens area, 0..1
    noise: float = 0.0  # estimated noise sigma, grey levels
    glare: float = 0.0  # share of saturated pixels in the lens area

    @property
    def glared(self) -> bool:
        return self.present and self.glare >= GLARE_FRACTION


# The dropout rate is counted over at least this many frames: over the first two, one frame short of data (a node
# catching up after its start-up calibration skips part of its backlog, stream by stream) read as 50 % dropout, and
# the scheduler dropped every sensor (benchmarks/bench_dds.py, 7 Dec 2026). A silent stream is caught by staleness.
MIN_DROPOUT_FRAMES = 5
STALE_S = 0.5  # a stream without valid data for this long is silent


@dataclass(frozen=True)
class StreamHealth:
    """Health of one sensor stream over the recent window."""

    present: bool  # delivered data in the current sample
    staleness_s: float  # time since the last valid data (inf if never)
    dropout_rate: float  # share of recent samples without valid data
    implausible: bool = False  # delivers, but most of it is implausible (e.g. most of the ultrasonic ring)

    @property
    def healthy(self) -> bool:
        """Delivering: valid data within the last 0.5 s, in at least half of the recent frames, and plausible. One
        frame without it (`present` false) is not enough to drop the sensor from the plan: a node catching up on a
        backlog makes a few such frames, and each drop and return is two plan changes."""
        return self.staleness_s < STALE_S and self.dropout_rate < 0.5 and not self.implausible


@dataclass(frozen=True)
class Context:
    stamp_ns: int
    cameras: dict[str, CameraHealth]
    streams: dict[str, StreamHealth]  # the modality plugins' health_streams: "fisheye", "camera", ...
    audio_level_db: float  # the loudest sound level a health model gave (-120: none)
    ego_speed: float
    lighting: str  # day / dusk / night, from camera brightness
    implausible: tuple[str, ...] = ()  # "<modality>/<sensor>" the health models named ("ultrasonic/<name>",
    # "fisheye/<name>", "camera/front"): ignored now

    @property
    def glare_cameras(self) -> list[str]:
        return sorted(name for name, c in self.cameras.items() if c.glared)


def image_health(img: np.ndarray | None) -> CameraHealth:
    """Brightness, noise and glare of one image, measured over its lens area (fisheye corners excluded)."""
    if img is None:
        return CameraHealth(present=False)
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if img.ndim == 3 else img
    small = cv2.resize(grey, (grey.shape[1] // 2, grey.shape[0] // 2), interpolation=cv2.INTER_AREA) \
        if grey.shape[1] > 400 else grey
    lens = small > 0
    n = int(lens.sum())
    if n < 16:
        return CameraHealth(present=True)
    brightness = float(small[lens].mean()) / 255.0
    glare = float((small[lens] >= SATURATED).mean())
    response = np.abs(cv2.filter2D(small.astype(np.float32), -1, _NOISE_KERNEL))
    interior = cv2.erode(lens.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    noise = float(math.sqrt(math.pi / 2) * response[interior].mean() / 6.0) if interior.any() else 0.0
    return CameraHealth(present=True, brightness=brightness, noise=noise, glare=glare)


def lighting_from_brightness(brightness: float) -> str:
    if brightness < DARK_BRIGHTNESS:
        return "night"
    if brightness < DUSK_BRIGHTNESS:
        return "dusk"
    return "day"


@dataclass
class _StreamTracker:
    window: int
    last_valid_ns: int | None = None
    history: deque = field(default_factory=deque)

    def update(self, stamp_ns: int, valid: bool, data_stamp_ns: int | None) -> StreamHealth:
        if valid and data_stamp_ns is not None:
            self.last_valid_ns = max(self.last_valid_ns or data_stamp_ns, data_stamp_ns)
        if self.last_valid_ns is None:  # not started yet (e.g. audio filling its window): no dropout, just absent
            return StreamHealth(False, math.inf, 0.0)
        self.history.append(valid)
        while len(self.history) > self.window:
            self.history.popleft()
        staleness = math.inf if self.last_valid_ns is None else max(0.0, (stamp_ns - self.last_valid_ns) / 1e9)
        misses = len(self.history) - sum(self.history)
        return StreamHealth(valid, staleness, misses / max(len(self.history), MIN_DROPOUT_FRAMES))


class ContextEstimator:
    """Feed samples in time order; each call returns the context at that sample. One health model per plugin
    (`plugins`, default the installed ones), built with `rig` (what the models check against, e.g. the range
    sensors' beams) and `grid` (the BEV grid the witnesses come on).

    A model that cannot be built, or raises on a frame, makes only its modality's streams unhealthy (for that
    frame, or for good when it cannot be built); the reason is logged and named once in `diagnostics`."""

    def __init__(self, window: int = 20, brightness_smoothing: float = 0.3, rig: Rig | None = None,
                 grid: BevGrid | None = None, plugins: Iterable[ModalityPlugin] | None = None) -> None:
        self.plugins = tuple(registry() if plugins is None else plugins)
        self.trackers = {k: _StreamTracker(window) for p in self.plugins for k in p.health_streams}
        self.models: dict[str, HealthModel] = {}
        self._failed: dict[str, str] = {}  # modality -> why its health failed first (named once)
        for p in self.plugins:
            try:
                self.models[p.name] = build_health_model(HealthSetup(p, rig, grid))
            except PluginError as exc:
                self._fail(p.name, f"{exc}; its streams are unhealthy")
        self.alpha = brightness_smoothing
        self._brightness: float | None = None

    @property
    def degradations(self) -> list[dict[str, Any]]:
        """Implausible and frozen spans so far, as the report's degradation records."""
        return [d for m in self.models.values() for d in m.degradations()]

    @property
    def diagnostics(self) -> list[str]:
        return list(self._failed.values()) + [d for m in self.models.values() for d in m.diagnostics]

    def update(self, sample: Frame, witness: ObstacleView | None = None) -> Context:
        """`witness`: what the BEV saw on the previous frame, to check e.g. "no echo" readings against."""
        t = sample.stamp_ns
        cams: dict[str, CameraHealth] = {}
        streams: dict[str, StreamHealth] = {}
        implausible: list[str] = []
        levels: list[float] = []
        for p in self.plugins:
            result = self._health(p, sample, witness)
            cams.update(result.images)
            implausible += result.implausible
            if result.level_db is not None:
                levels.append(result.level_db)
            for key in p.health_streams:
                seen = result.streams.get(key, Observation(False))
                streams[key] = replace(self.trackers[key].update(t, seen.valid, seen.stamp_ns),
                                       implausible=seen.implausible)
        bright = [c.brightness for c in cams.values() if c.present]
        if bright:
            b = float(np.median(bright))
            self._brightness = b if self._brightness is None else (1 - self.alpha) * self._brightness + self.alpha * b
        lighting = lighting_from_brightness(self._brightness) if self._brightness is not None else "unknown"
        speed = abs(float(sample.odometry["vx"])) if sample.odometry else 0.0
        return Context(t, cams, streams, max(levels, default=-120.0), speed, lighting, tuple(implausible))

    def _health(self, plugin: ModalityPlugin, sample: Frame, witness: ObstacleView | None) -> HealthUpdate:
        """Its model's update; a model that is missing or raises gives unhealthy streams, never a lost frame."""
        model = self.models.get(plugin.name)
        if model is not None:
            try:
                return model.update(sample.stamp_ns, sample.get(plugin.name), sample.source_stamps, witness)
            except Exception as exc:  # a plugin's code: its modality is unhealthy, the frame goes on
                self._fail(plugin.name, f"modality '{plugin.name}': health model raised {type(exc).__name__}: {exc} "
                                        f"at {sample.stamp_ns} ns; unhealthy while it raises")
        return HealthUpdate({k: Observation(False, None, implausible=True) for k in plugin.health_streams})

    def _fail(self, name: str, why: str) -> None:
        if name not in self._failed:
            self._failed[name] = why
            log.warning("%s", why)
