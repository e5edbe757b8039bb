"""Ray casting against the simulated world: upright boxes (the actors' parts, the ego's own body) and the ground.

Why per-box azimuth culling: a spinning LiDAR's rays from one origin hit a box only within the azimuths the box
spans as seen from that origin, so each box is tested against those columns of the (beams, azimuths) ray grid
only; a scan of 32 x 900 rays against ~100 boxes costs a few milliseconds in numpy instead of a dense test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

GROUND_REFLECTIVITY = 0.2  # asphalt


@dataclass(frozen=True)
class Boxes:
    """Upright boxes in the frame rays are cast in: centre (N, 2), yaw (N,), half length / width (N, 2), bottom and
    top z (N,), reflectivity in [0, 1] (N,)."""

    centre: np.ndarray
    yaw: np.ndarray
    half: np.ndarray
    z0: np.ndarray
    z1: np.ndarray
    reflectivity: np.ndarray

    def __len__(self) -> int:
        return len(self.yaw)

    def corners(self, i: int) -> np.ndarray:
        """(8, 3) corners of box i."""
        c, s = math.cos(self.yaw[i]), math.sin(self.yaw[i])
        hx, hy = self.half[i]
        local = np.array([[sx * hx, sy * hy] for sx in (-1, 1) for sy in (-1, 1)])
        xy = local @ np.array([[c, s], [-s, c]]) + self.centre[i]
        return np.concatenate([np.column_stack([xy, np.full(4, z)]) for z in (self.z0[i], self.z1[i])])


def ray_box(origin: np.ndarray, dirs: np.ndarray, boxes: Boxes, i: int) -> np.ndarray:
    """Distance along each ray (R, 3) from `origin` to box i (slab test in the box's frame); inf where missed."""
    c, s = math.cos(boxes.yaw[i]), math.sin(boxes.yaw[i])
    rel = origin[:2] - boxes.centre[i]
    o = np.array([c * rel[0] + s * rel[1], -s * rel[0] + c * rel[1], origin[2]])
    d = np.stack([c * dirs[:, 0] + s * dirs[:, 1], -s * dirs[:, 0] + c * dirs[:, 1], dirs[:, 2]], axis=1)
    lo = np.array([-boxes.half[i, 0], -boxes.half[i, 1], boxes.z0[i]])
    hi = np.array([boxes.half[i, 0], boxes.half[i, 1], boxes.z1[i]])
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (lo - o) / d
        t2 = (hi - o) / d
    # a ray parallel to a slab: inside it never bounds the hit, outside it never hits
    inside = (o >= lo) & (o <= hi)
    parallel = d == 0
    t1 = np.where(parallel, np.where(inside, -np.inf, np.inf), t1)
    t2 = np.where(parallel, np.where(inside, np.inf, -np.inf), t2)
    near = np.minimum(t1, t2).max(axis=1)
    far = np.maximum(t1, t2).min(axis=1)
    hit = (far >= near) & (far > 0)
    return np.where(hit, np.maximum(near, 0.0), np.inf)


def azimuth_columns(origin: np.ndarray, boxes: Boxes, i: int, azimuths: np.ndarray, slack: float) -> np.ndarray:
    """Indices of the ray columns (their azimuths (A,) in the boxes' frame, each within `slack` of every ray of the
    column) that can meet box i: all of them when the box surrounds the origin's vertical, else the span of its
    corners widened by the slack."""
    rel = boxes.corners(i) - origin
    ref = math.atan2(boxes.centre[i, 1] - origin[1], boxes.centre[i, 0] - origin[0])
    ang = _wrap(np.arctan2(rel[:, 1], rel[:, 0]) - ref)
    if ang.max() - ang.min() > math.pi - 2 * slack or np.hypot(*(boxes.centre[i] - origin[:2])) < 1e-6:
        return np.arange(len(azimuths))
    off = _wrap(azimuths - ref)
    return np.flatnonzero((off >= ang.min() - slack) & (off <= ang.max() + slack))


def _wrap(a: np.ndarray) -> np.ndarray:
    """Angles to (-pi, pi]."""
    return np.angle(np.exp(1j * a))


def column_azimuths(dirs: np.ndarray) -> tuple[np.ndarray, float]:
    """(A,) azimuth of each column of a (beams, A, 3) ray grid and the largest deviation of a ray from its column's
    (non-zero only for a tilted mount)."""
    az = np.arctan2(dirs[..., 1], dirs[..., 0])
    centre = np.angle(np.exp(1j * az).sum(axis=0))
    return centre, float(np.abs(_wrap(az - centre)).max(initial=0.0))


def cast(origin: np.ndarray, dirs: np.ndarray, boxes: Boxes, ground_z: float) -> tuple[np.ndarray, np.ndarray]:
    """Rays on a (beams, azimuths) grid, dirs (beams, A, 3) unit vectors in the boxes' frame from `origin`, against
    the boxes and the ground plane z = ground_z -> (distance (beams, A), inf where nothing is hit; reflectivity of
    what was hit)."""
    beams, n_az, _ = dirs.shape
    azimuths, spread = column_azimuths(dirs)
    slack = spread + 2 * math.pi / max(n_az, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = np.where(dirs[..., 2] < 0, (ground_z - origin[2]) / dirs[..., 2], np.inf)
    dist = np.where(t_ground > 0, t_ground, np.inf)
    refl = np.where(np.isfinite(dist), GROUND_REFLECTIVITY, 0.0)
    for i in range(len(boxes)):
        cols = azimuth_columns(origin, boxes, i, azimuths, slack)
        if cols.size == 0:
            continue
        t = ray_box(origin, dirs[:, cols].reshape(-1, 3), boxes, i).reshape(beams, cols.size)
        sub_d, sub_r = dist[:, cols], refl[:, cols]
        closer = t < sub_d
        sub_d[closer] = t[closer]
        sub_r[closer] = boxes.reflectivity[i]
        dist[:, cols], refl[:, cols] = sub_d, sub_r
    return dist, refl

