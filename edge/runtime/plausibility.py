"""Plausibility of range readings: a sensor can deliver on time and still lie.

Two checks per ultrasonic sensor, on its own readings and on what another modality saw:

- stuck: the identical value (NaN, or a finite echo strictly inside the sensor's range) for `stuck_frames`
  readings in a row; real echoes carry noise. A constant +inf ("no echo") is the normal state in open space, so
  it is judged only by the second check.
- contradicted: "no echo" while the previous frame's fisheye-only BEV (an `ObstacleView`) has at least
  `min_cells` obstacle cells inside the sensor's beam and range, for `confirm` readings in a row.

Cameras: `FrozenImages` flags a camera that delivers the byte-identical image for `frames` frames in a row (a hung
driver re-sending its last buffer; real images carry sensor noise).

A sensor judged implausible stays so until its value changes (stuck) or `recover` readings in a row are not
contradicted by a BEV; nothing here reads ground truth. Each implausible span becomes a degradation record
(kind "implausible"); the first span of each sensor also a diagnostic line.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.drives.sync import Degradation  # the report's degradation record, one shape for every kind
from edge.kernels.grid import BevGrid

OBSTACLE_CLASSES = (1, 2, 3)  # BEV_CLASSES static, vehicle, pedestrian_cyclist


@dataclass(frozen=True)
class ObstacleView:
    """Obstacle cells one modality saw on a BEV grid (kernel layout: i along x, j along y) at `stamp_ns`."""

    obstacle: np.ndarray  # (nx, ny) bool
    grid: BevGrid
    stamp_ns: int

    @classmethod
    def from_probs(cls, probs: np.ndarray, grid: BevGrid, stamp_ns: int) -> ObstacleView:
        """From a (K, nx, ny) class posterior (BEV_CLASSES order)."""
        return cls(np.isin(probs.argmax(0), OBSTACLE_CLASSES), grid, stamp_ns)


@dataclass(frozen=True)
class Beam:
    """Where a range sensor looks: position (x, y) in base_link, axis yaw, full beam width, valid range (m, rad)."""

    name: str
    x: float
    y: float
    yaw: float
    width: float
    min_range: float
    max_range: float

    @classmethod
    def of(cls, sensor: Any) -> Beam:
        """From an edge.sensors.rig.UltrasonicSensor."""
        return cls(sensor.name, float(sensor.position[0]), float(sensor.position[1]), float(sensor.yaw),
                   float(sensor.beam_width), float(sensor.min_range), float(sensor.max_range))

    def mask(self, grid: BevGrid) -> np.ndarray:
        """(nx, ny) bool: cells whose centre lies within half the beam width of the axis and 0.9 x max_range
        (the beam's edges and far end are where a true "no echo" and a BEV blob legitimately overlap)."""
        r = grid.resolution
        xs = grid.x_min + (np.arange(round((grid.x_max - grid.x_min) / r)) + 0.5) * r
        ys = grid.y_min + (np.arange(round((grid.y_max - grid.y_min) / r)) + 0.5) * r
        dx, dy = xs[:, None] - self.x, ys[None, :] - self.y
        dist = np.hypot(dx, dy)
        off = np.abs(np.angle(np.exp(1j * (np.arctan2(dy, dx) - self.yaw))))
        return (dist >= max(self.min_range, r)) & (dist <= 0.9 * self.max_range) & (off <= self.width / 4)


@dataclass
class _Sensor:
    last_stamp: int | None = None
    last_value: float | None = None
    same: int = 0
    contradicted: int = 0
    clear: int = 0
    reason: str | None = None  # why it is implausible now; None when plausible
    stuck: bool = False  # implausible for a stuck value (else for a contradicted "no echo")
    first_ns: int = 0
    last_ns: int = 0
    frames: int = 0
    reported: bool = False


@dataclass
class RangePlausibility:
    """Feed each frame's readings (and the previous frame's ObstacleView); `update` returns the implausible ones."""

    beams: Sequence[Beam] = ()
    stuck_frames: int = 30
    confirm: int = 2
    recover: int = 5
    min_cells: int = 3
    diagnostics: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)  # closed spans
    _state: dict[str, _Sensor] = field(default_factory=dict)
    _masks: dict[tuple[BevGrid, str], np.ndarray] = field(default_factory=dict)

    def update(self, stamp_ns: int, readings: dict[str, dict[str, Any] | None],
               view: ObstacleView | None = None) -> tuple[str, ...]:
        beams = {b.name: b for b in self.beams}
        for name, r in readings.items():
            if r is None:
                continue
            s = self._state.setdefault(name, _Sensor())
            stamp = r.get("stamp_ns")
            if stamp is not None and stamp == s.last_stamp:  # the same message serving another frame
                self._extend(s, stamp_ns)
                continue
            s.last_stamp = stamp
            value = float(r["range"])
            last = s.last_value
            same = last is not None and (value == last or (math.isnan(value) and math.isnan(last)))
            s.same = s.same + 1 if same else 1
            s.last_value = value
            beam = beams.get(name)
            inside = math.isnan(value) or (math.isfinite(value) and (
                beam is None or beam.min_range < value < beam.max_range))
            stuck = inside and s.same >= self.stuck_frames
            if view is not None and beam is not None:
                seen = int(view.obstacle[self._mask(beam, view.grid)].sum()) >= self.min_cells
                if value == math.inf and seen:
                    s.contradicted, s.clear = s.contradicted + 1, 0
                else:
                    s.contradicted, s.clear = 0, s.clear + 1
            if stuck:
                self._flag(name, s, stamp_ns, f"the identical reading {value} for {s.same} readings", True)
            elif s.contradicted >= self.confirm:
                self._flag(name, s, stamp_ns, "no echo while the fisheye BEV sees an obstacle in its beam", False)
            elif s.reason is not None and (not same if s.stuck else value != math.inf or s.clear >= self.recover):
                self._close(name, s)
            else:
                self._extend(s, stamp_ns)
        return tuple(sorted(n for n, s in self._state.items() if s.reason is not None))

    def open_records(self) -> list[dict[str, Any]]:
        """Closed spans and those still open (the drive ended inside them)."""
        return self.records + [self._record(n, s) for n, s in self._state.items() if s.reason is not None]

    def prepare(self, grid: BevGrid) -> None:
        """Compute every beam's mask on `grid` now: lazily, the first frame with a fisheye view paid for all 12
        (~16 ms on this CPU), and that one frame's overhead set the tail every plan was predicted with until ten
        more were measured (issue 16: the 40 ms budget's first plan left at 0.6 s, predicted 62 ms)."""
        for beam in self.beams:
            self._mask(beam, grid)

    def _mask(self, beam: Beam, grid: BevGrid) -> np.ndarray:
        key = (grid, beam.name)
        if key not in self._masks:
            self._masks[key] = beam.mask(grid)
        return self._masks[key]

    def _flag(self, name: str, s: _Sensor, stamp_ns: int, reason: str, stuck: bool) -> None:
        if s.reason is None:
            s.reason, s.stuck, s.first_ns, s.last_ns, s.frames = reason, stuck, stamp_ns, stamp_ns, 1
            if not s.reported:
                s.reported = True
                self.diagnostics.append(f"ultrasonic/{name}: implausible ({reason}) at {stamp_ns} ns; its readings "
                                        f"are ignored until they are plausible again (every span is in the report)")
        else:
            self._extend(s, stamp_ns)

    @staticmethod
    def _extend(s: _Sensor, stamp_ns: int) -> None:
        if s.reason is not None and stamp_ns > s.last_ns:
            s.last_ns, s.frames = stamp_ns, s.frames + 1

    def _close(self, name: str, s: _Sensor) -> None:
        self.records.append(self._record(name, s))
        s.reason, s.contradicted = None, 0

    @staticmethod
    def _record(name: str, s: _Sensor) -> dict[str, Any]:
        return Degradation("implausible", f"ultrasonic/{name}", s.frames, s.first_ns, s.last_ns,
                           f"{s.reason}; readings ignored").as_dict()


