"""The vehicle rig: validated calibration YAML -> camera models, ultrasonic sensors, microphone array.

Frames follow REP-103/105: base_link at the rear-axle centre, x forward, y left, z up; metres, degrees in the
file (easier to read and check by eye), radians in code. Each sensor's `xyz` / `rpy_deg` is the pose of its body
frame (x along the lens or the beam axis); camera optical frames are derived as in REP-103.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, TypeVar

import numpy as np
from pydantic import BaseModel, Field, JsonValue, StringConstraints, field_validator, model_validator

from edge.config import StrictModel, load_yaml_model, parse_model
from edge.errors import ConfigError
from edge.sensors.camera_models import (
    FisheyeCamera,
    PinholeCamera,
    fisheye_inversion_problem,
    optical_pose,
    pinhole_inversion_problem,
)

DEFAULT_RIG = Path(__file__).resolve().parents[2] / "calibration" / "default_rig.yaml"

Finite = Annotated[float, Field(allow_inf_nan=False)]
Vec3 = Annotated[list[Finite], Field(min_length=3, max_length=3)]
ModalityName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$")]  # as edge.modalities.interface.NAME
SpecT = TypeVar("SpecT", bound=BaseModel)


class PoseSpec(StrictModel):
    xyz: Vec3
    rpy_deg: Vec3


class ImageSpec(StrictModel):
    width: int = Field(gt=0, le=8192)
    height: int = Field(gt=0, le=8192)


class FisheyeIntrinsics(StrictModel):
    fx: Finite = Field(gt=0)
    fy: Finite = Field(gt=0)
    cx: Finite
    cy: Finite
    k: Annotated[list[Finite], Field(min_length=4, max_length=4)]


class PinholeIntrinsics(StrictModel):
    fx: Finite = Field(gt=0)
    fy: Finite = Field(gt=0)
    cx: Finite
    cy: Finite
    d: Annotated[list[Finite], Field(min_length=5, max_length=5)]


def _check_principal_point(i: FisheyeIntrinsics | PinholeIntrinsics, image: ImageSpec) -> None:
    if not (0 <= i.cx < image.width and 0 <= i.cy < image.height):
        raise ValueError("principal point (cx, cy) lies outside the image")


class FisheyeSpec(StrictModel):
    frame_id: str = Field(min_length=1)
    image: ImageSpec
    rate_hz: Finite = Field(gt=0, le=120)
    fov_deg: Finite = Field(gt=0, le=240)
    intrinsics: FisheyeIntrinsics
    extrinsics: PoseSpec

    @model_validator(mode="after")
    def _check_lens(self) -> "FisheyeSpec":
        _check_principal_point(self.intrinsics, self.image)
        problem = fisheye_inversion_problem(self.intrinsics.k, math.radians(self.fov_deg))
        if problem:
            raise ValueError(problem)
        return self


class PinholeSpec(StrictModel):
    frame_id: str = Field(min_length=1)
    image: ImageSpec
    rate_hz: Finite = Field(gt=0, le=120)
    intrinsics: PinholeIntrinsics
    extrinsics: PoseSpec

    @model_validator(mode="after")
    def _check_lens(self) -> "PinholeSpec":
        _check_principal_point(self.intrinsics, self.image)
        problem = pinhole_inversion_problem(_pinhole("check", self))
        if problem:
            raise ValueError(problem)
        return self


class UltrasonicSensorSpec(StrictModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    xyz: Vec3
    yaw_deg: Finite = Field(ge=-180, le=180)


class UltrasonicSpec(StrictModel):
    rate_hz: Finite = Field(gt=0, le=100)
    beam_width_deg: Finite = Field(gt=0, lt=180)
    min_range: Finite = Field(ge=0)
    max_range: Finite = Field(gt=0, le=20)
    sensors: list[UltrasonicSensorSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> "UltrasonicSpec":
        if self.min_range >= self.max_range:
            raise ValueError("min_range must be below max_range")
        names = [s.name for s in self.sensors]
        if len(set(names)) != len(names):
            raise ValueError(f"sensor names must be unique, got {names}")
        return self


class MicrophoneSpec(StrictModel):
    frame_id: str = Field(min_length=1)
    sample_rate_hz: int = Field(ge=8000, le=192000)
    chunk_ms: Finite = Field(ge=5, le=200)
    positions: list[Vec3] = Field(min_length=1, max_length=64)


class VehicleSpec(StrictModel):
    name: str
    length: Finite = Field(gt=0, le=20)
    width: Finite = Field(gt=0, le=5)
    height: Finite = Field(gt=0, le=5)
    wheelbase: Finite = Field(gt=0, le=10)
    rear_overhang: Finite = Field(ge=0, le=5)


class RigSpec(StrictModel):
    vehicle: VehicleSpec
    fisheye: dict[str, FisheyeSpec] = Field(min_length=1)
    camera: dict[str, PinholeSpec]
    ultrasonic: UltrasonicSpec
    microphones: MicrophoneSpec
    # modality plugins' sensors, one free-form section per plugin (its name -> a mapping it validates itself with
    # its own model, Rig.plugin_spec): the core knows nothing of a LiDAR's fields
    plugins: dict[ModalityName, dict[str, JsonValue]] = Field(default_factory=dict)

    @field_validator("plugins", mode="before")
    @classmethod
    def _empty_plugins(cls, v: object) -> object:
        return {} if v is None else v  # `plugins:` with every entry commented out

    @field_validator("fisheye")
    @classmethod
    def _known_cameras(cls, v: dict[str, FisheyeSpec]) -> dict[str, FisheyeSpec]:
        allowed = {"front", "rear", "left", "right"}
        unknown = set(v) - allowed
        if unknown:
            raise ValueError(f"unknown fisheye camera(s) {sorted(unknown)}; expected a subset of {sorted(allowed)}")
        return v


@dataclass(frozen=True)
class UltrasonicSensor:
    """One ultrasonic transducer: position in base_link, beam axis yaw, beam width and valid range."""

    name: str
    position: np.ndarray  # (3,)
    yaw: float
    beam_width: float
    min_range: float
    max_range: float
    rate_hz: float

    @property
    def frame_id(self) -> str:
        return f"ultrasonic_{self.name}"


@dataclass(frozen=True)
class MicrophoneArray:
    frame_id: str
    sample_rate_hz: int
    chunk_samples: int
    positions: np.ndarray  # (M,3) in base_link

    @property
    def chunk_seconds(self) -> float:
        return self.chunk_samples / self.sample_rate_hz


@dataclass(frozen=True)
class Rig:
    """Everything downstream code needs to know about the vehicle's sensors."""

    source: str
    spec: RigSpec
    fisheye: dict[str, FisheyeCamera]
    cameras: dict[str, PinholeCamera]
    ultrasonic: list[UltrasonicSensor]
    microphones: MicrophoneArray

    @property
    def vehicle(self) -> VehicleSpec:
        return self.spec.vehicle

    def fingerprint(self) -> str:
        """Stable hash of the calibration content (keys caches such as BEV projection tables, and is recorded in
        every generated drive). An empty `plugins` section is left out, so rigs written before it hash as before."""
        exclude = None if self.spec.plugins else {"plugins"}
        return hashlib.sha256(self.spec.model_dump_json(exclude=exclude).encode()).hexdigest()[:16]

    def plugin_section(self, name: str) -> dict[str, JsonValue]:
        """The rig's section for modality plugin `name` (`plugins: {name: ...}`), a copy; empty when absent."""
        return copy.deepcopy(self.spec.plugins.get(name, {}))

    def plugin_spec(self, name: str, model: type[SpecT]) -> SpecT:
        """Plugin `name`'s section validated with its own model; a ConfigError names the rig file and the key
        (`plugins.<name>.<key>`), as the core's sections' errors do."""
        try:
            return parse_model(self.plugin_section(name), model, self.source)
        except ConfigError as exc:
            raise ConfigError(self.source, f"plugins.{name}.{exc.key}".removesuffix(".<root>"), exc.problem) from None

    def footprint(self) -> tuple[float, float, float, float]:
        """Vehicle body extent in base_link: (x_min, x_max, y_min, y_max)."""
        v = self.vehicle
        return (-v.rear_overhang, v.length - v.rear_overhang, -v.width / 2, v.width / 2)


