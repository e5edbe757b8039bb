"""What the scheduler knows about the world right now, estimated from the sensor data itself.

Per camera: brightness, noise and glare from the image; per sensor stream: staleness and dropout rate over a
sliding window, and plausibility of the range readings (edge.runtime.plausibility: stuck values, "no echo" against
the previous frame's fisheye BEV); audio level; ego speed from odometry. Nothing here reads ground truth: the same
estimates come from a live vehicle.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from edge.frames import Frame
from edge.kernels.grid import BevGrid
from edge.modalities.registry import registry
from edge.runtime.plausibility import Beam, FrozenImages, ObstacleView, RangePlausibility

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
    audio_level_db: float
    ego_speed: float
    lighting: str  # day / dusk / night, from camera brightness
    implausible: tuple[str, ...] = ()  # "ultrasonic/<name>", "fisheye/<name>", "camera/front": ignored now

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
    """Feed samples in time order; each call returns the context at that sample. `ultrasonic` (the rig's
    UltrasonicSensor list) gives the beams against which "no echo" is checked."""

    def __init__(self, window: int = 20, brightness_smoothing: float = 0.3, ultrasonic: Sequence[Any] = (),
                 grid: BevGrid | None = None) -> None:
        self.trackers = {k: _StreamTracker(window) for k in registry().health_streams}
        self.plausibility = RangePlausibility([Beam.of(s) for s in ultrasonic])
        if grid is not None:  # the BEV grid the fisheye views come on: the beams' masks made now, not on a frame
            self.plausibility.prepare(grid)
        self.frozen = FrozenImages()
        self.alpha = brightness_smoothing
        self._brightness: float | None = None

    @property
    def degradations(self) -> list[dict[str, Any]]:
        """Implausible and frozen spans so far, as the report's degradation records."""
        return self.plausibility.open_records() + self.frozen.open_records()

    @property
    def diagnostics(self) -> list[str]:
        return self.plausibility.diagnostics + self.frozen.diagnostics

    def update(self, sample: Frame, obstacles: ObstacleView | None = None) -> Context:
        """`obstacles`: what the fisheyes saw on the previous frame, to check "no echo" readings against."""
        fisheye, front = sample.get("fisheye") or {}, sample.sensor("camera", "front")
        ultrasonic, audio = sample.get("ultrasonic") or {}, sample.get("audio")
        cams = {f"fisheye/{name}": image_health(img) for name, img in fisheye.items()}
        cams["camera/front"] = image_health(front)
        t = sample.stamp_ns
        src = sample.source_stamps
        images = {**{f"fisheye/{n}": img for n, img in fisheye.items()}, "camera/front": front}
        frozen = self.frozen.update(t, images, {k: src.get("front" if k == "camera/front" else k) for k in images})
        fisheye_stamps = [src[k] for k in src if k.startswith("fisheye/")]
        moving = [k for k in src if k.startswith("fisheye/") and k not in frozen]
        implausible = self.plausibility.update(t, ultrasonic, obstacles)
        # (implausible readings arrive on time: they do not count as dropout, which would delay recovery by the
        # window; a ring mostly implausible is unhealthy through StreamHealth.implausible)
        us_valid = [r for r in ultrasonic.values() if r is not None and r.get("status") in ("ok", "no_echo")]
        us_stamps = [src[k] for k in src if k.startswith("ultrasonic/")]
        streams = {
            "fisheye": replace(self.trackers["fisheye"].update(t, len(fisheye_stamps) >= 2,
                                                               max(fisheye_stamps, default=None)),
                               implausible=len(moving) < 2 <= len(fisheye_stamps)),
            "camera": replace(self.trackers["camera"].update(t, front is not None, src.get("front")),
                              implausible="camera/front" in frozen),
            "ultrasonic": replace(self.trackers["ultrasonic"].update(
                t, len(us_valid) >= max(1, len(ultrasonic) // 2), max(us_stamps, default=None)),
                implausible=2 * len(implausible) > max(1, len(ultrasonic))),
            "audio": self.trackers["audio"].update(t, audio is not None, (t if audio is not None else None)),
        }
        level = -120.0
        if audio is not None:
            rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) / 32768.0
            level = 20 * math.log10(max(rms, 1e-6))
        seen = [c.brightness for c in cams.values() if c.present]
        if seen:
            b = float(np.median(seen))
            self._brightness = b if self._brightness is None else (1 - self.alpha) * self._brightness + self.alpha * b
        lighting = lighting_from_brightness(self._brightness) if self._brightness is not None else "unknown"
        speed = abs(float(sample.odometry["vx"])) if sample.odometry else 0.0
        return Context(t, cams, streams, level, speed, lighting,
                       tuple(f"ultrasonic/{n}" for n in implausible) + frozen)
