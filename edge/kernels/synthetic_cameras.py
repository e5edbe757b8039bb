"""Small camera models implementing the CameraModel protocol, for tests and benchmarks of the kernels
without depending on edge.sensors (the real rig models live there)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def base_from_optical(yaw: float, position: tuple[float, float, float], pitch_down: float = 0.0) -> np.ndarray:
    """(4, 4) T_base_cam of a camera at `position` looking along `yaw` (rad, CCW from x), tilted down by
    pitch_down: the optical frame has z forward, x right, y down."""
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch_down), np.sin(pitch_down)
    fwd = np.array([cy * cp, sy * cp, -sp])
    right = np.array([sy, -cy, 0.0])
    down = np.cross(fwd, right)
    T = np.eye(4)
    T[:3, :3] = np.stack([right, down, fwd], axis=1)
    T[:3, 3] = position
    return T


@dataclass
class PinholeCamera:
    name: str
    width: int
    height: int
    T_base_cam: np.ndarray
    fx: float
    fy: float
    cx: float
    cy: float

    def project(self, points_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = np.asarray(points_cam, dtype=np.float64)
        z = p[:, 2]
        front = z > 1e-3
        zs = np.where(front, z, 1.0)
        uv = np.stack([self.fx * p[:, 0] / zs + self.cx, self.fy * p[:, 1] / zs + self.cy], axis=1)
        inside = (uv[:, 0] >= -0.5) & (uv[:, 0] <= self.width - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] <= self.height - 0.5)
        return uv, front & inside


@dataclass
class EquidistantCamera:
    """Fisheye r = f * theta (the "equidistant" model without distortion terms), FOV up to fov_deg."""

    name: str
    width: int
    height: int
    T_base_cam: np.ndarray
    f: float
    cx: float
    cy: float
    fov_deg: float = 190.0

    def project(self, points_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = np.asarray(points_cam, dtype=np.float64)
        rxy = np.hypot(p[:, 0], p[:, 1])
        theta = np.arctan2(rxy, p[:, 2])
        scale = np.where(rxy > 1e-12, self.f * theta / np.maximum(rxy, 1e-12), 0.0)
        uv = np.stack([p[:, 0] * scale + self.cx, p[:, 1] * scale + self.cy], axis=1)
        ok = theta <= np.deg2rad(self.fov_deg) / 2
        inside = (uv[:, 0] >= -0.5) & (uv[:, 0] <= self.width - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] <= self.height - 0.5)
        return uv, ok & inside & (np.linalg.norm(p, axis=1) > 1e-9)


def surround_fisheye_rig(width: int = 640, height: int = 480) -> dict[str, EquidistantCamera]:
    """Four 190-degree fisheyes (front, rear, left, right) on a car-sized body, 25 degrees pitched down."""
    f = (height / 2) / np.deg2rad(95.0) * 1.2
    mounts = {"front": (0.0, (3.7, 0.0, 0.6)), "rear": (np.pi, (-1.0, 0.0, 0.9)),
              "left": (np.pi / 2, (2.0, 0.95, 1.0)), "right": (-np.pi / 2, (2.0, -0.95, 1.0))}
    return {name: EquidistantCamera(name, width, height, base_from_optical(yaw, pos, np.deg2rad(25.0)), f,
                                    (width - 1) / 2, (height - 1) / 2)
            for name, (yaw, pos) in mounts.items()}


def ring_pinhole_rig(n: int = 6, width: int = 704, height: int = 256, hfov_deg: float = 70.0) -> list[PinholeCamera]:
    """n pinhole cameras evenly spaced in yaw (the nuScenes-like CUDA-BEVFusion setting)."""
    fx = (width / 2) / np.tan(np.deg2rad(hfov_deg) / 2)
    return [PinholeCamera(f"cam{i}", width, height, base_from_optical(2 * np.pi * i / n, (1.0, 0.0, 1.6)), fx, fx,
                          (width - 1) / 2, (height - 1) / 2) for i in range(n)]