def _camera_fields(name: str, s: FisheyeSpec | PinholeSpec, distortion: list[float]) -> dict:
    """Constructor arguments shared by both camera models."""
    i = s.intrinsics
    return dict(
        name=name,
        frame_id=s.frame_id,
        width=s.image.width,
        height=s.image.height,
        K=np.array([[i.fx, 0.0, i.cx], [0.0, i.fy, i.cy], [0.0, 0.0, 1.0]]),
        D=np.array(distortion, dtype=np.float64),
        T_base_cam=optical_pose(s.extrinsics.xyz, np.radians(s.extrinsics.rpy_deg)),
        rate_hz=s.rate_hz,
    )


def _fisheye(name: str, s: FisheyeSpec) -> FisheyeCamera:
    return FisheyeCamera(**_camera_fields(name, s, s.intrinsics.k), fov=math.radians(s.fov_deg))


def _pinhole(name: str, s: PinholeSpec) -> PinholeCamera:
    return PinholeCamera(**_camera_fields(name, s, s.intrinsics.d))


def rig_from_spec(spec: RigSpec, source: str = "<memory>") -> Rig:
    us = spec.ultrasonic
    mic = spec.microphones
    return Rig(
        source=source,
        spec=spec,
        fisheye={n: _fisheye(n, s) for n, s in spec.fisheye.items()},
        cameras={n: _pinhole(n, s) for n, s in spec.camera.items()},
        ultrasonic=[
            UltrasonicSensor(
                name=s.name,
                position=np.array(s.xyz, dtype=np.float64),
                yaw=math.radians(s.yaw_deg),
                beam_width=math.radians(us.beam_width_deg),
                min_range=us.min_range,
                max_range=us.max_range,
                rate_hz=us.rate_hz,
            )
            for s in us.sensors
        ],
        microphones=MicrophoneArray(
            frame_id=mic.frame_id,
            sample_rate_hz=mic.sample_rate_hz,
            chunk_samples=int(round(mic.sample_rate_hz * mic.chunk_ms / 1000.0)),
            positions=np.array(mic.positions, dtype=np.float64),
        ),
    )


def load_rig(path: str | Path | None = None) -> Rig:
    """Load and validate a rig file (the default rig when `path` is None)."""
    path = Path(path) if path is not None else DEFAULT_RIG
    return rig_from_spec(load_yaml_model(path, RigSpec), source=str(path))
