"""Synthetic calibration data with exact truth: checkerboard views rendered through the rig's own camera models.

Each pixel's ray (the model's `unproject`, so fisheye rays beyond 90 degrees too) is intersected with the board
plane; the checker pattern is box-filtered over the pixel's footprint on the board (the integral of a square
wave is a triangle wave, so the filter is exact along each board axis), which keeps corners unbiased to a small
fraction of a pixel, as a real lens and sensor would. Grey noise is added last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from edge.calibration.boards import Board
from edge.sensors.camera_models import CameraBase, FisheyeCamera, PinholeCamera, rpy_to_matrix

BLACK, WHITE, BACKGROUND = 35.0, 215.0, 95.0


def _box_square_wave(x: np.ndarray, w: np.ndarray, period_half: float) -> np.ndarray:
    """Square wave (+1 on [0, s), -1 on [s, 2s)) averaged over [x - w/2, x + w/2]."""
    def tri(v: np.ndarray) -> np.ndarray:  # antiderivative of the square wave
        m = np.mod(v / period_half, 2.0)
        return period_half * (1.0 - np.abs(m - 1.0))

    w = np.maximum(w, 1e-9)
    return (tri(x + w / 2) - tri(x - w / 2)) / w


def _box_step(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Step (0 for x < 0, 1 for x > 0) averaged over a footprint w."""
    return np.clip(x / np.maximum(w, 1e-9) + 0.5, 0.0, 1.0)


class BoardRenderer:
    """Renders a board at any pose through one camera; the pixel rays are computed once."""

    def __init__(self, camera: CameraBase, board: Board, margin_squares: float = 0.8) -> None:
        self.camera, self.board = camera, board
        rays, valid = camera.unproject(_pixel_grid(camera.width, camera.height))
        self.rays = rays.reshape(camera.height, camera.width, 3)
        self.valid = valid.reshape(camera.height, camera.width)
        self.margin = margin_squares * board.square

    def render(self, T_cam_board: np.ndarray, rng: np.random.Generator, noise_sigma: float = 2.0) -> np.ndarray:
        """uint8 grey image of the board at pose `T_cam_board` (optical frame <- board frame)."""
        b, s = self.board, self.board.square
        R, t = T_cam_board[:3, :3], T_cam_board[:3, 3]
        n = R[:, 2]
        denom = self.rays @ n
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = (n @ t) / denom
        hit = self.valid & np.isfinite(lam) & (lam > 0)
        p = self.rays * np.where(hit, lam, 0.0)[..., None] - t
        X, Y = p @ R[:, 0], p @ R[:, 1]
        # Pixel footprint on the board along each board axis (box filter of one pixel).
        wx = np.abs(np.gradient(X, axis=1)) + np.abs(np.gradient(X, axis=0))
        wy = np.abs(np.gradient(Y, axis=1)) + np.abs(np.gradient(Y, axis=0))
        # The checker covers one square beyond the inner corners; a white margin around it; background beyond.
        x0, x1, y0, y1 = -s, b.cols * s, -s, b.rows * s
        # Clamped so the wave has no spurious transition at the checker's outer edge (the margin takes over there).
        Xc, Yc = np.clip(X, x0 + s / 2, x1 - s / 2), np.clip(Y, y0 + s / 2, y1 - s / 2)
        checker = _box_square_wave(Xc, wx, s) * _box_square_wave(Yc, wy, s)  # +1 where even parity
        inside = (_box_step(X - x0, wx) * _box_step(x1 - X, wx) * _box_step(Y - y0, wy) * _box_step(y1 - Y, wy))
        m = self.margin
        on_board = (_box_step(X - x0 + m, wx) * _box_step(x1 + m - X, wx) * _box_step(Y - y0 + m, wy)
                    * _box_step(y1 + m - Y, wy))
        pattern = (WHITE + BLACK) / 2 - (WHITE - BLACK) / 2 * checker  # corner square (0..s, 0..s) is black
        value = inside * pattern + (on_board - inside) * WHITE + (1.0 - on_board) * BACKGROUND
        value = np.where(hit, value, BACKGROUND)
        img = value + rng.normal(0.0, noise_sigma, value.shape)
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _pixel_grid(width: int, height: int) -> np.ndarray:
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack([u.ravel(), v.ravel()], axis=1)


def look_at_pose(direction: np.ndarray, distance: float, board: Board, tilt: tuple[float, float, float]) -> np.ndarray:
    """T_cam_board with the board centre at `distance` along `direction`, facing the camera, then tilted
    by (about the board's x, y, z axes, radians)."""
    d = np.asarray(direction, dtype=np.float64)
    d = d / np.linalg.norm(d)
    z = d  # board normal points away from the camera
    up = np.array([0.0, 1.0, 0.0]) if abs(d[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z], axis=1) @ rpy_to_matrix(*tilt)
    centre = np.array([(board.cols - 1) * board.square / 2, (board.rows - 1) * board.square / 2, 0.0])
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = d * distance - R @ centre
    return T