@dataclass
class _Frozen:
    stamp: int | None = None
    crc: int | None = None
    same: int = 0
    frozen: bool = False
    first_ns: int = 0
    last_ns: int = 0
    frames: int = 0
    reported: bool = False


@dataclass
class FrozenImages:
    """Feed each frame's images (key -> image, key -> source stamp); `update` returns the frozen cameras' keys."""

    frames: int = 5
    diagnostics: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)  # closed spans
    _state: dict[str, _Frozen] = field(default_factory=dict)

    def update(self, stamp_ns: int, images: dict[str, np.ndarray | None],
               stamps: dict[str, int | None]) -> tuple[str, ...]:
        for key, img in images.items():
            if img is None:
                continue
            s = self._state.setdefault(key, _Frozen())
            if stamps.get(key) is not None and stamps.get(key) == s.stamp:  # one message serving two frames
                continue
            s.stamp = stamps.get(key)
            crc = zlib.crc32(np.ascontiguousarray(img).data)
            s.same = s.same + 1 if crc == s.crc else 1
            s.crc = crc
            if s.same >= self.frames:
                if not s.frozen:
                    s.frozen, s.first_ns, s.frames = True, stamp_ns, 0
                    if not s.reported:
                        s.reported = True
                        self.diagnostics.append(f"{key}: frozen (the identical image for {s.same} frames) at "
                                                f"{stamp_ns} ns; ignored until it changes (every span is in the report)")
                s.last_ns, s.frames = stamp_ns, s.frames + 1
            elif s.frozen:
                s.frozen = False
                self.records.append(self._record(key, s))
        return tuple(sorted(k for k, s in self._state.items() if s.frozen))

    def open_records(self) -> list[dict[str, Any]]:
        """Closed spans and those still open (the drive ended inside them)."""
        return self.records + [self._record(k, s) for k, s in self._state.items() if s.frozen]

    @staticmethod
    def _record(key: str, s: _Frozen) -> dict[str, Any]:
        return Degradation("frozen", key, s.frames, s.first_ns, s.last_ns,
                           "the identical image frame after frame; ignored").as_dict()
