"""LLM tokens that carry where things are: BEV class posteriors pooled per side and distance ring, and an audio
token made of the event and direction posteriors.

Why not pooled features: the first version pooled BEV features into 5 m x 5 m cells with an untrained
projection, which averaged a pedestrian 1 m away into the same token as the free space around it, and the audio
tokens pooled over time without the direction. The questions ask per side how far, what and how many, and where
a sound comes from; these tokens lay exactly that out, in fixed slots of a d_enc vector, from the posteriors the
perception heads were trained to produce (docs/qa.md shows with a probe that the answers can be read from them).

The ultrasonic side tokens also carry the echoes themselves (`EchoFeatures`): each range puts a point on its
sensor's beam axis, and the nearest such point per side, binned in the same rings, answers "how far" directly.
Why: the ultrasonic-alone posterior smears an arc over the cells it may lie on, so a probe read the distance bins
from it only 20-31 % of the time; the echo is the measurement the distance questions ask for.

Sides and distances follow the QA templates (edge/drives/qa.py): a side is the bearing from the body centre
(front within +-45 degrees), a distance is from the vehicle body, rings are 0.5 m wide and centred on the answer
bins (ring k covers [0.5 k - 0.25, 0.5 k + 0.25) m), the last ring reaches 6.5 m.
"""

from __future__ import annotations

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
ECHO_OFFSET = 7 * N_RINGS + 2  # side-token slots after the pooled posteriors and the two blob counts
ECHO_WIDTH = 2 * N_RINGS + 3
# One-hot token identity (front, left, rear, right, surround) after the echo slots. Why: modality keys carry no
# position (edge.llm.attention), and an aligner maps every token with the same weights, so without it the LLM sees
# four side tokens it cannot tell apart and cannot say on which side an obstacle is (a probe, which reads tokens by
# index, could).
SIDE_ID_OFFSET = ECHO_OFFSET + ECHO_WIDTH
AUDIO_TOKENS = 1
# What each modality's tokens mean, slot by slot, is versioned in edge/token_layouts.py: bump it when they change.
_FREE, _STATIC, _VEHICLE, _VRU, _UNKNOWN = (BEV_CLASSES.index(c) for c in
                                            ("free", "static", "vehicle", "pedestrian_cyclist", "unknown"))


def side_of_points(x: np.ndarray, y: np.ndarray, footprint: tuple[float, float, float, float]) -> np.ndarray:
    """Side index (SIDES order) of base_link points by their bearing from the body centre, as edge/drives/qa.py."""
    x0, x1, _, _ = footprint
    bearing = np.degrees(np.arctan2(y, x - (x0 + x1) / 2))
    side = np.full(np.shape(x), 2)  # rear
    side[(bearing >= -45) & (bearing <= 45)] = 0
    side[(bearing > 45) & (bearing < 135)] = 1
    side[(bearing < -45) & (bearing > -135)] = 3
    return side


def body_distance(x: np.ndarray, y: np.ndarray, footprint: tuple[float, float, float, float]) -> np.ndarray:
    """Distance of base_link points from the vehicle body rectangle (0 inside), as the QA distances are measured."""
    x0, x1, y0, y1 = footprint
    dx = np.maximum(np.maximum(x0 - x, x - x1), 0.0)
    dy = np.maximum(np.maximum(y0 - y, y - y1), 0.0)
    return np.hypot(dx, dy)


def ring_of(distance: np.ndarray) -> np.ndarray:
    """Ring index of a distance: ring k covers [0.5 k - 0.25, 0.5 k + 0.25) m, centred on the answer bins."""
    return np.floor((distance + RING_WIDTH / 2) / RING_WIDTH).astype(np.int64)


