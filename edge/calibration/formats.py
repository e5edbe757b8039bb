"""Calibration files users already have: ROS camera_info YAML (camera_calibration / camera_calibration_parsers)
and Kalibr camchain YAML, read into and written from one neutral `CameraCalibration`.

Names: ROS writes the Kannala-Brandt fisheye model as "equidistant" (older tools: "fisheye"), Kalibr as
camera_model "pinhole" + distortion_model "equidistant" (pinhole-equi); plumb_bob is Kalibr's "radtan", which
has four coefficients (k1, k2, p1, p2: k3 = 0). Floats are written with Python's repr, so a file read back gives
the same numbers bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edge.calibration.errors import FormatError, UnknownModelError
from edge.calibration.intrinsics import normalize_model

N_COEFFS = {"equidistant": 4, "plumb_bob": 5}


@dataclass
class CameraCalibration:
    """Intrinsics of one camera, plus what the file said about where it sits (Kalibr chain, ROS topic)."""

    name: str
    width: int
    height: int
    model: str  # "equidistant" | "plumb_bob"
    K: np.ndarray  # (3, 3)
    D: np.ndarray  # (4,) or (5,)
    R: np.ndarray | None = None  # rectification (3, 3); identity for a monocular camera
    P: np.ndarray | None = None  # projection (3, 4)
    topic: str | None = None
    T_cn_cnm1: np.ndarray | None = None  # Kalibr: this camera <- previous camera (4, 4)

    def projection(self) -> np.ndarray:
        return self.P if self.P is not None else np.hstack([self.K, np.zeros((3, 1))])


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FormatError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise FormatError(f"{path}: invalid YAML{where}") from None
    if not isinstance(data, dict):
        raise FormatError(f"{path}: expected a mapping at the top level")
    return data


def _matrix(path: Path, data: dict[str, Any], key: str, rows: int, cols: int) -> np.ndarray:
    m = data.get(key)
    if not isinstance(m, dict) or "data" not in m:
        raise FormatError(f"{path}: key '{key}': missing or not a {{rows, cols, data}} matrix")
    try:
        arr = np.asarray(m["data"], dtype=np.float64)
    except (TypeError, ValueError):
        raise FormatError(f"{path}: key '{key}.data': not a list of numbers") from None
    if arr.size != rows * cols or not np.isfinite(arr).all():
        raise FormatError(f"{path}: key '{key}.data': expected {rows * cols} finite numbers, got {arr.size}")
    return arr.reshape(rows, cols)


def _coefficients(path: Path, key: str, model: str, values: Any) -> np.ndarray:
    try:
        d = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise FormatError(f"{path}: key '{key}': not a list of numbers") from None
    n = N_COEFFS[model]
    if model == "plumb_bob" and len(d) == 4:  # Kalibr radtan / some ROS files: k3 absent means 0
        d = np.concatenate([d, [0.0]])
    if len(d) > n and np.all(d[n:] == 0):  # 8-coefficient arrays padded with zeros
        d = d[:n]
    if len(d) != n:
        raise FormatError(f"{path}: key '{key}': {model} needs {n} coefficients, got {len(d)}")
    return d


def read_camera_info(path: str | Path) -> CameraCalibration:
    """A ROS camera_info YAML (as camera_calibration writes it)."""
    path = Path(path)
    data = _read_yaml(path)
    for key in ("image_width", "image_height", "distortion_model"):
        if key not in data:
            raise FormatError(f"{path}: key '{key}': missing value")
    try:
        model = normalize_model(str(data["distortion_model"]))
    except UnknownModelError as exc:
        raise UnknownModelError(f"{path}: key 'distortion_model': {exc}") from None
    K = _matrix(path, data, "camera_matrix", 3, 3)
    dist = data.get("distortion_coefficients")
    if not isinstance(dist, dict) or "data" not in dist:
        raise FormatError(f"{path}: key 'distortion_coefficients': missing or not a {{rows, cols, data}} matrix")
    D = _coefficients(path, "distortion_coefficients.data", model, dist["data"])
    R = _matrix(path, data, "rectification_matrix", 3, 3) if "rectification_matrix" in data else np.eye(3)
    P = _matrix(path, data, "projection_matrix", 3, 4) if "projection_matrix" in data else None
    try:
        w, h = int(data["image_width"]), int(data["image_height"])
    except (TypeError, ValueError):
        raise FormatError(f"{path}: key 'image_width' / 'image_height': not integers") from None
    return CameraCalibration(str(data.get("camera_name", path.stem)), w, h, model, K, D, R, P)


def _floats(a: np.ndarray) -> list[float]:
    return [float(x) for x in np.asarray(a, dtype=np.float64).reshape(-1)]


def camera_info_dict(cal: CameraCalibration) -> dict[str, Any]:
    """The camera_info YAML content, keys in the order camera_calibration writes them."""
    D = np.asarray(cal.D, dtype=np.float64)
    return {
        "image_width": int(cal.width),
        "image_height": int(cal.height),
        "camera_name": cal.name,
        "camera_matrix": {"rows": 3, "cols": 3, "data": _floats(cal.K)},
        "distortion_model": cal.model,
        "distortion_coefficients": {"rows": 1, "cols": int(D.size), "data": _floats(D)},
        "rectification_matrix": {"rows": 3, "cols": 3, "data": _floats(cal.R if cal.R is not None else np.eye(3))},
        "projection_matrix": {"rows": 3, "cols": 4, "data": _floats(cal.projection())},
    }


def dump_yaml(data: Any) -> str:
    """YAML with short lists in flow style (as ROS writes matrices) and keys in insertion order."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=1000)


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temporary file, so a failure never leaves half a calibration behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_camera_info(cal: CameraCalibration, path: str | Path) -> None:
    write_text_atomic(Path(path), dump_yaml(camera_info_dict(cal)))


