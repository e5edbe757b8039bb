"""Mini-batches from cached drives, with the augmentations and modality dropout training relies on.

Why each augmentation: photometric jitter (and darkening) so night frames are not out of distribution;
per-camera and per-sensor dropout so a dead camera or transducer degrades gracefully; whole-modality dropout so
fisheye-only and ultrasonic-only maps are trained, not hoped for; microphone relabelling (a square array turned by
90 degrees or mirrored) so every direction is seen with every event, not only where the scenarios put sirens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from edge.encoders.audio import MIRROR_DIR, MIRROR_PERM, ROTATE_PERM, permute_features
from edge.encoders.camera import FRONT_MAP
from edge.encoders.config import OBSTACLE_CLASSES, PerceptionConfig
from edge.perception.labels import IGNORE, coarsen

COARSE_FACTOR = 4  # the fusion's coarse stage is at a quarter of the grid resolution


@dataclass
class DropoutConfig:
    p_fisheye_only: float = 0.2
    p_ultrasonic_only: float = 0.2
    p_camera: float = 0.05      # one fisheye camera missing
    p_sensor: float = 0.05      # one ultrasonic reading missing (NaN)
    photometric: bool = True


def image_batch(imgs: np.ndarray, rng: np.random.Generator | None) -> Tensor:
    """uint8 (B, ..., H, W, 3) -> float (B, ..., 3, H, W) in [-1, 1], with per-sample gain/offset jitter."""
    x = torch.from_numpy(imgs).movedim(-1, -3).float() / 127.5 - 1.0
    if rng is not None:
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        gain = torch.from_numpy(rng.uniform(0.6, 1.3, shape[0]).astype(np.float32)).reshape(shape)
        offset = torch.from_numpy(rng.uniform(-0.15, 0.15, shape[0]).astype(np.float32)).reshape(shape)
        x = ((x + 1.0) * gain - 1.0 + offset).clamp(-1.0, 1.0)
    return x


def bev_batch(data: dict[str, np.ndarray], idx: np.ndarray, rng: np.random.Generator | None,
              drop: DropoutConfig | None) -> dict[str, Tensor]:
    """Inputs and targets of the BEV task; with rng/drop None the batch is exactly the recorded input."""
    present = data["fisheye_present"][idx].copy()
    ranges = data["ranges"][idx].copy()
    b = len(idx)
    use_f = np.ones(b, bool)
    use_u = np.ones(b, bool)
    if rng is not None and drop is not None:
        r = rng.random(b)
        use_u[r < drop.p_fisheye_only] = False
        use_f[(r >= drop.p_fisheye_only) & (r < drop.p_fisheye_only + drop.p_ultrasonic_only)] = False
        cam_drop = rng.random(b) < drop.p_camera
        present[cam_drop, rng.integers(0, present.shape[1], cam_drop.sum())] = False
        s_drop = rng.random(ranges.shape) < drop.p_sensor
        ranges[s_drop] = np.nan
    targets = data["bev"][idx]
    return {
        "images": image_batch(data["fisheye"][idx], rng if (drop is None or drop.photometric) else None),
        "present": torch.from_numpy(present), "ranges": torch.from_numpy(ranges),
        "use_fisheye": torch.from_numpy(use_f), "use_ultrasonic": torch.from_numpy(use_u),
        "targets": torch.from_numpy(targets.astype(np.int64)),
        "coarse": torch.from_numpy(coarsen(targets, COARSE_FACTOR).astype(np.int64)),
    }


def _transform_perm(k: int, mirror: bool) -> tuple[list[int], list[int]]:
    """Microphone relabelling and direction map for a k x 90 degree turn, then an optional mirror."""
    perm, dmap = [0, 1, 2, 3], [0, 1, 2, 3]
    for _ in range(k):
        perm = [perm[p] for p in ROTATE_PERM]
        dmap = [(d + 1) % 4 for d in dmap]
    if mirror:
        perm = [perm[p] for p in MIRROR_PERM]
        dmap = [MIRROR_DIR[d] for d in dmap]
    return perm, dmap


def audio_batch(data: dict[str, np.ndarray], idx: np.ndarray, rng: np.random.Generator | None) -> dict[str, Tensor]:
    feats = {k: data[k][idx].astype(np.float32) for k in ("logmel", "gcc", "gcc_avg")}
    direction = data["direction"][idx].copy()
    if rng is not None:
        perm, dmap = _transform_perm(int(rng.integers(0, 4)), bool(rng.integers(0, 2)))
        feats = permute_features(feats, perm)
        direction = np.where(direction >= 0, np.asarray(dmap)[np.clip(direction, 0, 3)], -1)
    out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feats.items()}
    out["event"] = torch.from_numpy(data["event"][idx].astype(np.int64))
    out["direction"] = torch.from_numpy(direction.astype(np.int64))
    return out


def front_map_targets(bev: np.ndarray, cfg: PerceptionConfig) -> tuple[np.ndarray, np.ndarray]:
    """(B, nx, ny) classes -> (B, 8, 8) obstacle-present targets over x 4..12 m, y -4..4 m, and a validity mask."""
    from edge.encoders.camera import FRONT_MAP_EXTENT

    g = cfg.bev_grid
    x0, x1, y0, y1 = FRONT_MAP_EXTENT
    i0, i1 = round((x0 - g.x_min) / g.resolution), round((x1 - g.x_min) / g.resolution)
    j0, j1 = round((y0 - g.y_min) / g.resolution), round((y1 - g.y_min) / g.resolution)
    region = bev[:, i0:i1, j0:j1]
    bi, bj = (i1 - i0) // FRONT_MAP[0], (j1 - j0) // FRONT_MAP[1]
    blocks = region.reshape(len(bev), FRONT_MAP[0], bi, FRONT_MAP[1], bj)
    obstacle = np.isin(blocks, OBSTACLE_CLASSES).any((2, 4))
    valid = (blocks != IGNORE).any((2, 4))
    return obstacle.astype(np.float32), valid


def camera_batch(data: dict[str, np.ndarray], idx: np.ndarray, rng: np.random.Generator | None,
                 cfg: PerceptionConfig) -> dict[str, Tensor]:
    fmap, valid = front_map_targets(data["bev"][idx], cfg)
    return {"image": image_batch(data["front"][idx], rng), "lighting": torch.from_numpy(data["lighting"][idx]),
            "front_map": torch.from_numpy(fmap), "front_valid": torch.from_numpy(valid)}
