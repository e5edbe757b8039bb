"""Ground truth from a drive turned into training/evaluation targets.

BEV: the generator's OccupancyGrid (0.1 m, row = y, column = x; 0 free, 100 static, 90 vehicle, 80 pedestrian or
cyclist, -1 unknown) is resampled to the model grid (0.2 m by default, layout (nx, ny) as the kernels use) by a
vote over each block of GT cells, ties broken obstacle > free > unknown, so a thin pole or a pedestrian that covers
half a cell is kept rather than voted away. Lighting: the drive's condition at the frame (the BEV evaluation is
broken down by it). A modality's own targets (a head of its encoder) are its encoder's
(ModalityEncoder.training_sample).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge.encoders.config import BEV_CLASSES, IGNORE, LIGHTING, PerceptionConfig

__all__ = ["IGNORE", "bev_targets", "coarsen", "lighting_target"]

_GT_VALUES = {0: 0, 100: 1, 90: 2, 80: 3, -1: 4}
_TIE_BREAK = np.array([0.2, 0.3, 0.3, 0.3, 0.1], np.float32)  # obstacle > free > unknown on equal votes


def bev_targets(bev: dict[str, Any] | None, cfg: PerceptionConfig) -> np.ndarray:
    """GT grid dict (decode_occupancy_grid) -> (nx, ny) uint8 class ids on the model grid; all IGNORE if absent."""
    g = cfg.bev_grid
    if bev is None:
        return np.full((g.nx, g.ny), IGNORE, np.uint8)
    data = np.asarray(bev["data"])
    res = float(bev["resolution"])
    ox, oy = bev["origin_xy"]
    factor = int(round(g.resolution / res))
    if abs(factor * res - g.resolution) > 1e-6 or abs(ox - g.x_min) > 1e-6 or abs(oy - g.y_min) > 1e-6 \
            or data.shape != (g.ny * factor, g.nx * factor):
        raise ValueError(f"ground-truth grid (origin {ox, oy}, {res} m, {data.shape}) does not cover the model grid "
                         f"{g.as_tuple()} at an integer ratio")
    cls = np.full(data.shape, IGNORE, np.uint8)
    for value, c in _GT_VALUES.items():
        cls[data == value] = c
    cls = cls.T  # (x, y) like the kernels' grid
    onehot = (cls[..., None] == np.arange(len(BEV_CLASSES))).astype(np.float32)
    votes = onehot.reshape(g.nx, factor, g.ny, factor, -1).sum((1, 3))
    out = np.argmax(votes + _TIE_BREAK, -1).astype(np.uint8)
    out[votes.sum(-1) == 0] = IGNORE
    return out


def coarsen(targets: np.ndarray, factor: int) -> np.ndarray:
    """(..., nx, ny) class ids -> (..., nx/f, ny/f) by the same vote (for the decoder's coarse stage)."""
    *lead, nx, ny = targets.shape
    onehot = (targets[..., None] == np.arange(len(BEV_CLASSES))).astype(np.float32)
    votes = onehot.reshape(*lead, nx // factor, factor, ny // factor, factor, -1).sum((-4, -2))
    out = np.argmax(votes + _TIE_BREAK, -1).astype(np.uint8)
    out[votes.sum(-1) == 0] = IGNORE
    return out


def lighting_target(conditions: dict[str, Any] | None) -> int:
    if not conditions or conditions.get("lighting") not in LIGHTING:
        return -1
    return LIGHTING.index(conditions["lighting"])
