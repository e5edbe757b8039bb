"""Robust intrinsic calibration on OpenCV: cv2.fisheye for equidistant (Kannala-Brandt) lenses,
cv2.calibrateCameraExtended for plumb_bob; a bad view costs that view, never the run.

Why the wrapping for fisheye lenses: cv2.fisheye.calibrate initialises every view's pose from the current
intrinsics (InitExtrinsics) and aborts the whole solve (the `fabs(norm_u1) > 0` assertion, or CALIB_CHECK_COND's
"ill-conditioned matrix for input array N") when one view cannot be undistorted with them, which happens for far
off-axis views under its default start (f = max(w, h) / pi, no distortion); and its per-iteration pose
re-initialisation lands some oblique wide views in a wrong pose. So:
1. start from a focal length found by a 1-D search (undistorted corners fit a plane homography), solve with
   cv2.fisheye.calibrate on the views near the axis, then on all; when it raises, the failing view is found
   (from OpenCV's message, by a per-view pose check under the current intrinsics, or by leaving views out one at
   a time), named, and set aside for this start only;
2. every view (those set aside too) then gets its pose from cv2.solvePnP on corners undistorted with that start,
   and intrinsics and all poses are refined together by Levenberg-Marquardt on OpenCV's own projection and
   Jacobian (cv2.fisheye.projectPoints), the views eliminated by Schur complement;
3. after each solve, corners far off their reprojection (mis-detections) and views whose RMS is far above the
   others are dropped and named, and the solve is rerun until nothing changes.
Parameter uncertainty: the intrinsic block of sigma^2 (J^T J)^-1 (fisheye), calibrateCameraExtended (plumb_bob).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import cv2
import numpy as np

from edge.calibration import coverage as cov
from edge.calibration.boards import Board, Detection
from edge.calibration.errors import BoardNotFoundError, CalibrationError, TooFewViewsError, UnknownModelError
from edge.sensors.camera_models import CameraBase, FisheyeCamera, PinholeCamera

MODEL_ALIASES = {
    "equidistant": "equidistant", "fisheye": "equidistant", "kannala_brandt": "equidistant",
    "pinhole-equi": "equidistant", "plumb_bob": "plumb_bob", "radtan": "plumb_bob", "pinhole-radtan": "plumb_bob",
}
MIN_VIEWS = 8
PARAM_NAMES = {"equidistant": ("fx", "fy", "cx", "cy", "k1", "k2", "k3", "k4"),
               "plumb_bob": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3")}
_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 200, 1e-12)
_FISHEYE_FLAGS = cv2.CALIB_USE_INTRINSIC_GUESS | cv2.CALIB_RECOMPUTE_EXTRINSIC | cv2.CALIB_FIX_SKEW


def normalize_model(name: str) -> str:
    """ROS / OpenCV / Kalibr model names -> 'equidistant' or 'plumb_bob'."""
    key = (name or "").strip().lower()
    if key not in MODEL_ALIASES:
        raise UnknownModelError(
            f"unknown camera model '{name}': use 'equidistant' for fisheye lenses (OpenCV fisheye / Kannala-Brandt; "
            "'fisheye' and Kalibr's 'pinhole-equi' mean the same) or 'plumb_bob' for ordinary lenses "
            "(Kalibr 'pinhole-radtan')"
        )
    return MODEL_ALIASES[key]


@dataclass
class ViewReport:
    """One image: its corners, their reprojection errors (NaN where not used), and whether and why it was left out."""

    name: str
    corners: np.ndarray
    ids: np.ndarray
    errors: np.ndarray
    used: bool = True
    reason: str = ""
    T_cam_board: np.ndarray | None = None

    @property
    def rms(self) -> float:
        e = self.errors[np.isfinite(self.errors)]
        return float(np.sqrt(np.mean(e**2))) if len(e) else math.nan


@dataclass
class IntrinsicsResult:
    """The solved camera, what each view contributed, and the figures that say whether to trust it."""

    model: str
    width: int
    height: int
    K: np.ndarray
    D: np.ndarray
    rms: float
    views: list[ViewReport]
    std: dict[str, float]
    coverage: cov.Coverage
    corners_dropped: int = 0
    notes: list[str] = field(default_factory=list)  # what happened on the way (views OpenCV could not start with)
    problems: list[str] = field(default_factory=list)

    @property
    def trusted(self) -> bool:
        return not self.problems

    @property
    def used_views(self) -> list[ViewReport]:
        return [v for v in self.views if v.used]

    def camera(self, name: str = "camera", frame_id: str = "camera_optical_frame") -> CameraBase:
        if self.model == "equidistant":
            return FisheyeCamera(name, frame_id, self.width, self.height, self.K.copy(), self.D.copy(), np.eye(4),
                                 10.0, fov=math.radians(190))
        return PinholeCamera(name, frame_id, self.width, self.height, self.K.copy(), self.D.copy(), np.eye(4), 10.0)


# ---------------------------------------------------------------- solver back-ends

def _pose(rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(np.asarray(rvec, dtype=np.float64).reshape(3))[0]
    T[:3, 3] = np.asarray(tvec, dtype=np.float64).reshape(3)
    return T


class _Fisheye:
    model = "equidistant"

    @staticmethod
    def calibrate(obj: list[np.ndarray], img: list[np.ndarray], size: tuple[int, int], K: np.ndarray,
                  D: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[np.ndarray], None]:
        _, K, D, rvecs, tvecs = cv2.fisheye.calibrate(
            [o.reshape(1, -1, 3) for o in obj], [i.reshape(1, -1, 2) for i in img], size, K.copy(),
            D.reshape(4, 1).copy(), flags=_FISHEYE_FLAGS, criteria=_CRITERIA)
        return K, D.reshape(-1), list(rvecs), list(tvecs), None

    @staticmethod
    def project(obj: np.ndarray, rvec: np.ndarray, tvec: np.ndarray, K: np.ndarray, D: np.ndarray) -> np.ndarray:
        uv, _ = cv2.fisheye.projectPoints(obj.reshape(1, -1, 3), np.asarray(rvec).reshape(3, 1),
                                          np.asarray(tvec).reshape(3, 1), K, D.reshape(4, 1))
        return uv.reshape(-1, 2)

    @staticmethod
    def view_ok(obj: np.ndarray, img: np.ndarray, size: tuple[int, int], K: np.ndarray, D: np.ndarray) -> bool:
        """Whether OpenCV can initialise and refine this view's pose with the intrinsics held fixed."""
        flags = _FISHEYE_FLAGS | cv2.CALIB_FIX_INTRINSIC
        try:
            cv2.fisheye.calibrate([obj.reshape(1, -1, 3)], [img.reshape(1, -1, 2)], size, K.copy(),
                                  D.reshape(4, 1).copy(), flags=flags, criteria=_CRITERIA)
        except cv2.error:
            return False
        return True

    @staticmethod
    def pose(obj: np.ndarray, img: np.ndarray, K: np.ndarray, D: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """A view's pose under fixed intrinsics: SQPnP on the corners' rays, taken to the normalised plane.

        The rays come from the rig's model (Newton inversion of theta_d): OpenCV 5's cv2.fisheye.undistortPoints
        returns wrong points far off-axis, and the iterative PnP falls into wrong minima on wide views."""
        cam = FisheyeCamera("c", "c", 1, 1, K, np.asarray(D, dtype=np.float64).reshape(4), np.eye(4), 10.0,
                            fov=math.radians(200))
        rays, ok = cam.unproject(img)
        keep = ok & (rays[:, 2] > 0.1)  # within ~84 degrees of the axis
        if keep.sum() < 6:
            return None
        norm = rays[keep, :2] / rays[keep, 2:]
        ok, r, t = cv2.solvePnP(obj[keep], norm.reshape(-1, 1, 2), np.eye(3), None, flags=cv2.SOLVEPNP_SQPNP)
        if not ok:
            return None
        pc = obj @ cv2.Rodrigues(r)[0].T + t.reshape(3)
        if (pc[keep, 2] <= 0).any():  # corners seen in front of the lens must lie in front of it
            return None
        return r.reshape(3), t.reshape(3)

    @staticmethod
    def projectable(obj: np.ndarray, rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
        """Corners cv2.fisheye can project: it divides by z, so points near or behind the image plane (beyond
        ~87 degrees off-axis, which a 190-degree lens still sees) would be mapped to the wrong side."""
        pc = obj @ cv2.Rodrigues(np.asarray(rvec, dtype=np.float64).reshape(3))[0].T + np.reshape(tvec, 3)
        return pc[:, 2] > 0.05 * np.linalg.norm(pc, axis=1)

    @staticmethod
    def refine(obj: list[np.ndarray], img: list[np.ndarray], K: np.ndarray, D: np.ndarray,
               rvecs: list[np.ndarray], tvecs: list[np.ndarray], iterations: int = 60
               ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """Levenberg-Marquardt over (fx, fy, cx, cy, k1..k4) and every view's pose, on OpenCV's projection."""
        p = np.array([K[0, 0], K[1, 1], K[0, 2], K[1, 2], *np.asarray(D).reshape(4)], dtype=np.float64)
        poses = [np.concatenate([np.reshape(r, 3), np.reshape(t, 3)]).astype(np.float64) for r, t in zip(rvecs, tvecs)]

        def unpack(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return np.array([[q[0], 0, q[2]], [0, q[1], q[3]], [0, 0, 1.0]]), q[4:8].reshape(4, 1)

        def evaluate(q: np.ndarray, ps: list[np.ndarray], jac: bool) -> tuple[float, list]:
            Kq, Dq = unpack(q)
            cost, parts = 0.0, []
            for o, i, e in zip(obj, img, ps):
                uv, J = cv2.fisheye.projectPoints(o.reshape(1, -1, 3), e[:3].reshape(3, 1), e[3:].reshape(3, 1), Kq, Dq)
                res = (uv.reshape(-1, 2) - i.reshape(-1, 2)).reshape(-1)
                cost += float(res @ res)
                if jac:
                    J = np.asarray(J, dtype=np.float64).reshape(-1, 15)
                    parts.append((J[:, :8], J[:, 8:14], res))
            return cost, parts

        cost, parts = evaluate(p, poses, True)
        lam = 1e-3
        for _ in range(iterations):
            U = sum(A.T @ A for A, _, _ in parts)
            g = sum(A.T @ r for A, _, r in parts)
            S, rhs, blocks = U + lam * np.diag(np.diag(U)), g.copy(), []
            for A, B, r in parts:
                V = B.T @ B
                V = V + lam * np.diag(np.diag(V)) + 1e-12 * np.eye(6)
                W = A.T @ B
                Vi = np.linalg.inv(V)
                gi = B.T @ r
                S -= W @ Vi @ W.T
                rhs -= W @ Vi @ gi
                blocks.append((Vi, W, gi))
            try:
                dp = -np.linalg.solve(S, rhs)
            except np.linalg.LinAlgError:
                lam *= 10
                continue
            new_poses = [e - Vi @ (gi + W.T @ dp) for e, (Vi, W, gi) in zip(poses, blocks)]
            new_p = p + dp
            new_cost, new_parts = evaluate(new_p, new_poses, True)
            if np.isfinite(new_cost) and new_cost < cost:
                done = (cost - new_cost) < 1e-12 * cost + 1e-14
                p, poses, cost, parts = new_p, new_poses, new_cost, new_parts
                lam = max(lam / 3, 1e-9)
                if done:
                    break
            else:
                lam *= 4
                if lam > 1e8:
                    break
        Kp, Dp = unpack(p)
        return Kp, Dp.reshape(-1), [e[:3] for e in poses], [e[3:] for e in poses]

    @staticmethod
    def std(obj: list[np.ndarray], img: list[np.ndarray], rvecs: list[np.ndarray], tvecs: list[np.ndarray],
            K: np.ndarray, D: np.ndarray) -> np.ndarray:
        """1-sigma of (fx, fy, cx, cy, k1..k4): intrinsic block of sigma^2 (J^T J)^-1, views eliminated (Schur)."""
        S = np.zeros((8, 8))
        sse, n_obs = 0.0, 0
        for o, i, r, t in zip(obj, img, rvecs, tvecs):
            uv, J = cv2.fisheye.projectPoints(o.reshape(1, -1, 3), r.reshape(3, 1), t.reshape(3, 1), K, D.reshape(4, 1))
            J = np.asarray(J, dtype=np.float64).reshape(-1, 15)
            A, B = J[:, :8], J[:, 8:14]  # f(2) c(2) k(4) | rvec(3) tvec(3); alpha (skew) is fixed
            V = B.T @ B
            W = A.T @ B
            S += A.T @ A - W @ np.linalg.solve(V, W.T)
            sse += float(np.sum((uv.reshape(-1, 2) - i.reshape(-1, 2)) ** 2))
            n_obs += 2 * len(o)
        dof = max(n_obs - 8 - 6 * len(obj), 1)
        return np.sqrt(np.clip(np.diag(np.linalg.pinv(S)) * sse / dof, 0, None))


class _Pinhole:
    model = "plumb_bob"

    @staticmethod
    def calibrate(obj: list[np.ndarray], img: list[np.ndarray], size: tuple[int, int], K: np.ndarray | None,
                  D: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[np.ndarray], np.ndarray]:
        flags = cv2.CALIB_USE_INTRINSIC_GUESS if K is not None else 0
        K0 = K.copy() if K is not None else np.eye(3)
        D0 = D.reshape(-1, 1).copy() if D is not None else np.zeros((5, 1))
        out = cv2.calibrateCameraExtended(
            [o.astype(np.float32) for o in obj], [i.reshape(-1, 1, 2).astype(np.float32) for i in img], size, K0, D0,
            flags=flags, criteria=_CRITERIA)
        _, K, D, rvecs, tvecs, std_in = out[:6]
        return K, np.asarray(D).reshape(-1)[:5], list(rvecs), list(tvecs), np.asarray(std_in).reshape(-1)[:9]

    @staticmethod
    def project(obj: np.ndarray, rvec: np.ndarray, tvec: np.ndarray, K: np.ndarray, D: np.ndarray) -> np.ndarray:
        uv, _ = cv2.projectPoints(obj.reshape(-1, 3), np.asarray(rvec).reshape(3), np.asarray(tvec).reshape(3), K, D)
        return uv.reshape(-1, 2)

    @staticmethod
    def view_ok(obj: np.ndarray, img: np.ndarray, size: tuple[int, int], K: np.ndarray, D: np.ndarray) -> bool:
        ok, _, _ = cv2.solvePnP(obj.reshape(-1, 3), img.reshape(-1, 1, 2), K, D)
        return bool(ok)


# ---------------------------------------------------------------- initial focal length (fisheye)

def initial_focal(obj: Sequence[np.ndarray], img: Sequence[np.ndarray], size: tuple[int, int]) -> float:
    """Equidistant focal length at which the undistorted corners of every view best fit a plane homography.

    A 1-D search (60 candidates, one homography per view each): cheap, and it puts the solver's start close
    enough that InitExtrinsics succeeds on views far off-axis."""
    w, h = size
    c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    best_f, best_cost = max(w, h) / math.pi, math.inf
    for f in np.geomspace(0.08 * max(w, h), 1.5 * max(w, h), 60):
        cost = 0.0
        for o, i in zip(obj, img):
            xy = (i.reshape(-1, 2) - c) / f
            td = np.linalg.norm(xy, axis=1)
            if (td >= 1.45).any():  # beyond ~83 degrees the tangent plane is no use
                cost = math.inf
                break
            u = xy * (np.tan(td) / np.maximum(td, 1e-12))[:, None]
            H, _ = cv2.findHomography(o[:, :2], u, 0)
            if H is None:
                cost = math.inf
                break
            p = cv2.perspectiveTransform(o[:, :2].reshape(-1, 1, 2), H).reshape(-1, 2)
            # compare as fisheye pixels: angle off-axis times f, direction by azimuth
            def fish(v: np.ndarray) -> np.ndarray:
                r = np.linalg.norm(v, axis=1, keepdims=True)
                return v / np.maximum(r, 1e-12) * np.arctan(r) * f
            cost += float(np.sum((fish(p) - fish(u)) ** 2))
        if cost < best_cost:
            best_f, best_cost = float(f), cost
    return best_f


# ---------------------------------------------------------------- the robust solve

def _opencv_view_index(message: str) -> int | None:
    m = re.search(r"input array (\d+)", message)
    return int(m.group(1)) if m else None


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    m = re.search(r"error: \(-?\d+:[^)]*\) (.*)", text)
    return (m.group(1) if m else text)[:120]


def calibrate_intrinsics(detections: Sequence[Detection], board: Board, model: str, width: int, height: int,
                         images_total: int | None = None, min_views: int = MIN_VIEWS) -> IntrinsicsResult:
    """Solve the intrinsics from board detections; raises CalibrationError subclasses for unusable input."""
    model = normalize_model(model)
    total = images_total if images_total is not None else len(detections)
    if not detections:
        raise BoardNotFoundError(
            f"the {board.name} was found in none of the {total} images: check that --board gives the INNER "
            "corners (a board of 10x7 squares is 9x6), that the whole board is in view and sharp, then run again"
        )
    if len(detections) < min_views:
        raise TooFewViewsError(
            f"the board was found in {len(detections)} of {total} images; at least {min_views} views are needed "
            f"(20 or more recommended): take {min_views - len(detections)} or more views at different angles and "
            "positions covering the whole image"
        )
    cov.check_spread(detections, width, height)
    solver = _Fisheye if model == "equidistant" else _Pinhole
    size = (width, height)
    all_obj = board.object_points()
    views = [ViewReport(d.name or f"view {k}", d.corners, d.ids, np.full(len(d), np.nan)) for k, d in enumerate(detections)]
    masks = [np.ones(len(d), dtype=bool) for d in detections]
    active = list(range(len(detections)))

    def data(idx: Sequence[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        return ([all_obj[detections[k].ids[masks[k]]] for k in idx],
                [detections[k].corners[masks[k]] for k in idx])

    def drop(k: int, reason: str) -> None:
        views[k].used, views[k].reason = False, reason
        active.remove(k)
        if len(active) < min_views:
            left = "; ".join(f"{v.name}: {v.reason}" for v in views if not v.used)
            raise TooFewViewsError(
                f"only {len(active)} usable views remain after dropping bad ones ({left}); at least {min_views} are "
                "needed: take more views, sharp and spread over the whole image, then run again"
            )

    notes: list[str] = []
    if model == "equidistant":
        K, D = _fisheye_start(detections, active, data, size, notes)
    else:
        K, D = None, None
    poses: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    corners_dropped = 0
    std = np.full(len(PARAM_NAMES[model]), np.nan)
    for _ in range(12):
        if model == "equidistant":
            for k in list(active):
                if k not in poses:
                    pose = _Fisheye.pose(*[x[0] for x in data([k])], K, D)
                    if pose is None:
                        drop(k, "no pose fits its corners under the first estimate (board partly behind the lens?)")
                        continue
                    poses[k] = pose
                    behind = masks[k] & ~_Fisheye.projectable(all_obj[detections[k].ids], *pose)
                    if behind.any():
                        masks[k] &= ~behind
                        notes.append(f"{views[k].name}: {int(behind.sum())} corner(s) beyond 87 degrees off-axis not "
                                     "used (cv2.fisheye cannot project behind the image plane)")
            obj, img = data(active)
            K, D, rvecs, tvecs = _Fisheye.refine(obj, img, K, D, [poses[k][0] for k in active],
                                                 [poses[k][1] for k in active])
            if not (np.isfinite(K).all() and np.isfinite(D).all()):
                raise CalibrationError("the solve diverged; take views with the board flatter to the camera")
            poses.update({k: (r, t) for k, r, t in zip(active, rvecs, tvecs)})
            std_in = None
        else:
            obj, img = data(active)
            try:
                K, D, rvecs, tvecs, std_in = _Pinhole.calibrate(obj, img, size, K, D)
            except cv2.error as exc:
                for k in _culprits(_Pinhole, exc, active, obj, img, data, size, K, D):
                    drop(k, f"breaks the solver ({_short(exc)})")
                continue
        # Residuals of every detected corner of the active views (unused corners too, to report them).
        for k, r, t in zip(active, rvecs, tvecs):
            uv = solver.project(all_obj[detections[k].ids], r, t, K, D)
            views[k].errors = np.linalg.norm(uv - detections[k].corners, axis=1)
            views[k].T_cam_board = _pose(r, t)
        changed = False
        used_err = np.concatenate([views[k].errors[masks[k]] for k in active])
        sigma = np.median(used_err) / 1.1774 if len(used_err) else 0.0  # Rayleigh median -> per-axis sigma
        corner_limit = max(1.0, 6.0 * sigma)
        for k in list(active):
            bad = masks[k] & (views[k].errors > corner_limit)
            if bad.any():
                if bad.sum() > 0.3 * len(masks[k]):
                    drop(k, f"{int(bad.sum())} of {len(masks[k])} corners off by more than {corner_limit:.2f} px")
                else:
                    masks[k] &= ~bad
                    corners_dropped += int(bad.sum())
                changed = True
        if not changed:
            rms = np.array([np.sqrt(np.mean(views[k].errors[masks[k]] ** 2)) for k in active])
            med = float(np.median(rms))
            view_limit = max(3.0 * med, 0.3)
            worst = int(np.argmax(rms))
            if rms[worst] > view_limit:
                drop(active[worst], f"outlier: RMS {rms[worst]:.2f} px against a median of {med:.2f} px")
                changed = True
        if not changed:
            std = _Fisheye.std(obj, img, rvecs, tvecs, K, D) if std_in is None else std_in
            break
    else:
        raise CalibrationError("the robust solve did not settle in 12 rounds; take a cleaner set of views")

    for k in active:
        views[k].errors = np.where(masks[k], views[k].errors, np.nan)
    for v in views:
        if not v.used:
            v.errors = np.full(len(v.ids), np.nan) if v.T_cam_board is None else v.errors
    all_err = np.concatenate([views[k].errors[masks[k]] for k in active])
    rms_total = float(np.sqrt(np.mean(all_err**2)))
    result = IntrinsicsResult(model, width, height, K, D, rms_total, views,
                              dict(zip(PARAM_NAMES[model], (float(s) for s in std))),
                              _coverage(model, K, D, width, height, detections, active, masks), corners_dropped,
                              notes=notes)
    result.problems = _trust_problems(result)
    return result


def _culprits(solver: type, exc: Exception, active: list[int], obj: list[np.ndarray], img: list[np.ndarray],
              data: Callable, size: tuple[int, int], K: np.ndarray | None, D: np.ndarray | None) -> list[int]:
    """The view(s) that made the solver raise: named by OpenCV, failing a pose check alone, or found by leaving
    one out at a time. Raises when no single view is to blame."""
    idx = _opencv_view_index(str(exc))
    if idx is not None and idx < len(active):
        return [active[idx]]
    if K is not None:
        bad = [k for k, o, i in zip(active, obj, img) if not solver.view_ok(o, i, size, K, D)]
        if bad:
            return bad
    for k in active:
        try:
            solver.calibrate(*data([j for j in active if j != k]), size, K, D)
        except cv2.error:
            continue
        return [k]
    raise CalibrationError(
        f"the solver fails on every subset of the {len(active)} views ({_short(exc)}); take new views with the board "
        "flatter to the camera and fully in the image"
    )


def _fisheye_start(detections: Sequence[Detection], active: list[int], data: Callable, size: tuple[int, int],
                   notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """First intrinsics: focal search, then cv2.fisheye.calibrate on the near-axis views and then on all, leaving
    out (for this start only) every view that makes it raise."""
    width, height = size
    f0 = initial_focal(*data(active), size)
    K = np.array([[f0, 0, (width - 1) / 2], [0, f0, (height - 1) / 2], [0, 0, 1.0]])
    D = np.zeros(4)
    c = np.array([(width - 1) / 2, (height - 1) / 2])
    near = [k for k in active if np.linalg.norm(detections[k].corners - c, axis=1).max() / f0 < 1.0]
    for subset in (near, list(active)):
        subset = list(subset)
        while len(subset) >= 4:
            try:
                K1, D1, *_ = _Fisheye.calibrate(*data(subset), size, K, D)
            except cv2.error as exc:
                obj, img = data(subset)
                try:
                    bad = _culprits(_Fisheye, exc, subset, obj, img, data, size, K, D)
                except CalibrationError:
                    break
                for k in bad:
                    subset.remove(k)
                    name = detections[k].name or f"view {k}"
                    notes.append(f"{name}: cv2.fisheye.calibrate raised ({_short(exc)}); its pose was found by PnP "
                                 "instead and the view kept in the joint refinement")
                continue
            if np.isfinite(K1).all() and np.isfinite(D1).all() and K1[0, 0] > 0 and K1[1, 1] > 0:
                K, D = K1, D1
            break
    return K, D


def _coverage(model: str, K: np.ndarray, D: np.ndarray, width: int, height: int, detections: Sequence[Detection],
              active: list[int], masks: list[np.ndarray]) -> cov.Coverage:
    cam = (FisheyeCamera("c", "c", width, height, K, D, np.eye(4), 10.0, fov=math.radians(190)) if model == "equidistant"
           else PinholeCamera("c", "c", width, height, K, D, np.eye(4), 10.0))
    pts = np.concatenate([detections[k].corners[masks[k]] for k in active])
    rays, _ = cam.unproject(pts)
    centre_rays, ok = cam.unproject(cov.cell_centres(width, height))
    theta = np.degrees(np.arctan2(np.hypot(centre_rays[:, 0], centre_rays[:, 1]), centre_rays[:, 2]))
    if model == "equidistant":
        usable, limit = ok & (theta <= 80.0), 75.0
    else:
        usable, limit = ok, float(np.degrees(np.arctan2(np.hypot(*np.abs(centre_rays[:, :2]).max(axis=0)), 1.0)))
        corner_rays, _ = cam.unproject(np.array([[0.0, 0.0], [width - 1.0, 0.0], [0.0, height - 1.0],
                                                 [width - 1.0, height - 1.0]]))
        limit = float(np.degrees(np.arctan2(np.hypot(corner_rays[:, 0], corner_rays[:, 1]), corner_rays[:, 2]).min()))
    return cov.measure(pts, rays, width, height, cov.usable_cells(usable), limit)


def _trust_problems(r: IntrinsicsResult) -> list[str]:
    """Why the calibration should not be trusted (empty: trust it)."""
    out = []
    if r.rms > 0.5:
        out.append(f"RMS {r.rms:.2f} px is above 0.5 px: blur, a bent board or a wrong --square / model")
    c = r.coverage
    if c.regions_missing:
        out.append(f"no corners in the {', '.join(c.regions_missing)} of the image: add views there")
    if c.cell_fraction < 0.6:
        out.append(f"corners cover {c.cell_fraction:.0%} of the usable image (want 60 %): add views near the edges")
    if r.model == "equidistant" and c.max_angle_deg < 60.0:
        out.append(f"no corner beyond {c.max_angle_deg:.0f} degrees off-axis: add views near the image circle")
    fx = r.K[0, 0]
    if not (r.std.get("fx", math.inf) < 0.002 * fx and r.std.get("cx", math.inf) < 1.0 and r.std.get("cy", math.inf) < 1.0):
        out.append(f"parameters uncertain (1-sigma fx {r.std.get('fx', math.nan):.2f} px, cx {r.std.get('cx', math.nan):.2f}"
                   f" px, cy {r.std.get('cy', math.nan):.2f} px): add views at other angles")
    return out