# ---------------------------------------------------------------- Kalibr camchain

def read_camchain(path: str | Path) -> list[CameraCalibration]:
    """cam0, cam1, ... of a Kalibr camchain YAML, in order, each cam n>0 with its T_cn_cnm1 when given."""
    path = Path(path)
    data = _read_yaml(path)
    keys = sorted((k for k in data if isinstance(k, str) and k.startswith("cam") and k[3:].isdigit()),
                  key=lambda k: int(k[3:]))
    if not keys or keys[0] != "cam0":
        raise FormatError(f"{path}: no 'cam0' entry; a Kalibr camchain lists cam0, cam1, ...")
    out: list[CameraCalibration] = []
    for i, key in enumerate(keys):
        if key != f"cam{i}":
            raise FormatError(f"{path}: cameras must be numbered cam0..cam{len(keys) - 1} without gaps ('{key}')")
        c = data[key]
        if not isinstance(c, dict):
            raise FormatError(f"{path}: key '{key}': expected a mapping")
        for field in ("camera_model", "intrinsics", "distortion_model", "distortion_coeffs", "resolution"):
            if field not in c:
                raise FormatError(f"{path}: key '{key}.{field}': missing value")
        if str(c["camera_model"]) != "pinhole":
            raise UnknownModelError(f"{path}: key '{key}.camera_model': '{c['camera_model']}' is not supported; "
                                    "use Kalibr's pinhole-equi or pinhole-radtan (omni / ds / eucm are not)")
        dm = str(c["distortion_model"]).lower()
        if dm not in ("equidistant", "radtan"):
            raise UnknownModelError(f"{path}: key '{key}.distortion_model': '{dm}' is not supported "
                                    "(equidistant or radtan)")
        model = normalize_model(dm)
        try:
            fu, fv, pu, pv = (float(x) for x in c["intrinsics"])
            w, h = (int(x) for x in c["resolution"])
        except (TypeError, ValueError):
            raise FormatError(f"{path}: key '{key}.intrinsics' / '{key}.resolution': expected [fu, fv, pu, pv] and "
                              "[width, height]") from None
        K = np.array([[fu, 0.0, pu], [0.0, fv, pv], [0.0, 0.0, 1.0]])
        D = _coefficients(path, f"{key}.distortion_coeffs", model, c["distortion_coeffs"])
        T = None
        if "T_cn_cnm1" in c:
            try:
                T = np.asarray(c["T_cn_cnm1"], dtype=np.float64).reshape(4, 4)
            except (TypeError, ValueError):
                raise FormatError(f"{path}: key '{key}.T_cn_cnm1': expected a 4x4 matrix") from None
            if not np.allclose(T[3], [0, 0, 0, 1]) or not np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-6):
                raise FormatError(f"{path}: key '{key}.T_cn_cnm1': not a rigid transform")
        elif i > 0:
            raise FormatError(f"{path}: key '{key}.T_cn_cnm1': missing; each camera after cam0 needs its pose "
                              "relative to the previous one")
        out.append(CameraCalibration(str(c.get("rostopic", key)), w, h, model, K, D, None, None,
                                     c.get("rostopic"), T))
    return out


def camchain_dict(cams: list[tuple[CameraCalibration, np.ndarray]]) -> dict[str, Any]:
    """Kalibr camchain from (calibration, T_base_cam optical) pairs; T_cn_cnm1 chains each to the one before."""
    out: dict[str, Any] = {}
    for i, (cal, T_base) in enumerate(cams):
        D = np.asarray(cal.D, dtype=np.float64)
        if cal.model == "plumb_bob":
            if D.size == 5 and D[4] != 0.0:
                raise FormatError(f"camera '{cal.name}': Kalibr radtan has no k3, and k3 = {D[4]!r} here; export it "
                                  "as camera_info instead")
            D = D[:4]
        entry: dict[str, Any] = {}
        if i > 0:
            T = np.linalg.inv(T_base) @ cams[i - 1][1]
            entry["T_cn_cnm1"] = [_floats(row) for row in T]
        entry.update({
            "camera_model": "pinhole",
            "intrinsics": [float(cal.K[0, 0]), float(cal.K[1, 1]), float(cal.K[0, 2]), float(cal.K[1, 2])],
            "distortion_model": "equidistant" if cal.model == "equidistant" else "radtan",
            "distortion_coeffs": _floats(D),
            "resolution": [int(cal.width), int(cal.height)],
            "rostopic": cal.topic or f"/{cal.name}/image_raw",
        })
        if i > 0:
            entry["cam_overlaps"] = [i - 1]
        out[f"cam{i}"] = entry
    return out
