"""Camera poses in base_link from views of boards on the ground.

A targets file lists shots: a board, its pose in base_link where it was measured (`pose`), and the image each
camera took of it. A camera that sees boards of known pose gets its pose from one PnP over all their corners
(expressed in base_link). A shot without a pose, seen by two cameras, chains them: its pose is estimated from the
camera already placed, and its corners then place the other camera (the way surround fisheyes with little
overlap are calibrated against one another). The rig's current extrinsics serve only to choose between the two
corner orders of a board that looks the same turned by 180 degrees.

Targets file (paths relative to it):
    board: {cols: 7, rows: 5, square: 0.20}          # inner corners; a shot may override it
    shots:
      - name: front
        pose: {xyz: [5.2, -0.6, 0.0], rpy_deg: [180, 0, 0]}   # board frame in base_link (printed side up)
        images: {fisheye/front: shots/front_front.png}
      - name: front_left                                # no pose: chains fisheye/left to fisheye/front
        images: {fisheye/front: shots/fl_front.png, fisheye/left: shots/fl_left.png}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.calibration.boards import Board, Detection, detect
from edge.calibration.errors import CalibrationError, FormatError
from edge.calibration.formats import _read_yaml
from edge.calibration.rigio import parse_ref
from edge.sensors.camera_models import CameraBase, FisheyeCamera, pose_matrix

Ref = tuple[str, str]


@dataclass
class Shot:
    name: str
    board: Board
    T_base_board: np.ndarray | None
    images: dict[Ref, Any]  # Path, or an image array (tests, synthetic data)


@dataclass
class CameraPose:
    """A camera's solved pose and how well it explains its corners."""

    ref: Ref
    T_base_cam: np.ndarray
    rms_px: float
    n_points: int
    shots: list[str]
    chained: list[str] = field(default_factory=list)  # shots of unknown pose used (placed through other cameras)
    per_shot_rms: dict[str, float] = field(default_factory=dict)


def _board(path: Path, raw: Any, where: str) -> Board:
    if not isinstance(raw, dict):
        raise FormatError(f"{path}: key '{where}': expected {{cols, rows, square}}")
    try:
        return Board(int(raw["cols"]), int(raw["rows"]), float(raw["square"]), raw.get("dictionary"), raw.get("marker"))
    except KeyError as exc:
        raise FormatError(f"{path}: key '{where}.{exc.args[0]}': missing value") from None


def load_targets(path: str | Path) -> list[Shot]:
    path = Path(path)
    data = _read_yaml(path)
    default = _board(path, data["board"], "board") if "board" in data else None
    shots_raw = data.get("shots")
    if not isinstance(shots_raw, list) or not shots_raw:
        raise FormatError(f"{path}: key 'shots': expected a non-empty list of shots")
    shots = []
    for i, s in enumerate(shots_raw):
        where = f"shots.{i}"
        if not isinstance(s, dict) or "images" not in s:
            raise FormatError(f"{path}: key '{where}.images': missing value")
        board = _board(path, s["board"], f"{where}.board") if "board" in s else default
        if board is None:
            raise FormatError(f"{path}: key '{where}.board': missing value (and no top-level board)")
        T = None
        if "pose" in s:
            try:
                T = pose_matrix(s["pose"]["xyz"], np.radians(s["pose"]["rpy_deg"]))
            except (KeyError, TypeError, ValueError):
                raise FormatError(f"{path}: key '{where}.pose': expected {{xyz: [x, y, z], rpy_deg: [r, p, y]}}") from None
        images: dict[Ref, Any] = {}
        for k, v in dict(s["images"]).items():
            ref = parse_ref(str(k))
            if isinstance(v, dict) and "bag_time_s" in v:  # a frame of a drive (edge calibrate check --bag)
                images[ref] = (ref, float(v["bag_time_s"]))
            else:
                images[ref] = path.parent / str(v)
        shots.append(Shot(str(s.get("name", f"shot{i}")), board, T, images))
    return shots


# ---------------------------------------------------------------- PnP through the rig's camera models

