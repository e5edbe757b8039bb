"""Camera models of the rig: OpenCV fisheye (Kannala-Brandt, ROS "equidistant") and pinhole (ROS "plumb_bob").

Both work in the camera OPTICAL frame (z forward, x right, y down) and agree with OpenCV:
- the pinhole model projects with `cv2.projectPoints`; it unprojects with its own solver, because
  `cv2.undistortPoints` (a fixed-point iteration) does not converge for wide lenses and returns its last guess;
- the fisheye model implements OpenCV's equations in NumPy because `cv2.fisheye` divides by z and so cannot
  represent the rays beyond 90 degrees that a 190-degree lens sees. Here theta = atan2(|xy|, z), which equals
  OpenCV's atan(|xy|/z) wherever z > 0 and continues the same model behind the image plane.
Unprojection inverts the radial distortion on its monotonic branch by bracketed Newton, so it converges for every
calibration the rig validator accepts, and says `valid = False` only for pixels no ray of that branch reaches. The
validator (`fisheye_inversion_problem`, `pinhole_inversion_problem`) rejects lenses that fold back inside the
field of view or the image. Tests compare both against OpenCV on random points and calibrations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

# Optical frame axes expressed in the sensor body frame (REP-103 body: x forward along the lens, y left, z up).
R_BODY_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def rpy_to_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Rotation from roll/pitch/yaw (radians, fixed axes x-y-z, as in ROS/tf2): R = Rz(yaw) Ry(pitch) Rx(roll)."""
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return rz @ ry @ rx


def pose_matrix(xyz: np.ndarray | list[float], rpy: np.ndarray | list[float]) -> np.ndarray:
    """4x4 homogeneous transform parent <- child from a translation and roll/pitch/yaw."""
    t = np.eye(4)
    t[:3, :3] = rpy_to_matrix(*rpy)
    t[:3, 3] = xyz
    return t


def optical_pose(xyz: np.ndarray | list[float], rpy: np.ndarray | list[float]) -> np.ndarray:
    """base_link <- optical frame, for a sensor whose body frame (x along the lens) has pose (xyz, rpy)."""
    t = pose_matrix(xyz, rpy)
    t[:3, :3] = t[:3, :3] @ R_BODY_OPTICAL
    return t


def _in_image(uv: np.ndarray, width: int, height: int) -> np.ndarray:
    return (uv[:, 0] >= 0) & (uv[:, 0] <= width - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= height - 1)