class SectorPooling:
    """(K, nx, ny) BEV class posteriors -> (BEV_TOKENS, d_enc) tokens; the geometry is computed once per grid."""

    def __init__(self, grid: BevGrid, footprint: tuple[float, float, float, float], d_enc: int) -> None:
        centres = grid.cell_centres()  # (nx, ny, 2)
        cx, cy = centres[..., 0], centres[..., 1]
        self.dist = body_distance(cx, cy, footprint)
        side = side_of_points(cx, cy, footprint)
        ring = ring_of(self.dist)
        self.side = side
        self.d_enc = d_enc
        # Cells grouped by (side, ring) once, so pooling is one reduceat per measure over all 4 x N_RINGS groups.
        group = np.where((self.dist > 0) & (ring < N_RINGS), side * N_RINGS + ring, -1).ravel()
        self.order = np.argsort(group, kind="stable")
        self.order = self.order[group[self.order] >= 0]
        sizes = np.bincount(group[self.order], minlength=len(SIDES) * N_RINGS)
        self.groups = np.flatnonzero(sizes)  # (side, ring) groups with cells; a grid too small leaves some empty
        self.starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])[self.groups]
        self.sizes = sizes[self.groups]
        need = SIDE_ID_OFFSET + BEV_TOKENS
        if d_enc < need:
            raise ValueError(f"SectorPooling needs d_enc >= {need}, got {d_enc}")

    def _pool(self, values: np.ndarray, how: str) -> np.ndarray:
        """(cells,) -> (sides, N_RINGS): max or mean per (side, ring); 0 where a group has no cell."""
        v = values[self.order]
        out = np.zeros(len(SIDES) * N_RINGS, np.float32)
        if how == "max":
            out[self.groups] = np.maximum.reduceat(v, self.starts)
        else:
            out[self.groups] = np.add.reduceat(v, self.starts) / self.sizes
        return out.reshape(len(SIDES), N_RINGS)

    def __call__(self, probs: np.ndarray) -> Tensor:
        flat = probs.reshape(probs.shape[0], -1)
        obstacle = self._pool(flat[_STATIC] + flat[_VEHICLE] + flat[_VRU], "max")
        rows = [obstacle, np.maximum.accumulate(obstacle, axis=1)]  # obstacle in ring k, and within ring k or nearer
        rows += [self._pool(flat[c], "max") for c in (_VEHICLE, _VRU, _STATIC)]
        rows += [self._pool(flat[c], "mean") for c in (_FREE, _UNKNOWN)]
        per_side = np.concatenate(rows, axis=1)  # (sides, 7 * N_RINGS)
        out = np.zeros((BEV_TOKENS, self.d_enc), np.float32)
        out[: len(SIDES), : per_side.shape[1]] = per_side
        labels = probs.argmax(0)
        blobs = {c: self._blobs(labels == c) for c in (_VEHICLE, _VRU)}
        for j, c in enumerate((_VEHICLE, _VRU)):
            for s in range(len(SIDES)):  # per side: blobs whose nearest cell is on that side
                out[s, per_side.shape[1] + j] = sum(1 for side, _ in blobs[c] if side == s) / 3.0
            n = len(blobs[c])  # whole surround: counts within the radius, one-hot 0/1/2/3+
            out[len(SIDES), 4 * j + min(n, 3)] = 1.0
            out[len(SIDES), 8 + j] = n / 3.0
        out[np.arange(BEV_TOKENS), SIDE_ID_OFFSET + np.arange(BEV_TOKENS)] = 1.0
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


class EchoFeatures:
    """(S,) ultrasonic ranges -> (sides, ECHO_WIDTH) per-side echo features for the ultrasonic side tokens.

    Per side: the ring of the nearest echo point (one-hot), "an echo within ring k or nearer" (cumulative), whether
    any echo lies on the side, whether every sensor facing the side heard nothing (+inf: clear up to its reach),
    and whether a sensor facing it said nothing at all (NaN: missing or invalid, so silence there is not evidence).
    A sensor faces the side its beam axis points into 2 m out (1 m out, the side sensors' axes are still in
    the front and rear sectors); ranges below min_range (-inf) count as ring 0."""

    def __init__(self, positions: np.ndarray, yaws: np.ndarray, footprint: tuple[float, float, float, float]) -> None:
        self.positions = np.asarray(positions, np.float64).reshape(-1, 2)
        self.axes = np.stack([np.cos(yaws), np.sin(yaws)], axis=1)
        self.footprint = footprint
        ahead = self.positions + 2.0 * self.axes
        self.facing = side_of_points(ahead[:, 0], ahead[:, 1], footprint)

    def __call__(self, ranges: np.ndarray) -> np.ndarray:
        r = np.asarray(ranges, np.float64).reshape(-1)
        out = np.zeros((len(SIDES), ECHO_WIDTH), np.float32)
        echo = np.isfinite(r) | (r == -np.inf)
        near = np.where(r == -np.inf, 0.0, np.where(echo, r, 0.0))
        points = self.positions + self.axes * near[:, None]
        dist = body_distance(points[:, 0], points[:, 1], self.footprint)
        side = side_of_points(points[:, 0], points[:, 1], self.footprint)
        for s in range(len(SIDES)):
            here = echo & (side == s)
            if here.any():
                ring = min(int(ring_of(dist[here].min())), N_RINGS - 1)
                out[s, ring] = 1.0
                out[s, N_RINGS + ring:2 * N_RINGS] = 1.0
                out[s, 2 * N_RINGS] = 1.0
            facing = self.facing == s
            if facing.any():
                out[s, 2 * N_RINGS + 1] = float(np.all(r[facing] == np.inf))
                out[s, 2 * N_RINGS + 2] = float(np.isnan(r[facing]).any())
        return out


def audio_tokens(event_probs: np.ndarray, direction_probs: np.ndarray, d_enc: int) -> Tensor:
    """(AUDIO_TOKENS, d_enc): event posterior, direction posterior and their outer product (which sound where)."""
    ev = np.asarray(event_probs, np.float32).reshape(len(AUDIO_EVENTS))
    dr = np.asarray(direction_probs, np.float32).reshape(len(DIRECTIONS))
    v = np.concatenate([ev, dr, np.outer(ev, dr).ravel()])
    out = np.zeros((AUDIO_TOKENS, d_enc), np.float32)
    out[0, : v.size] = v
    return torch.from_numpy(out)