def view_poses(camera: CameraBase, board: Board, n: int, rng: np.random.Generator, max_angle_deg: float,
               margin_px: float = 12.0, min_square_px: float = 9.0) -> list[np.ndarray]:
    """`n` board poses spread over the field of view up to `max_angle_deg` off-axis (centre direction), each with
    every corner inside the image with a margin and squares large enough to detect."""
    poses: list[np.ndarray] = []
    obj = board.object_points()
    extent = np.hypot(board.cols, board.rows) * board.square
    f = camera.K[0, 0]
    attempts = 0
    while len(poses) < n:
        attempts += 1
        if attempts > 20000:
            raise RuntimeError(f"could not place {n} views of the board in the image")
        # Stratify the direction: cycle through rings of off-axis angle so the field is covered evenly.
        ring = len(poses) % 4
        theta = math.radians(max_angle_deg) * math.sqrt(rng.uniform(ring / 4, (ring + 1) / 4))
        phi = rng.uniform(-math.pi, math.pi)
        d = np.array([math.sin(theta) * math.cos(phi), math.sin(theta) * math.sin(phi), math.cos(theta)])
        dist = extent * f / rng.uniform(0.45, 0.9) / max(camera.width, camera.height) * 1.4
        tilt = (rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), rng.uniform(-0.4, 0.4))
        T = look_at_pose(d, dist, board, tilt)
        pc = obj @ T[:3, :3].T + T[:3, 3]
        if (pc[:, 2] <= 0.02).any() and isinstance(camera, PinholeCamera):
            continue
        uv, valid = camera.project(pc)
        if isinstance(camera, FisheyeCamera) and (pc[:, 2] < 0.1 * np.linalg.norm(pc, axis=1)).any():
            continue  # keep every corner within ~84 degrees, where a board can still be detected reliably
        m = margin_px
        inside = valid & (uv[:, 0] > m) & (uv[:, 0] < camera.width - 1 - m) & (uv[:, 1] > m) & (uv[:, 1] < camera.height - 1 - m)
        if not inside.all():
            continue
        grid = uv.reshape(board.rows, board.cols, 2)
        step = min(np.linalg.norm(np.diff(grid, axis=0), axis=2).min(), np.linalg.norm(np.diff(grid, axis=1), axis=2).min())
        if step < min_square_px:
            continue
        poses.append(T)
    return poses


def fisheye_truth(width: int = 800, height: int = 600) -> FisheyeCamera:
    """The fisheye used by the tests and the benchmark: a 190-degree surround lens on an 800x600 sensor."""
    K = np.array([[231.7, 0.0, width / 2 + 3.4], [0.0, 230.9, height / 2 - 2.1], [0.0, 0.0, 1.0]])
    D = np.array([0.0301, -0.0062, 0.00081, -0.000052])
    return FisheyeCamera("truth", "truth_optical", width, height, K, D, np.eye(4), 10.0, fov=math.radians(190))


def pinhole_truth(width: int = 800, height: int = 600) -> PinholeCamera:
    """A front pinhole camera (about 70 degrees horizontal) with the rig's kind of distortion."""
    K = np.array([[565.0, 0.0, width / 2 - 2.6], [0.0, 563.2, height / 2 + 1.8], [0.0, 0.0, 1.0]])
    D = np.array([-0.12, 0.05, 0.0005, -0.0003, 0.0])
    return PinholeCamera("truth", "truth_optical", width, height, K, D, np.eye(4), 10.0)


@dataclass
class RenderedSet:
    """Images and the truth they were rendered from."""

    camera: CameraBase
    board: Board
    images: list[np.ndarray]
    poses: list[np.ndarray]  # T_cam_board per image


def render_views(camera: CameraBase, board: Board, n: int, seed: int, noise_sigma: float = 2.0,
                 max_angle_deg: float | None = None) -> RenderedSet:
    """`n` rendered views spread over the field of view."""
    rng = np.random.default_rng(seed)
    if max_angle_deg is None:
        max_angle_deg = 72.0 if isinstance(camera, FisheyeCamera) else 28.0
    poses = view_poses(camera, board, n, rng, max_angle_deg)
    renderer = BoardRenderer(camera, board)
    images = [renderer.render(T, rng, noise_sigma) for T in poses]
    return RenderedSet(camera, board, images, poses)


def write_rendered(rs: RenderedSet, out: Path) -> None:
    """PNG images plus truth.yaml (intrinsics and per-image board poses) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(rs.images):
        cv2.imwrite(str(out / f"view_{i:03d}.png"), img)
    cam = rs.camera
    truth = {
        "model": cam.distortion_model, "width": cam.width, "height": cam.height,
        "K": cam.K.tolist(), "D": cam.D.tolist(),
        "board": {"cols": rs.board.cols, "rows": rs.board.rows, "square": rs.board.square},
        "T_cam_board": {f"view_{i:03d}.png": T.tolist() for i, T in enumerate(rs.poses)},
    }
    (out / "truth.yaml").write_text(yaml.safe_dump(truth, sort_keys=False))