@dataclass(frozen=True)
class CameraBase:
    """Intrinsics and pose shared by both models."""

    name: str
    frame_id: str
    width: int
    height: int
    K: np.ndarray  # (3,3)
    D: np.ndarray  # distortion coefficients in the ROS order of the model
    T_base_cam: np.ndarray  # (4,4) base_link <- optical frame
    rate_hz: float
    T_cam_base: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "T_cam_base", np.linalg.inv(self.T_base_cam))

    @property
    def position(self) -> np.ndarray:
        """Optical centre in base_link."""
        return self.T_base_cam[:3, 3].copy()

    def base_to_cam(self, points_base: np.ndarray) -> np.ndarray:
        """(N,3) points in base_link -> optical frame."""
        return points_base @ self.T_cam_base[:3, :3].T + self.T_cam_base[:3, 3]

    def project_base(self, points_base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project base_link points: (uv, valid)."""
        return self.project(self.base_to_cam(np.asarray(points_base, dtype=np.float64)))

    def project(self, points_cam: np.ndarray, within_image: bool = True) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def unproject(self, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def pixel_rays(self, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Unit rays (H', W', 3) in the optical frame through pixel centres on a grid of `stride`, and validity."""
        v, u = np.mgrid[0 : self.height : stride, 0 : self.width : stride].astype(np.float64)
        uv = np.stack([u.ravel(), v.ravel()], axis=1)
        rays, valid = self.unproject(uv)
        return rays.reshape(*u.shape, 3), valid.reshape(u.shape)


# Smallest slope d(r_d)/d(r) (distorted over undistorted radius, 1 for no distortion) the validator accepts
# over the field of view: below it the image radius all but stops growing, a pixel spans a large range of angles
# and the inversion is ill-conditioned; at or below 0 it is not unique at all.
MIN_RADIAL_SLOPE = 1e-3


def _poly_min(coeffs: list[float], t_max: float) -> tuple[float, float]:
    """(minimum, argmin) of the polynomial sum(c_i t^i) over [0, t_max]: at an end or a real stationary point."""
    p = np.polynomial.Polynomial(coeffs)
    ts = [0.0, t_max] + [r.real for r in p.deriv().roots() if abs(r.imag) < 1e-12 and 0.0 < r.real < t_max]
    values = p(np.array(ts))
    i = int(np.argmin(values))
    return float(values[i]), float(ts[i])


def _first_root(coeffs: list[float], t_max: float) -> float:
    """Smallest t in (0, t_max] where the polynomial sum(c_i t^i) (positive at 0) reaches 0; inf if none."""
    p = np.polynomial.Polynomial(coeffs)
    roots = [r.real for r in p.roots() if abs(r.imag) < 1e-9 * max(1.0, abs(r)) and 0.0 < r.real <= t_max]
    return min(roots, default=np.inf)


def _invert_increasing(fn, dfn, target: np.ndarray, hi: float) -> np.ndarray:
    """Solve fn(x) = target (>= 0) for x in [0, hi], fn increasing there with fn(0) = 0: Newton kept inside a
    shrinking bracket, bisection whenever a step would leave it, so it converges for every monotonic lens. A target
    beyond fn(hi) gets hi (the caller's residual check then marks it unreachable)."""
    beyond = target >= fn(np.array(hi))
    x = np.where(beyond, hi, np.clip(target, 0.0, hi))
    active = np.flatnonzero(~beyond)
    lo, up, xa, t = np.zeros(len(active)), np.full(len(active), hi), x[active], target[active]
    for _ in range(200):
        if not len(active):
            break
        f = fn(xa) - t
        lo, up = np.where(f <= 0, xa, lo), np.where(f >= 0, xa, up)
        d = dfn(xa)
        step = xa - np.divide(f, d, out=np.full_like(xa, np.nan), where=d > 0)
        new = np.where((step > lo) & (step < up), step, 0.5 * (lo + up))
        x[active] = new
        going = np.abs(new - xa) > 4 * np.finfo(np.float64).eps * np.maximum(1.0, np.abs(xa))
        active, lo, up, xa, t = active[going], lo[going], up[going], new[going], t[going]
    return x


@dataclass(frozen=True)
class FisheyeCamera(CameraBase):
    """OpenCV fisheye / Kannala-Brandt: r_d = f * theta * (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8)."""

    fov: float = np.pi  # full field of view, radians

    distortion_model = "equidistant"

    def _theta_d(self, theta: np.ndarray) -> np.ndarray:
        k1, k2, k3, k4 = self.D
        t2 = theta * theta
        return theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))

    def _slope(self, theta: np.ndarray) -> np.ndarray:
        k1, k2, k3, k4 = self.D
        t2 = theta * theta
        return 1 + t2 * (3 * k1 + t2 * (5 * k2 + t2 * (7 * k3 + t2 * 9 * k4)))

    def _monotonic_limit(self) -> float:
        """Largest theta up to fov/2 over which theta_d still grows (the first turning point of the lens)."""
        k1, k2, k3, k4 = self.D
        half = self.fov / 2
        return float(min(half, np.sqrt(_first_root([1.0, 3 * k1, 5 * k2, 7 * k3, 9 * k4], half * half))))

    def project(self, points_cam: np.ndarray, within_image: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Optical-frame points -> (uv, valid); valid = inside the field of view (and the image if asked)."""
        p = np.asarray(points_cam, dtype=np.float64).reshape(-1, 3)
        rho = np.hypot(p[:, 0], p[:, 1])
        theta = np.arctan2(rho, p[:, 2])
        scale = np.divide(self._theta_d(theta), rho, out=np.zeros_like(rho), where=rho > 1e-12)
        fx, fy, cx, cy = self.K[0, 0], self.K[1, 1], self.K[0, 2], self.K[1, 2]
        uv = np.stack([fx * scale * p[:, 0] + cx, fy * scale * p[:, 1] + cy], axis=1)
        valid = (theta <= self.fov / 2) & (np.linalg.norm(p, axis=1) > 1e-9)
        return uv, (valid & _in_image(uv, self.width, self.height)) if within_image else valid

    def unproject(self, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixels -> (unit rays, valid). theta_d(theta) is inverted on [0, fov/2] (up to the lens' first turning
        point if it has one there, which the rig validator rejects) by bracketed Newton, which always converges;
        valid = the pixel lies within the image of that range, i.e. some ray in the field of view lands on it."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        fx, fy, cx, cy = self.K[0, 0], self.K[1, 1], self.K[0, 2], self.K[1, 2]
        xd, yd = (uv[:, 0] - cx) / fx, (uv[:, 1] - cy) / fy
        finite = np.isfinite(xd) & np.isfinite(yd)
        xd, yd = np.where(finite, xd, 0.0), np.where(finite, yd, 0.0)
        theta_d = np.hypot(xd, yd)
        limit = self._monotonic_limit()
        theta = _invert_increasing(self._theta_d, self._slope, theta_d, limit)
        converged = np.abs(self._theta_d(theta) - theta_d) <= 1e-12 * np.maximum(1.0, theta_d)
        s = np.divide(np.sin(theta), theta_d, out=np.ones_like(theta_d), where=theta_d > 1e-12)
        rays = np.stack([xd * s, yd * s, np.cos(theta)], axis=1)
        valid = finite & converged  # beyond theta_d(limit) the solver stops at limit, short of the pixel
        return rays, valid


def fisheye_inversion_problem(k: list[float] | np.ndarray, fov: float) -> str | None:
    """Why a Kannala-Brandt lens (k1..k4) with full field of view `fov` (radians) cannot be inverted, or None.

    theta_d(theta) must grow over [0, fov/2] (slope >= MIN_RADIAL_SLOPE): otherwise two rays of the field of view
    land on the same pixel. The slope is a quartic in theta^2, so its minimum is found exactly, not sampled."""
    k1, k2, k3, k4 = (float(v) for v in k)
    half = fov / 2
    slope = [1.0, 3 * k1, 5 * k2, 7 * k3, 9 * k4]
    low, _ = _poly_min(slope, half * half)
    if low >= MIN_RADIAL_SLOPE:
        return None
    at = np.degrees(np.sqrt(_first_root([1.0 - MIN_RADIAL_SLOPE, *slope[1:]], half * half)))
    return (f"distortion k1..k4 is not monotonic over the field of view (impossible lens): the image radius "
            f"{'stops growing' if low <= 0 else 'all but stops growing'} at {at:.1f} degrees off-axis (slope falls "
            f"to {low:.3g}, needs >= {MIN_RADIAL_SLOPE:g}), inside the {np.degrees(fov):.1f}-degree field of view; "
            f"reduce fov_deg or recalibrate")


@dataclass(frozen=True)
class PinholeCamera(CameraBase):
    """Pinhole with radial-tangential distortion (OpenCV's 5-coefficient model, ROS "plumb_bob")."""

    distortion_model = "plumb_bob"

    def project(self, points_cam: np.ndarray, within_image: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Optical-frame points -> (uv, valid); valid = in front of the camera (and inside the image if asked)."""
        p = np.asarray(points_cam, dtype=np.float64).reshape(-1, 3)
        in_front = p[:, 2] > 1e-6
        uv = np.full((len(p), 2), np.nan)
        if in_front.any():
            proj, _ = cv2.projectPoints(p[in_front], np.zeros(3), np.zeros(3), self.K, self.D)
            uv[in_front] = proj.reshape(-1, 2)
        if not within_image:
            return uv, in_front
        return uv, in_front & _in_image(np.nan_to_num(uv, nan=-1.0), self.width, self.height)

    def _radial(self, r: np.ndarray) -> np.ndarray:
        k1, k2, _, _, k3 = self.D
        r2 = r * r
        return r * (1 + r2 * (k1 + r2 * (k2 + r2 * k3)))

    def _radial_slope(self, r: np.ndarray) -> np.ndarray:
        k1, k2, _, _, k3 = self.D
        r2 = r * r
        return 1 + r2 * (3 * k1 + r2 * (5 * k2 + r2 * 7 * k3))

    def turning_radius(self) -> float:
        """Undistorted radius (tan of the off-axis angle) where the radial distortion's image radius stops
        growing (inf if it never does): beyond it the model folds back and has no unique inverse."""
        k1, k2, _, _, k3 = self.D
        return float(np.sqrt(_first_root([1.0, 3 * k1, 5 * k2, 7 * k3], np.inf)))

    def _distort(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
        """OpenCV's 5-coefficient model on normalised points: (x_d, y_d) and the Jacobian (a, b; c, d)."""
        k1, k2, p1, p2, k3 = self.D
        r2 = x * x + y * y
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        dradial = 2 * (k1 + r2 * (2 * k2 + r2 * 3 * k3))  # d(radial)/d(r2) * 2
        xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        cross = dradial * x * y + 2 * p1 * x + 2 * p2 * y
        return (xd, yd, radial + dradial * x * x + 2 * p1 * y + 6 * p2 * x, cross, cross,
                radial + dradial * y * y + 6 * p1 * y + 2 * p2 * x)

    def unproject(self, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixels -> (unit rays, valid). OpenCV's cv2.undistortPoints iterates x = (x_d - tangential) / radial(x),
        which diverges for wide lenses (fx 300 at 640 px) and returns its last guess without saying so. Here the
        radial part is inverted on its monotonic branch by bracketed Newton, then 2-D Newton (step halving)
        adds the tangential terms; valid = the forward model maps the ray back onto the pixel (1e-12 normalised),
        on that branch (radius below the turning radius) with a positive Jacobian."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        xy1 = np.concatenate([uv, np.ones((len(uv), 1))], axis=1) @ np.linalg.inv(self.K).T
        xd, yd = xy1[:, 0], xy1[:, 1]
        finite = np.isfinite(xd) & np.isfinite(yd)
        xd, yd = np.where(finite, xd, 0.0), np.where(finite, yd, 0.0)
        rd = np.hypot(xd, yd)
        turn = self.turning_radius()
        hi = turn if np.isfinite(turn) else _radial_bracket(self._radial, float(rd.max(initial=1.0)))
        r = _invert_increasing(self._radial, self._radial_slope, rd, hi)
        scale = np.divide(r, rd, out=np.ones_like(rd), where=rd > 1e-15)
        x, y = xd * scale, yd * scale
        tol = 1e-12 * np.maximum(1.0, rd)
        x, y, residual = _newton_2d(self._distort, x, y, xd, yd, 0.01 * tol)
        rays = np.stack([x, y, np.ones_like(x)], axis=1)
        rays /= np.linalg.norm(rays, axis=1, keepdims=True)
        _, _, a, b, c, d = self._distort(x, y)
        valid = finite & (residual <= tol) & (np.hypot(x, y) < turn) & (a * d - b * c > 0)
        return rays, valid


def _radial_bracket(radial, target: float) -> float:
    """An undistorted radius whose distorted radius reaches `target`, for a radial map that grows without end."""
    hi = max(target, 1.0)
    for _ in range(200):
        if radial(np.array(hi)) >= target:
            break
        hi *= 2
    return hi


def _newton_2d(distort, x: np.ndarray, y: np.ndarray, xd: np.ndarray, yd: np.ndarray,
               tol: np.ndarray) -> tuple[np.ndarray, ...]:
    """Solve distort(x, y) = (xd, yd) from a close start by Newton until the residual is below `tol`; a step that
    does not reduce the residual is halved (up to 30 times) and, if none does, the point keeps its best iterate."""
    x, y = x.copy(), y.copy()
    px, py, *_ = distort(x, y)
    res = np.hypot(px - xd, py - yd)
    active = np.flatnonzero(res > tol)
    for _ in range(50):
        if not len(active):
            break
        ax, ay, tx, ty, r0 = x[active], y[active], xd[active], yd[active], res[active]
        px, py, a, b, c, d = distort(ax, ay)
        det = a * d - b * c
        ok = np.abs(det) > 1e-300
        safe = np.where(ok, det, 1.0)
        ex, ey = px - tx, py - ty
        dx, dy = np.where(ok, (d * ex - b * ey) / safe, 0.0), np.where(ok, (a * ey - c * ex) / safe, 0.0)
        step, taken = np.ones_like(ax), np.zeros(ax.shape, dtype=bool)
        for _ in range(30):
            cx_, cy_ = ax - step * dx, ay - step * dy
            qx, qy, *_ = distort(cx_, cy_)
            r1 = np.hypot(qx - tx, qy - ty)
            now = ~taken & (r1 < r0)
            x[active[now]], y[active[now]], res[active[now]] = cx_[now], cy_[now], r1[now]
            taken |= now
            if taken.all():
                break
            step = np.where(taken, step, step / 2)
        keep = taken & (res[active] > tol[active])
        active = active[keep]
    return x, y, res


def pinhole_inversion_problem(camera: "PinholeCamera") -> str | None:
    """Why a pinhole calibration cannot be inverted over its image, or None: every pixel of the image border
    (and a grid inside) must unproject onto the monotonic branch of the distortion with slope >= MIN_RADIAL_SLOPE.
    A wide lens with strong barrel distortion (fx 300 at 640 px, k1 -0.3) folds back before the image corners."""
    w, h = camera.width, camera.height
    edge_u, edge_v = np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)
    border = np.concatenate([
        np.stack([edge_u, np.zeros(w)], 1), np.stack([edge_u, np.full(w, h - 1.0)], 1),
        np.stack([np.zeros(h), edge_v], 1), np.stack([np.full(h, w - 1.0), edge_v], 1),
    ])
    gv, gu = np.mgrid[0 : h : max(1, h // 16), 0 : w : max(1, w // 16)].astype(np.float64)
    pixels = np.concatenate([border, np.stack([gu.ravel(), gv.ravel()], 1)])
    rays, valid = camera.unproject(pixels)
    k1, k2, _, _, k3 = camera.D
    reach = float(np.max(np.hypot(rays[:, 0], rays[:, 1]) / rays[:, 2], where=valid, initial=0.0))
    low, _ = _poly_min([1.0, 3 * k1, 5 * k2, 7 * k3], reach * reach)
    if valid.all() and low >= MIN_RADIAL_SLOPE:
        return None
    turn = camera.turning_radius()
    where = f"pixel ({pixels[~valid][0, 0]:.0f}, {pixels[~valid][0, 1]:.0f})" if not valid.all() else "the image"
    stop = (f"the image radius stops growing at {np.degrees(np.arctan(turn)):.1f} degrees off-axis"
            if np.isfinite(turn) else f"the slope of the distortion falls to {low:.3g}")
    return (f"distortion d is not monotonic within the image (no unique ray for {where}): {stop}, "
            f"before the image corners (focal length {camera.K[0, 0]:g} px for {w}x{h}); recalibrate, or use the "
            f"fisheye model (equidistant) for a lens this wide")


CameraModel = FisheyeCamera | PinholeCamera
