"""Camera models of the rig: OpenCV fisheye (Kannala-Brandt, ROS "equidistant") and pinhole (ROS "plumb_bob").

Both work in the camera OPTICAL frame (z forward, x right, y down) and agree with OpenCV:
- the pinhole model calls `cv2.projectPoints` / `cv2.undistortPoints` directly;
- the fisheye model implements OpenCV's equations in NumPy because `cv2.fisheye` divides by z and so cannot
  represent the rays beyond 90 degrees that a 190-degree lens sees. Here theta = atan2(|xy|, z), which equals
  OpenCV's atan(|xy|/z) wherever z > 0 and continues the same model behind the image plane. Tests compare both
  against OpenCV on random points and calibrations.
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


@dataclass(frozen=True)
class FisheyeCamera(CameraBase):
    """OpenCV fisheye / Kannala-Brandt: r_d = f * theta * (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8)."""

    fov: float = np.pi  # full field of view, radians

    distortion_model = "equidistant"

    def _theta_d(self, theta: np.ndarray) -> np.ndarray:
        k1, k2, k3, k4 = self.D
        t2 = theta * theta
        return theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))

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
        """Pixels -> unit rays, inverting theta_d(theta) by Newton's method (as cv2.fisheye.undistortPoints does)."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        fx, fy, cx, cy = self.K[0, 0], self.K[1, 1], self.K[0, 2], self.K[1, 2]
        xd, yd = (uv[:, 0] - cx) / fx, (uv[:, 1] - cy) / fy
        theta_d = np.hypot(xd, yd)
        k1, k2, k3, k4 = self.D
        theta = theta_d.copy()
        for _ in range(20):
            t2 = theta * theta
            f = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4)))) - theta_d
            df = 1 + t2 * (3 * k1 + t2 * (5 * k2 + t2 * (7 * k3 + t2 * 9 * k4)))
            theta = theta - f / df
        converged = np.abs(self._theta_d(theta) - theta_d) < 1e-9
        s = np.divide(np.sin(theta), theta_d, out=np.ones_like(theta_d), where=theta_d > 1e-12)
        rays = np.stack([xd * s, yd * s, np.cos(theta)], axis=1)
        valid = converged & (theta >= 0) & (theta <= self.fov / 2)
        return rays, valid


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

    def unproject(self, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-12)
        norm = cv2.undistortPoints(uv.reshape(-1, 1, 2), self.K, self.D, R=np.eye(3), P=np.eye(3), criteria=criteria)
        norm = norm.reshape(-1, 2)
        rays = np.concatenate([norm, np.ones((len(norm), 1))], axis=1)
        rays /= np.linalg.norm(rays, axis=1, keepdims=True)
        return rays, np.isfinite(rays).all(axis=1)


CameraModel = FisheyeCamera | PinholeCamera
