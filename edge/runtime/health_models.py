"""The built-in modalities' health models (edge.runtime.health), named by their plugins (edge.modalities.builtin).

- surround images (fisheye): delivering while at least two cameras send; implausible when fewer than two of those
  still move (frozen: the byte-identical image frame after frame); each image's brightness, noise and glare.
- one image (the front camera): delivering while it sends; implausible while frozen; its image health.
- range ring (ultrasonic): delivering while at least half the ring reads (an echo or "no echo"); a reading stuck
  or contradicted by the witness BEV is implausible (edge.runtime.plausibility), the ring while most of it is.
- presence (audio, and any plugin that names no model): delivering while its entry holds data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from edge.kernels.grid import BevGrid
from edge.modalities.interface import ModalityPlugin
from edge.runtime.context import CameraHealth, image_health
from edge.runtime.health import HealthSetup, HealthUpdate, Observation
from edge.runtime.plausibility import Beam, FrozenImages, ObstacleView, RangePlausibility


def _sensors(entry: object) -> dict[str, Any]:
    """A per-sensor entry as a dict (None or a missing modality: no sensor)."""
    return entry if isinstance(entry, dict) else {}


class _Images:
    """What every image model shares: per-image health and frozen-image detection, keyed "<name>/<sensor>"."""

    def __init__(self, plugin: ModalityPlugin) -> None:
        self.plugin = plugin
        self.frozen = FrozenImages()

    @property
    def diagnostics(self) -> list[str]:
        return self.frozen.diagnostics

    def degradations(self) -> list[dict[str, Any]]:
        return self.frozen.open_records()

    def _look(self, stamp_ns: int, images: dict[str, np.ndarray | None],
              source_stamps: Mapping[str, int]) -> tuple[dict[str, CameraHealth], tuple[str, ...]]:
        """(image key -> its health, the frozen image keys) for these sensors' images."""
        keyed = {f"{self.plugin.name}/{s}": img for s, img in images.items()}
        stamps = {f"{self.plugin.name}/{s}": source_stamps.get(self.plugin.key(s)) for s in images}
        return {k: image_health(img) for k, img in keyed.items()}, self.frozen.update(stamp_ns, keyed, stamps)


class SurroundImages(_Images):
    """Several cameras seeing around the vehicle: the stream delivers while `min_cameras` of them send."""

    def __init__(self, plugin: ModalityPlugin, min_cameras: int = 2) -> None:
        super().__init__(plugin)
        self.min_cameras = min_cameras

    def update(self, stamp_ns: int, entry: object, source_stamps: Mapping[str, int],
               witness: ObstacleView | None) -> HealthUpdate:
        images = _sensors(entry)
        cams, frozen = self._look(stamp_ns, images, source_stamps)
        sent = {f"{self.plugin.name}/{s}": source_stamps[k] for s in images
                if (k := self.plugin.key(s)) in source_stamps}
        moving = [k for k in sent if k not in frozen]
        seen = Observation(len(sent) >= self.min_cameras, max(sent.values(), default=None),
                           len(moving) < self.min_cameras <= len(sent))
        return HealthUpdate({s: seen for s in self.plugin.health_streams}, cams, frozen)


class OneImage(_Images):
    """One camera (`sensor`): the stream delivers while its image is there; its image health is always given."""

    def __init__(self, plugin: ModalityPlugin, sensor: str) -> None:
        super().__init__(plugin)
        self.sensor = sensor

    def update(self, stamp_ns: int, entry: object, source_stamps: Mapping[str, int],
               witness: ObstacleView | None) -> HealthUpdate:
        image = _sensors(entry).get(self.sensor)
        cams, frozen = self._look(stamp_ns, {self.sensor: image}, source_stamps)
        seen = Observation(image is not None, source_stamps.get(self.plugin.key(self.sensor)), bool(frozen))
        return HealthUpdate({s: seen for s in self.plugin.health_streams}, cams, frozen)


class RangeRing:
    """Range sensors around the vehicle, each reading checked for plausibility against its beam and the witness."""

    def __init__(self, plugin: ModalityPlugin, beams: list[Beam], grid: BevGrid | None) -> None:
        self.plugin = plugin
        self.plausibility = RangePlausibility(beams)
        if grid is not None:  # the grid the witnesses come on: the beams' masks made now, not on a frame
            self.plausibility.prepare(grid)

    @property
    def diagnostics(self) -> list[str]:
        return self.plausibility.diagnostics

    def degradations(self) -> list[dict[str, Any]]:
        return self.plausibility.open_records()

    def update(self, stamp_ns: int, entry: object, source_stamps: Mapping[str, int],
               witness: ObstacleView | None) -> HealthUpdate:
        readings = _sensors(entry)
        implausible = self.plausibility.update(stamp_ns, readings, witness)
        # (implausible readings arrive on time: they do not count as dropout, which would delay recovery by the
        # window; a ring mostly implausible is unhealthy through Observation.implausible)
        valid = [r for r in readings.values() if r is not None and r.get("status") in ("ok", "no_echo")]
        stamps = [source_stamps[k] for s in readings if (k := self.plugin.key(s)) in source_stamps]
        seen = Observation(len(valid) >= max(1, len(readings) // 2), max(stamps, default=None),
                           2 * len(implausible) > max(1, len(readings)))
        return HealthUpdate({s: seen for s in self.plugin.health_streams}, {},
                            tuple(self.plugin.key(n) for n in implausible))


class Presence:
    """Delivering while the entry holds data (a per-sensor entry: any sensor's); stamped by the frame. A sound
    array's entry (rows, samples) of 16-bit PCM also gives the level."""

    def __init__(self, plugin: ModalityPlugin, level: bool = False) -> None:
        self.plugin = plugin
        self.level = level
        self.diagnostics: list[str] = []

    def degradations(self) -> list[dict[str, Any]]:
        return []

    def update(self, stamp_ns: int, entry: object, source_stamps: Mapping[str, int],
               witness: ObstacleView | None) -> HealthUpdate:
        there = any(v is not None for v in entry.values()) if isinstance(entry, dict) else entry is not None
        level = None
        if self.level and isinstance(entry, np.ndarray):
            rms = float(np.sqrt(np.mean(entry.astype(np.float64) ** 2))) / 32768.0
            level = 20 * math.log10(max(rms, 1e-6))
        seen = Observation(there, stamp_ns if there else None)
        return HealthUpdate({s: seen for s in self.plugin.health_streams}, level_db=level)


# ------------------------------------------------------------------ factories the plugins name
def fisheye(setup: HealthSetup) -> SurroundImages:
    return SurroundImages(setup.plugin, min_cameras=2)


def camera(setup: HealthSetup) -> OneImage:
    return OneImage(setup.plugin, sensor="front")  # the camera the encoder reads


def ultrasonic(setup: HealthSetup) -> RangeRing:
    beams = [Beam.of(s) for s in setup.rig.ultrasonic] if setup.rig is not None else []
    return RangeRing(setup.plugin, beams, setup.grid)


def audio(setup: HealthSetup) -> Presence:
    return Presence(setup.plugin, level=True)


def presence(setup: HealthSetup) -> Presence:
    return Presence(setup.plugin)
