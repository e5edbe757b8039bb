"""The LiDAR section of a rig file, validated by the plugin itself (the core knows none of its fields):

    plugins:
      lidar:
        roof:                          # sensor name: topic /lidar/roof/points
          frame_id: lidar_roof
          xyz: [1.10, 0.0, 1.95]       # pose of the sensor in base_link, metres / degrees (as the core's sensors)
          rpy_deg: [0.0, 0.0, 0.0]
          beams: 32
          ...

Absent section: no LiDAR on that rig, so drives generated with the core's default rig do not change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Protocol

import numpy as np
from pydantic import Field, RootModel, model_validator

from edge.config import StrictModel, parse_model

NAME = "lidar"  # the modality's name: its rig section and topics
Finite = Annotated[float, Field(allow_inf_nan=False)]
Vec3 = Annotated[list[Finite], Field(min_length=3, max_length=3)]
SensorName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]


class LidarSpec(StrictModel):
    """One spinning LiDAR: its mount, beams, rate and range."""

    frame_id: str = Field(min_length=1)
    xyz: Vec3
    rpy_deg: Vec3 = Field(default_factory=lambda: [0.0, 0.0, 0.0])
    beams: int = Field(ge=1, le=256)
    vfov_deg: Annotated[list[Finite], Field(min_length=2, max_length=2)]  # lowest, highest beam elevation
    azimuth_step_deg: Finite = Field(gt=0.0, le=10.0)
    rate_hz: Finite = Field(gt=0.0, le=100.0)
    min_range: Finite = Field(ge=0.0)
    max_range: Finite = Field(gt=0.0)
    range_noise: Finite = Field(default=0.02, ge=0.0)  # metres, 1 sigma
    dropout: Finite = Field(default=0.02, ge=0.0, lt=1.0)  # share of returns lost

    @model_validator(mode="after")
    def _check(self) -> LidarSpec:
        if not self.vfov_deg[0] < self.vfov_deg[1]:
            raise ValueError(f"vfov_deg {self.vfov_deg} must be [lowest, highest] elevation")
        if not self.min_range < self.max_range:
            raise ValueError(f"min_range {self.min_range} must be below max_range {self.max_range}")
        return self


class LidarSection(RootModel[dict[SensorName, LidarSpec]]):
    """`plugins: lidar:`, sensor name -> its spec."""


class RigLike(Protocol):
    source: str

    def plugin_section(self, name: str) -> dict[str, object]: ...


@dataclass(frozen=True)
class Lidar:
    """One LiDAR as the simulator and the encoder use it: the spec with its mount as a rotation and translation."""

    name: str
    spec: LidarSpec
    rotation: np.ndarray  # (3, 3) sensor -> base_link
    translation: np.ndarray  # (3,) the sensor's origin in base_link

    @property
    def topic(self) -> str:
        return points_topic(self.name)

    def elevations(self) -> np.ndarray:
        """(beams,) beam elevations in radians, evenly spread over the vertical field of view."""
        lo, hi = self.spec.vfov_deg
        return np.radians(np.linspace(lo, hi, self.spec.beams))

    def azimuths(self) -> np.ndarray:
        """(A,) azimuths of one revolution in radians, from -pi."""
        n = max(1, int(round(360.0 / self.spec.azimuth_step_deg)))
        return -math.pi + np.arange(n) * (2 * math.pi / n)

    def to_base(self, points: np.ndarray) -> np.ndarray:
        """(N, 3+) sensor-frame points -> the same in base_link (columns past xyz kept)."""
        out = np.array(points, dtype=np.float32, copy=True)
        out[:, :3] = points[:, :3] @ self.rotation.T.astype(np.float32) + self.translation.astype(np.float32)
        return out


def points_topic(sensor: str) -> str:
    return f"/{NAME}/{sensor}/points"


def rotation_rpy(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """R = Rz(yaw) Ry(pitch) Rx(roll), the ROS convention for fixed-axis roll, pitch, yaw."""
    cr, sr, cp, sp, cy, sy = math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch), math.cos(yaw), \
        math.sin(yaw)
    return np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                     [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                     [-sp, cp * sr, cp * cr]])


def lidars(rig: RigLike) -> tuple[Lidar, ...]:
    """The LiDARs of a rig's `plugins: lidar:` section, validated (ConfigError naming the key), in file order."""
    section = parse_model(rig.plugin_section(NAME), LidarSection, f"{rig.source} (plugins.{NAME})")
    return tuple(Lidar(name, spec, rotation_rpy(*np.radians(spec.rpy_deg)), np.array(spec.xyz, dtype=np.float64))
                 for name, spec in section.root.items())