def _normalised(camera: CameraBase, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Corners -> points on the z = 1 plane (fisheye rays within ~84 degrees), and which were kept."""
    rays, ok = camera.unproject(uv)
    keep = ok & (rays[:, 2] > 0.1)
    return rays[keep, :2] / rays[keep, 2:], keep


def solve_pose(camera: CameraBase, obj: np.ndarray, uv: np.ndarray) -> np.ndarray | None:
    """T_cam_obj from 3-D points and their pixels: SQPnP, then Levenberg-Marquardt (cv2.solvePnPRefineLM)."""
    if isinstance(camera, FisheyeCamera):
        norm, keep = _normalised(camera, uv)
        obj, K, D = obj[keep], np.eye(3), None
        pts = norm
    else:
        pts, K, D = uv, camera.K, camera.D
    if len(obj) < 6:
        return None
    ok, r, t = cv2.solvePnP(obj, pts.reshape(-1, 1, 2), K, D, flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        return None
    r, t = cv2.solvePnPRefineLM(obj, pts.reshape(-1, 1, 2), K, D, r, t,
                                (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-12))
    if isinstance(camera, FisheyeCamera):  # the normalised plane over-weights wide rays: finish in pixels
        r, t = _refine_fisheye_pixels(camera, obj, uv[keep], r.reshape(3), t.reshape(3))
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(r)[0]
    T[:3, 3] = t.reshape(3)
    return T


def _refine_fisheye_pixels(camera: FisheyeCamera, obj: np.ndarray, uv: np.ndarray, r: np.ndarray, t: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Levenberg-Marquardt of a pose on pixel residuals, with OpenCV's fisheye projection and its Jacobian."""
    D = camera.D.reshape(4, 1)
    e = np.concatenate([r, t]).astype(np.float64)

    def residual(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        proj, J = cv2.fisheye.projectPoints(obj.reshape(1, -1, 3), p[:3].reshape(3, 1), p[3:].reshape(3, 1), camera.K, D)
        return (proj.reshape(-1, 2) - uv).reshape(-1), np.asarray(J, dtype=np.float64).reshape(-1, 15)[:, 8:14]

    res, J = residual(e)
    cost, lam = float(res @ res), 1e-3
    for _ in range(50):
        H = J.T @ J
        step = -np.linalg.solve(H + lam * np.diag(np.diag(H)) + 1e-12 * np.eye(6), J.T @ res)
        res2, J2 = residual(e + step)
        cost2 = float(res2 @ res2)
        if cost2 < cost:
            converged = cost - cost2 < 1e-12 * cost + 1e-14
            e, res, J, cost, lam = e + step, res2, J2, cost2, lam / 3
            if converged:
                break
        else:
            lam *= 4
            if lam > 1e8:
                break
    return e[:3], e[3:]


def reprojection_errors(camera: CameraBase, T_cam_obj: np.ndarray, obj: np.ndarray, uv: np.ndarray) -> np.ndarray:
    pc = obj @ T_cam_obj[:3, :3].T + T_cam_obj[:3, 3]
    proj, _ = camera.project(pc, within_image=False)
    return np.linalg.norm(proj - uv, axis=1)


def rotation_deg(Ra: np.ndarray, Rb: np.ndarray) -> float:
    return math.degrees(math.acos(float(np.clip((np.trace(Ra.T @ Rb) - 1) / 2, -1.0, 1.0))))


def _turned(board: Board, d: Detection) -> Detection:
    """The same corners in the other order a 180-degree-symmetric board allows (index i -> n-1-i)."""
    n = board.cols * board.rows
    return Detection(d.name, d.corners, n - 1 - d.ids)


# ---------------------------------------------------------------- the solve

def detect_shots(shots: list[Shot], load: Any) -> dict[tuple[str, Ref], Detection]:
    """Board corners of every (shot, camera) image; an image without the board is an error naming it."""
    out = {}
    for s in shots:
        for ref, src in s.images.items():
            img = load(src)
            d = detect(img, s.board, f"{s.name}:{ref[0]}/{ref[1]}")
            if d is None:
                raise CalibrationError(f"shot '{s.name}': the {s.board.name} is not found in the {ref[0]}/{ref[1]} "
                                       f"image ({src if isinstance(src, Path) else 'array'}); retake it with the "
                                       "whole board in view")
            out[(s.name, ref)] = d
    return out


def solve_extrinsics(cameras: dict[Ref, CameraBase], shots: list[Shot], detections: dict[tuple[str, Ref], Detection],
                     prior: dict[Ref, np.ndarray]) -> dict[Ref, CameraPose]:
    """Pose in base_link of every camera that sees a board, directly or through a chain of shared shots."""
    for (shot, ref) in detections:
        if ref not in cameras:
            raise CalibrationError(f"shot '{shot}': camera {ref[0]}/{ref[1]} is not in the rig")
    by_name = {s.name: s for s in shots}
    board_pose: dict[str, np.ndarray] = {s.name: s.T_base_board for s in shots if s.T_base_board is not None}
    if not board_pose:
        raise CalibrationError("no shot has a measured pose: give at least one board its pose in base_link")
    chosen: dict[tuple[str, Ref], Detection] = {}
    result: dict[Ref, CameraPose] = {}
    pending = sorted({ref for (_, ref) in detections})
    while True:
        progress = False
        for ref in list(pending):
            cam = cameras[ref]
            usable = [s for (s, r) in detections if r == ref and s in board_pose]
            if not usable:
                continue
            objs, uvs, names = [], [], []
            for s in usable:
                d = _oriented(cam, by_name[s].board, detections[(s, ref)], board_pose[s], prior.get(ref))
                chosen[(s, ref)] = d
                pts = by_name[s].board.object_points()[d.ids]
                objs.append(pts @ board_pose[s][:3, :3].T + board_pose[s][:3, 3])
                uvs.append(d.corners)
                names.append(s)
            obj, uv = np.concatenate(objs), np.concatenate(uvs)
            T_cam_base = solve_pose(cam, obj, uv)
            if T_cam_base is None:
                raise CalibrationError(f"camera {ref[0]}/{ref[1]}: no pose fits its board corners; check the shots' "
                                       "poses and images")
            err = reprojection_errors(cam, T_cam_base, obj, uv)
            split = np.cumsum([len(u) for u in uvs])[:-1]
            result[ref] = CameraPose(
                ref, np.linalg.inv(T_cam_base), float(np.sqrt(np.mean(err**2))), len(obj), names,
                [s for s in names if by_name[s].T_base_board is None],
                {s: float(np.sqrt(np.mean(e**2))) for s, e in zip(names, np.split(err, split))})
            pending.remove(ref)
            progress = True
        for s in shots:
            if s.name in board_pose:
                continue
            placed = [ref for (n, ref) in detections if n == s.name and ref in result]
            if not placed:
                continue
            # The placed camera with the smallest residual defines the board's pose (and its corner order).
            ref = min(placed, key=lambda r: result[r].rms_px)
            d = detections[(s.name, ref)]
            T_cam_board = solve_pose(cameras[ref], s.board.object_points()[d.ids], d.corners)
            if T_cam_board is None:
                continue
            board_pose[s.name] = result[ref].T_base_cam @ T_cam_board
            progress = True
        if not progress:
            break
    if pending:
        names = ", ".join(f"{k}/{n}" for k, n in pending)
        raise CalibrationError(f"camera(s) {names} see no board of known pose and share no shot with a placed "
                               "camera; add a shot with a measured board pose, or one they share with a placed camera")
    return result


def _oriented(cam: CameraBase, board: Board, d: Detection, T_base_board: np.ndarray,
              prior_T_base_cam: np.ndarray | None) -> Detection:
    """Pick the corner order that agrees with the prior camera pose (only symmetric boards have two)."""
    if not board.symmetric() or prior_T_base_cam is None:
        return d
    best, best_angle = d, math.inf
    for cand in (d, _turned(board, d)):
        T_cam_board = solve_pose(cam, board.object_points()[cand.ids], cand.corners)
        if T_cam_board is None:
            continue
        angle = rotation_deg((prior_T_base_cam @ T_cam_board)[:3, :3], T_base_board[:3, :3])
        if angle < best_angle:
            best, best_angle = cand, angle
    return best


def check_against_targets(cameras: dict[Ref, CameraBase], rig_poses: dict[Ref, np.ndarray], shots: list[Shot],
                          detections: dict[tuple[str, Ref], Detection], max_px: float
                          ) -> list[dict[str, Any]]:
    """Reprojection of boards of known pose through the rig as it is, per camera, with the pose change that a
    fresh solve would make: a camera knocked out of alignment shows a large RMS and rotation."""
    rows = []
    solved = solve_extrinsics(cameras, [s for s in shots if s.T_base_board is not None],
                              {k: v for k, v in detections.items()
                               if any(s.name == k[0] and s.T_base_board is not None for s in shots)}, rig_poses)
    for ref, sol in sorted(solved.items()):
        cam = cameras[ref]
        errs = []
        for s in shots:
            if s.T_base_board is None or (s.name, ref) not in detections:
                continue
            d = _oriented(cam, s.board, detections[(s.name, ref)], s.T_base_board, rig_poses[ref])
            pts = s.board.object_points()[d.ids]
            T_cam_board = np.linalg.inv(rig_poses[ref]) @ s.T_base_board
            errs.append(reprojection_errors(cam, T_cam_board, pts, d.corners))
        e = np.concatenate(errs)
        rms = float(np.sqrt(np.mean(e**2)))
        rows.append({
            "camera": f"{ref[0]}/{ref[1]}", "rms_px": rms, "solved_rms_px": sol.rms_px,
            "rotation_deg": rotation_deg(sol.T_base_cam[:3, :3], rig_poses[ref][:3, :3]),
            "translation_m": float(np.linalg.norm(sol.T_base_cam[:3, 3] - rig_poses[ref][:3, 3])),
            "ok": rms <= max_px,
        })
    return rows
