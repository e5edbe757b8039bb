"""The rig YAML in and out: cameras of a rig as `CameraCalibration`, calibrations written into a rig, and every
rig written only after it passes the same validator `load_rig` applies (nothing is written otherwise).

Cameras are named KIND/NAME: fisheye/front, fisheye/left, camera/front (the rig's `fisheye` and `camera` sections).
Poses: the rig stores each sensor's body frame (x along the lens) as xyz + roll/pitch/yaw in degrees; camera
calibration tools work in the optical frame (z along the lens); `optical_pose` and `body_xyz_rpy` convert.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edge.calibration.errors import CalibrationError, FormatError, InvalidOutputError
from edge.calibration.formats import CameraCalibration, dump_yaml, write_text_atomic
from edge.config import parse_model
from edge.errors import ConfigError
from edge.sensors.camera_models import R_BODY_OPTICAL, optical_pose
from edge.sensors.rig import DEFAULT_RIG, Rig, RigSpec, rig_from_spec

KINDS = {"fisheye": "equidistant", "camera": "plumb_bob"}
_TOPIC_RE = re.compile(r"^/(fisheye|camera)/([a-z][a-z0-9_]*)/")


def parse_ref(text: str) -> tuple[str, str]:
    """'fisheye/front' -> ('fisheye', 'front'); also accepts 'fisheye_front' (ROS camera_name style)."""
    m = re.match(r"^(fisheye|camera)[/_]([a-z][a-z0-9_]*)$", (text or "").strip())
    if not m:
        raise CalibrationError(f"camera '{text}': name it KIND/NAME, e.g. fisheye/front or camera/front")
    return m.group(1), m.group(2)


def ref_from_topic(topic: str | None) -> tuple[str, str] | None:
    """The rig camera a ROS image topic belongs to under the project's topic contract, if any."""
    m = _TOPIC_RE.match(topic or "")
    return (m.group(1), m.group(2)) if m else None


def load_rig_data(path: str | Path | None) -> tuple[dict[str, Any], Path]:
    """The raw rig YAML (validated once, so later errors are about our changes)."""
    path = Path(path) if path is not None else DEFAULT_RIG
    from edge.sensors.rig import load_rig

    load_rig(path)  # raises ConfigError naming the file and key when the base rig itself is bad
    return yaml.safe_load(path.read_text(encoding="utf-8")), path


def _section(data: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    sec = (data.get(kind) or {}).get(name)
    if sec is None:
        have = [f"{k}/{n}" for k in KINDS for n in (data.get(k) or {})]
        raise CalibrationError(f"the rig has no camera {kind}/{name} (it has {', '.join(have)}); add it to the rig "
                               "YAML first (frame_id, rate, pose), then import its calibration")
    return sec


def set_intrinsics(data: dict[str, Any], kind: str, name: str, cal: CameraCalibration) -> None:
    """Write a calibration's intrinsics into the rig's camera `kind/name` (model must fit the section)."""
    sec = _section(data, kind, name)
    if KINDS[kind] != cal.model:
        raise CalibrationError(f"{kind}/{name} takes the {KINDS[kind]} model, but the calibration is {cal.model}: "
                               f"import it as {'camera' if kind == 'fisheye' else 'fisheye'}/NAME or recalibrate")
    if abs(cal.K[0, 1]) > 1e-9:
        raise CalibrationError(f"{kind}/{name}: the camera matrix has skew {cal.K[0, 1]!r}; the rig has no skew term")
    sec["image"] = {"width": int(cal.width), "height": int(cal.height)}
    i = {"fx": float(cal.K[0, 0]), "fy": float(cal.K[1, 1]), "cx": float(cal.K[0, 2]), "cy": float(cal.K[1, 2])}
    i["k" if kind == "fisheye" else "d"] = [float(x) for x in np.asarray(cal.D).reshape(-1)]
    sec["intrinsics"] = i


def body_xyz_rpy(T_base_optical: np.ndarray) -> tuple[list[float], list[float]]:
    """base_link <- optical pose -> the rig's body-frame xyz and roll/pitch/yaw in degrees."""
    R = T_base_optical[:3, :3] @ R_BODY_OPTICAL.T
    pitch = math.asin(float(np.clip(-R[2, 0], -1.0, 1.0)))
    roll = math.atan2(R[2, 1], R[2, 2])
    yaw = math.atan2(R[1, 0], R[0, 0])
    return [float(x) for x in T_base_optical[:3, 3]], [math.degrees(roll), math.degrees(pitch), math.degrees(yaw)]


def set_extrinsics(data: dict[str, Any], kind: str, name: str, T_base_optical: np.ndarray) -> None:
    xyz, rpy = body_xyz_rpy(T_base_optical)
    _section(data, kind, name)["extrinsics"] = {"xyz": xyz, "rpy_deg": rpy}


def camera_pose(data: dict[str, Any], kind: str, name: str) -> np.ndarray:
    ex = _section(data, kind, name)["extrinsics"]
    return optical_pose(ex["xyz"], np.radians(ex["rpy_deg"]))


def validate(data: dict[str, Any], out: str | Path) -> Rig:
    """The rig validator on the result; InvalidOutputError (nothing written) when it fails."""
    try:
        spec = parse_model(copy.deepcopy(data), RigSpec, out)
    except ConfigError as exc:
        raise InvalidOutputError(f"the result would fail the rig validator ({exc}); nothing was written: check the "
                                 "calibration (principal point inside the image, monotonic fisheye distortion)") from None
    return rig_from_spec(spec, str(out))


def write_rig(data: dict[str, Any], out: str | Path) -> Rig:
    """Validate, then write the rig YAML (with a header saying where it came from)."""
    rig = validate(data, out)
    header = "# Rig written by `edge calibrate`; frames and units as in calibration/default_rig.yaml.\n"
    write_text_atomic(Path(out), header + dump_yaml(data))
    return rig


def rig_camera(data: dict[str, Any], kind: str, name: str) -> CameraCalibration:
    """A rig camera as a calibration (camera_info / camchain export)."""
    sec = _section(data, kind, name)
    i = sec["intrinsics"]
    K = np.array([[float(i["fx"]), 0.0, float(i["cx"])], [0.0, float(i["fy"]), float(i["cy"])], [0.0, 0.0, 1.0]])
    D = np.asarray(i["k"] if kind == "fisheye" else i["d"], dtype=np.float64)
    topic = f"/{kind}/{name}/image_raw"
    return CameraCalibration(f"{kind}_{name}", int(sec["image"]["width"]), int(sec["image"]["height"]), KINDS[kind],
                             K, D, np.eye(3), None, topic)


def all_cameras(data: dict[str, Any]) -> list[tuple[str, str]]:
    return [(k, n) for k in KINDS for n in (data.get(k) or {})]


def ref_for(cal: CameraCalibration, given: str | None) -> tuple[str, str]:
    """Which rig camera a calibration file is for: given explicitly, or from its topic / camera_name."""
    if given:
        return parse_ref(given)
    ref = ref_from_topic(cal.topic)
    if ref:
        return ref
    try:
        return parse_ref(cal.name)
    except CalibrationError:
        raise FormatError(f"cannot tell which rig camera '{cal.name}' is; pass --as fisheye/NAME or camera/NAME") from None
