"""Mini-batches from cached drives: each modality's columns, and the BEV task's inputs with modality dropout.

Nothing here names a modality: the BEV task iterates the stack's BEV encoders (registry order), each giving its
features through its training hooks (edge.encoders.base.ModalityEncoder: `drop_inputs`, `bev_training`).

Why each augmentation: whole-modality dropout so every subset of the BEV modalities is trained, not hoped for (the
runtime fuses whichever are present); the encoders' own sensor dropout (a missing camera, a missing reading) so a
dead sensor degrades gracefully, and their signal augmentation (photometric jitter) so night frames are not out
of distribution.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch
from torch import Tensor

from edge.encoders.base import Columns, TrainingRows
from edge.encoders.fusion import BevFusionHead
from edge.encoders.stack import PerceptionStack
from edge.perception.labels import coarsen

COARSE_FACTOR = 4  # the fusion's coarse stage is at a quarter of the grid resolution
Subset = tuple[str, ...]  # BEV modalities in registry order


@dataclass
class DropoutConfig:
    p_subset: float = 0.4  # a sample keeps a proper subset of the BEV modalities (each non-empty one equally likely)
    augment: bool = True   # the encoders' signal augmentation (photometric jitter)


def bev_subsets(names: Iterable[str]) -> list[Subset]:
    """Every non-empty subset of the BEV modalities, the largest first, each in registry order: the evaluation's
    subsets ("fisheye+ultrasonic", "fisheye", "ultrasonic" for the built-ins)."""
    names = tuple(names)
    return [s for k in range(len(names), 0, -1) for s in combinations(names, k)]


def subset_name(subset: Subset) -> str:
    return "+".join(subset)


def columns(data: Columns, name: str) -> dict[str, np.ndarray]:
    """One modality's cached columns (stored as `<name>.<key>`), by key."""
    prefix = f"{name}."
    return {k[len(prefix):]: v for k, v in data.items() if k.startswith(prefix)}


def training_rows(data: Columns, name: str) -> TrainingRows:
    """What a modality's head trains and is scored on: its columns and the core's targets."""
    return TrainingRows(columns(data, name), data["bev"], data["lighting"])


def subset_dropout(names: Subset, b: int, rng: np.random.Generator, p_subset: float) -> dict[str, np.ndarray]:
    """(b,) bool per BEV modality, whether it is kept: with probability p_subset a proper non-empty subset (smallest
    first, in registry order, one equal share of p_subset each), else all. With two it keeps the first alone in
    [0, p/2), the second alone in [p/2, p)."""
    use = {n: np.ones(b, bool) for n in names}
    r = rng.random(b)
    kept = [s for k in range(1, len(names)) for s in combinations(names, k)]
    step = p_subset / max(1, len(kept))
    for i, subset in enumerate(kept):
        hit = (r >= step * i) & (r < step * (i + 1))
        for n in names:
            if n not in subset:
                use[n][hit] = False
    return use


@dataclass
class BevInputs:
    """The BEV encoders' outputs for one batch, ready for the fusion head's masked form under any subset."""

    features: dict[str, Tensor]
    details: dict[str, Tensor | None]
    present: dict[str, np.ndarray]  # (B,) bool: the sample holds its data (else its input is off whatever the subset)

    def masked(self, fusion: BevFusionHead, use: dict[str, np.ndarray]) -> tuple[Tensor, ...]:
        """`forward_masked`'s arguments: the features in its order, the details it takes, one flag per input."""
        details = [self.details[i.name] for i in fusion.detailed]
        if any(d is None for d in details):
            raise ValueError(f"BEV training: the fusion head takes a detail map from each of "
                             f"{', '.join(i.name for i in fusion.detailed)}; one gave none")
        return (*(self.features[n] for n in fusion.names), *details,  # type: ignore[misc]
                *(torch.from_numpy(use[n] & self.present[n]) for n in fusion.names))


def bev_inputs(stack: PerceptionStack, data: Columns, idx: np.ndarray, rng: np.random.Generator | None,
               drop: DropoutConfig | None) -> tuple[BevInputs, dict[str, np.ndarray]]:
    """The BEV encoders' outputs for rows `idx` and the subset each sample keeps (all without `drop`). Random draws
    in this order: the subsets, each encoder's sensor dropout, each encoder's signal augmentation; with rng/drop
    None the batch is exactly the recorded input."""
    names = stack.bev_names
    cols = {n: {k: v[idx] for k, v in columns(data, n).items()} for n in names}
    use = {n: np.ones(len(idx), bool) for n in names}
    if rng is not None and drop is not None:
        use = subset_dropout(names, len(idx), rng, drop.p_subset)
        cols = {n: dict(stack.encoders[n].drop_inputs(cols[n], rng)) for n in names}
    signal = rng if drop is None or drop.augment else None
    outs = {n: stack.encoders[n].bev_training(cols[n], signal) for n in names}
    present = {n: cols[n]["present"].astype(bool) for n in names}
    return BevInputs({n: o[0] for n, o in outs.items()}, {n: o[1] for n, o in outs.items()}, present), use


def bev_targets_batch(data: Columns, idx: np.ndarray) -> tuple[Tensor, Tensor]:
    """The fine (nx, ny) and coarse (nx/4, ny/4) class targets of rows `idx`."""
    targets = data["bev"][idx]
    return (torch.from_numpy(targets.astype(np.int64)),
            torch.from_numpy(coarsen(targets, COARSE_FACTOR).astype(np.int64)))
