"""LLM tokens that carry where things are: BEV class posteriors pooled per side and distance ring, and an audio
token made of the event and direction posteriors.

Why not pooled features: the first version pooled BEV features into 5 m x 5 m cells with an untrained
projection, which averaged a pedestrian 1 m away into the same token as the free space around it, and the audio
tokens pooled over time without the direction. The questions ask per side how far, what and how many, and where
a sound comes from; these tokens lay exactly that out, in fixed slots of a d_enc vector, from the posteriors the
perception heads were trained to produce (docs/qa.md shows with a probe that the answers can be read from them).

Sides and distances follow the QA templates (edge/drives/qa.py): a side is the bearing from the body centre
(front within +-45 degrees), a distance is from the vehicle body, rings are 0.5 m wide and centred on the answer
bins (ring k covers [0.5 k - 0.25, 0.5 k + 0.25) m), the last ring reaches 6.5 m.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from torch import Tensor

from edge.encoders.config import AUDIO_EVENTS, BEV_CLASSES, DIRECTIONS
from edge.kernels import BevGrid

SIDES = ("front", "left", "rear", "right")
N_RINGS = 13
RING_WIDTH = 0.5
COUNT_RADIUS = 5.0
MIN_BLOB_CELLS = 3
BEV_TOKENS = len(SIDES) + 1  # one token per side, one for the whole surround
AUDIO_TOKENS = 1
_FREE, _STATIC, _VEHICLE, _VRU, _UNKNOWN = (BEV_CLASSES.index(c) for c in
                                            ("free", "static", "vehicle", "pedestrian_cyclist", "unknown"))


class SectorPooling:
    """(K, nx, ny) BEV class posteriors -> (BEV_TOKENS, d_enc) tokens; the geometry is computed once per grid."""

    def __init__(self, grid: BevGrid, footprint: tuple[float, float, float, float], d_enc: int) -> None:
        x0, x1, y0, y1 = footprint
        centres = grid.cell_centres()  # (nx, ny, 2)
        cx, cy = centres[..., 0], centres[..., 1]
        dx = np.maximum.reduce([x0 - cx, np.zeros_like(cx), cx - x1])
        dy = np.maximum.reduce([y0 - cy, np.zeros_like(cy), cy - y1])
        self.dist = np.hypot(dx, dy)
        bearing = np.degrees(np.arctan2(cy, cx - (x0 + x1) / 2))
        side = np.full(cx.shape, 2)  # rear
        side[(bearing >= -45) & (bearing <= 45)] = 0
        side[(bearing > 45) & (bearing < 135)] = 1
        side[(bearing < -45) & (bearing > -135)] = 3
        ring = np.floor((self.dist + RING_WIDTH / 2) / RING_WIDTH).astype(np.int64)
        outside_body = self.dist > 0
        self.side = side
        self.d_enc = d_enc
        # (side, ring) -> flat cell indices
        self.cells = [[np.flatnonzero((side == s) & (ring == r) & outside_body) for r in range(N_RINGS)]
                      for s in range(len(SIDES))]
        need = 7 * N_RINGS + 2
        if d_enc < max(need, 2 * 4 + 2):
            raise ValueError(f"SectorPooling needs d_enc >= {need}, got {d_enc}")

    def __call__(self, probs: np.ndarray) -> Tensor:
        k = probs.shape[0]
        flat = probs.reshape(k, -1)
        obstacle = flat[_STATIC] + flat[_VEHICLE] + flat[_VRU]
        out = np.zeros((BEV_TOKENS, self.d_enc), np.float32)
        labels = probs.argmax(0)
        blobs = {c: self._blobs(labels == c) for c in (_VEHICLE, _VRU)}
        for s in range(len(SIDES)):
            rows = []
            for name, values, how in (("obstacle", obstacle, "max"), ("vehicle", flat[_VEHICLE], "max"),
                                      ("vru", flat[_VRU], "max"), ("static", flat[_STATIC], "max"),
                                      ("free", flat[_FREE], "mean"), ("unknown", flat[_UNKNOWN], "mean")):
                ring = np.array([(values[c].max() if how == "max" else values[c].mean()) if c.size else 0.0
                                 for c in self.cells[s]], np.float32)
                rows.append(ring)
            rows.insert(1, np.maximum.accumulate(rows[0]))  # obstacle within ring k or nearer
            v = np.concatenate(rows)
            out[s, : v.size] = v
            out[s, v.size] = sum(1 for side, _ in blobs[_VEHICLE] if side == s) / 3.0
            out[s, v.size + 1] = sum(1 for side, _ in blobs[_VRU] if side == s) / 3.0
        for j, c in enumerate((_VEHICLE, _VRU)):  # whole surround: counts within the radius, one-hot 0/1/2/3+
            n = len(blobs[c])
            out[len(SIDES), 4 * j + min(n, 3)] = 1.0
            out[len(SIDES), 8 + j] = n / 3.0
        return torch.from_numpy(out)

    def _blobs(self, mask: np.ndarray) -> list[tuple[int, float]]:
        """Connected regions of one class within the count radius: (side of the nearest cell, its distance)."""
        near = (mask & (self.dist <= COUNT_RADIUS) & (self.dist > 0)).astype(np.uint8)
        n, lab, stats, _ = cv2.connectedComponentsWithStats(near, connectivity=8)
        out = []
        for i in range(1, n):
            if stats[i, cv2.CC_STAT_AREA] < MIN_BLOB_CELLS:
                continue
            idx = np.flatnonzero(lab.ravel() == i)
            j = idx[self.dist.ravel()[idx].argmin()]
            out.append((int(self.side.ravel()[j]), float(self.dist.ravel()[j])))
        return out


def audio_tokens(event_probs: np.ndarray, direction_probs: np.ndarray, d_enc: int) -> Tensor:
    """(AUDIO_TOKENS, d_enc): event posterior, direction posterior and their outer product (which sound where)."""
    ev = np.asarray(event_probs, np.float32).reshape(len(AUDIO_EVENTS))
    dr = np.asarray(direction_probs, np.float32).reshape(len(DIRECTIONS))
    v = np.concatenate([ev, dr, np.outer(ev, dr).ravel()])
    out = np.zeros((AUDIO_TOKENS, d_enc), np.float32)
    out[0, : v.size] = v
    return torch.from_numpy(out)


def ring_of(distance: float) -> int:
    """The ring index a body distance falls in (for tests and probes)."""
    return int(math.floor((distance + RING_WIDTH / 2) / RING_WIDTH))
