"""Metrics of `edge eval perception`: confusion-matrix IoU per class, obstacle-versus-free IoU near the vehicle,
classification accuracy. Accumulators, so drives of any length are evaluated in batches."""

from __future__ import annotations

import numpy as np

from edge.encoders.config import BEV_CLASSES, OBSTACLE_CLASSES, PerceptionConfig
from edge.perception.labels import IGNORE


def near_mask(cfg: PerceptionConfig, footprint: tuple[float, float, float, float], radius: float = 5.0) -> np.ndarray:
    """(nx, ny) bool: cell centres within `radius` metres of the vehicle body (outside the body itself)."""
    c = cfg.bev_grid.cell_centres()
    x0, x1, y0, y1 = footprint
    dx = np.maximum(np.maximum(x0 - c[..., 0], c[..., 0] - x1), 0.0)
    dy = np.maximum(np.maximum(y0 - c[..., 1], c[..., 1] - y1), 0.0)
    d = np.hypot(dx, dy)
    inside = (c[..., 0] >= x0) & (c[..., 0] <= x1) & (c[..., 1] >= y0) & (c[..., 1] <= y1)
    return (d <= radius) & ~inside


class Confusion:
    """K x K counts, rows = ground truth, columns = prediction."""

    def __init__(self, k: int) -> None:
        self.m = np.zeros((k, k), np.int64)

    def add(self, gt: np.ndarray, pred: np.ndarray, mask: np.ndarray | None = None) -> None:
        valid = gt != IGNORE
        if mask is not None:
            valid &= mask
        k = self.m.shape[0]
        self.m += np.bincount(gt[valid].astype(np.int64) * k + pred[valid].astype(np.int64),
                              minlength=k * k).reshape(k, k)

    def iou(self) -> np.ndarray:
        tp = np.diag(self.m).astype(np.float64)
        denom = self.m.sum(0) + self.m.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, tp / denom, np.nan)

    @property
    def total(self) -> int:
        return int(self.m.sum())


def obstacle_binary(classes: np.ndarray) -> np.ndarray:
    """Class ids -> 1 obstacle (static, vehicle, pedestrian/cyclist), 0 otherwise; IGNORE and unknown kept apart."""
    out = np.isin(classes, OBSTACLE_CLASSES).astype(np.uint8)
    out[classes == IGNORE] = IGNORE
    return out


class BevMetrics:
    """Per-class IoU over the whole grid, and obstacle-vs-free IoU within 5 m (GT unknown cells excluded)."""

    def __init__(self, near: np.ndarray) -> None:
        self.classes = Confusion(len(BEV_CLASSES))
        self.near = Confusion(2)
        self.near_mask = near
        self.samples = 0

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """gt, pred: (B, nx, ny) class ids."""
        self.classes.add(gt, pred)
        known = (gt != IGNORE) & (gt != BEV_CLASSES.index("unknown")) & self.near_mask[None]
        self.near.add(obstacle_binary(gt), obstacle_binary(pred), known)
        self.samples += gt.shape[0]

    def summary(self) -> dict[str, float | int | dict[str, float]]:
        iou = self.classes.iou()
        near = self.near.iou()
        return {
            "samples": self.samples,
            "iou": {name: _r(v) for name, v in zip(BEV_CLASSES, iou)},
            "miou": _r(np.nanmean(iou)) if np.isfinite(iou).any() else None,
            "near5m_obstacle_iou": _r(near[1]), "near5m_free_iou": _r(near[0]),
            "near5m_mean_iou": _r(np.nanmean(near)) if np.isfinite(near).any() else None,
        }


class Accuracy:
    def __init__(self, labels: tuple[str, ...]) -> None:
        self.labels = labels
        self.m = Confusion(len(labels))

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        keep = gt >= 0
        self.m.add(gt[keep].astype(np.uint8), pred[keep].astype(np.uint8))

    def summary(self) -> dict[str, float | int | dict[str, float]]:
        m = self.m.m
        n = int(m.sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.diag(m) / m.sum(1)
        return {"samples": n, "accuracy": _r(np.trace(m) / n) if n else None,
                "recall": {lab: _r(r) for lab, r in zip(self.labels, recall)}, "confusion": m.tolist()}


def _r(v: float) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), 4)
