"""`edge eval perception`: the stack on cached held-out drives, per BEV modality subset and lighting condition, and
each other modality's own head.

Inputs come from the same cache (the plugins' own preprocessing) without augmentation; the BEV output is
compared with the ground truth resampled to the model grid (labels.bev_targets), for every non-empty subset of
the stack's BEV modalities (named by their names joined with "+" in registry order: "fisheye+ultrasonic", ...),
each on the samples that hold the data of all its modalities. The heads' results are their encoders'
(`head_scores`: "audio_event", "camera_lighting", ... as accuracy summaries, and settings such as "camera_keep").
Nothing here names a modality.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from edge.encoders.base import ClassScores
from edge.encoders.config import LIGHTING
from edge.encoders.stack import PerceptionStack
from edge.perception.batches import bev_inputs, bev_subsets, subset_name, training_rows
from edge.perception.labels import IGNORE
from edge.perception.metrics import Accuracy, BevMetrics, near_mask


@torch.no_grad()
def evaluate(stack: PerceptionStack, data: dict[str, np.ndarray], batch: int = 16, progress: bool = True
             ) -> dict[str, Any]:
    stack.eval()
    res: dict[str, Any] = {"bev": evaluate_bev(stack, data, batch, progress)} if stack.fusion is not None else {}
    for name, encoder in stack.encoders.items():
        for key, value in encoder.head_scores(training_rows(data, name)).items():
            res[key] = _accuracy(value) if isinstance(value, ClassScores) else value
    return res


def evaluate_bev(stack: PerceptionStack, data: dict[str, np.ndarray], batch: int, progress: bool
                 ) -> dict[str, dict[str, Any]]:
    """BEV metrics per subset of the BEV modalities and per lighting (those with samples)."""
    fusion = stack.fusion
    assert fusion is not None
    near = near_mask(stack.cfg, stack.footprint)
    subsets = bev_subsets(stack.bev_names)
    bev = {subset_name(s): {"all": BevMetrics(near), **{lt: BevMetrics(near) for lt in LIGHTING}} for s in subsets}
    bev_idx = np.flatnonzero((data["bev"] != IGNORE).any((1, 2)))
    for start in tqdm(range(0, len(bev_idx), batch), desc="eval BEV", disable=not progress, leave=False):
        idx = bev_idx[start:start + batch]
        inputs, _ = bev_inputs(stack, data, idx, None, None)
        gt = data["bev"][idx]
        light = data["lighting"][idx]
        for subset in subsets:
            scored = np.logical_and.reduce([inputs.present[n] for n in subset])
            if not scored.any():
                continue
            use = {n: np.full(len(idx), n in subset) for n in stack.bev_names}
            _, fine = fusion.forward_masked(*inputs.masked(fusion, use))
            pred = fine.argmax(1).numpy().astype(np.uint8)
            metrics = bev[subset_name(subset)]
            metrics["all"].add(gt[scored], pred[scored])
            for li, lt in enumerate(LIGHTING):
                sel = scored & (light == li)
                if sel.any():
                    metrics[lt].add(gt[sel], pred[sel])
    return {name: {k: m.summary() for k, m in per.items() if m.samples} for name, per in bev.items()}


def _accuracy(scores: ClassScores) -> dict[str, Any]:
    acc = Accuracy(scores.labels)
    acc.add(scores.truth, scores.predicted)
    return acc.summary()


def format_report(res: dict[str, Any]) -> str:
    """Human-readable tables of an evaluate() result."""
    w = max([20, *(len(name) + 2 for name in res.get("bev", {}))])
    lines = ["BEV (grid 0.2 m; near5m = obstacle-vs-free within 5 m of the body, GT-unknown cells excluded)",
             f"{'subset':<{w}}{'light':<7}{'n':>5}{'obst@5m':>9}{'free@5m':>9}{'mIoU':>7}"
             + "".join(f"{c[:8]:>9}" for c in ("free", "static", "vehicle", "ped/cyc", "unknown"))]
    for name, per in res.get("bev", {}).items():
        for lt, s in per.items():
            iou = s["iou"]
            lines.append(f"{name:<{w}}{lt:<7}{s['samples']:>5}{_f(s['near5m_obstacle_iou']):>9}"
                         f"{_f(s['near5m_free_iou']):>9}{_f(s['miou']):>7}"
                         + "".join(f"{_f(v):>9}" for v in iou.values()))
    for key, s in res.items():
        if key == "bev" or not isinstance(s, dict) or "accuracy" not in s:
            continue
        rec = ", ".join(f"{k} {_f(v)}" for k, v in s["recall"].items())
        lines.append(f"{key}: accuracy {_f(s['accuracy'])} over {s['samples']} samples (recall: {rec})")
    return "\n".join(lines)


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"
