"""`edge eval perception`: the stack on cached held-out drives, per modality subset and lighting condition.

Inputs come from the same cache (the plugins' own preprocessing) without augmentation; the BEV output is
compared with the ground truth resampled to the model grid (labels.bev_targets).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from edge.encoders.config import AUDIO_EVENTS, DIRECTIONS, LIGHTING
from edge.encoders.stack import PerceptionStack
from edge.perception.batches import audio_batch, bev_batch, image_batch
from edge.perception.labels import IGNORE
from edge.perception.metrics import Accuracy, BevMetrics, near_mask

SUBSETS = {"fisheye+ultrasonic": (True, True), "fisheye": (True, False), "ultrasonic": (False, True)}


@torch.no_grad()
def evaluate(stack: PerceptionStack, data: dict[str, np.ndarray], batch: int = 16, progress: bool = True
             ) -> dict[str, Any]:
    stack.eval()
    near = near_mask(stack.cfg, stack.footprint)
    bev = {name: {"all": BevMetrics(near), **{lt: BevMetrics(near) for lt in LIGHTING}} for name in SUBSETS}
    bev_idx = np.flatnonzero((data["bev"] != IGNORE).any((1, 2)))
    for start in tqdm(range(0, len(bev_idx), batch), desc="eval BEV", disable=not progress, leave=False):
        idx = bev_idx[start:start + batch]
        b = bev_batch(data, idx, None, None)
        fe, _ = stack.fisheye(b["images"], b["present"])
        us, _, raster = stack.ultrasonic(b["ranges"])
        gt = data["bev"][idx]
        light = data["lighting"][idx]
        n = len(idx)
        for name, (use_f, use_u) in SUBSETS.items():
            _, fine = stack.fusion.forward_masked(fe, us, raster, torch.full((n,), use_f), torch.full((n,), use_u))
            pred = fine.argmax(1).numpy().astype(np.uint8)
            bev[name]["all"].add(gt, pred)
            for li, lt in enumerate(LIGHTING):
                sel = light == li
                if sel.any():
                    bev[name][lt].add(gt[sel], pred[sel])
    ev_acc, dir_acc = Accuracy(AUDIO_EVENTS), Accuracy(DIRECTIONS)
    aud_idx = np.flatnonzero(data["audio_present"])
    for start in range(0, len(aud_idx), 64):
        idx = aud_idx[start:start + 64]
        a = audio_batch(data, idx, None)
        ev, dr, _ = stack.audio(a["logmel"], a["gcc"], a["gcc_avg"])
        ev_acc.add(a["event"].numpy(), ev.argmax(1).numpy())
        dir_acc.add(a["direction"].numpy(), dr.argmax(1).numpy())
    light_acc = Accuracy(LIGHTING)
    cam_idx = np.flatnonzero(data["front_present"] & (data["lighting"] >= 0))
    for start in range(0, len(cam_idx), 32):
        idx = cam_idx[start:start + 32]
        _, light, _ = stack.camera(image_batch(data["front"][idx], None))
        light_acc.add(data["lighting"][idx], light.argmax(1).numpy())
    return {
        "bev": {name: {k: m.summary() for k, m in per.items() if m.samples} for name, per in bev.items()},
        "audio_event": ev_acc.summary(), "audio_direction": dir_acc.summary(),
        "camera_lighting": light_acc.summary(), "camera_keep": stack.camera.keep,
    }


def format_report(res: dict[str, Any]) -> str:
    """Human-readable tables of an evaluate() result."""
    lines = ["BEV (grid 0.2 m; near5m = obstacle-vs-free within 5 m of the body, GT-unknown cells excluded)",
             f"{'subset':<20}{'light':<7}{'n':>5}{'obst@5m':>9}{'free@5m':>9}{'mIoU':>7}"
             + "".join(f"{c[:8]:>9}" for c in ("free", "static", "vehicle", "ped/cyc", "unknown"))]
    for name, per in res["bev"].items():
        for lt, s in per.items():
            iou = s["iou"]
            lines.append(f"{name:<20}{lt:<7}{s['samples']:>5}{_f(s['near5m_obstacle_iou']):>9}"
                         f"{_f(s['near5m_free_iou']):>9}{_f(s['miou']):>7}"
                         + "".join(f"{_f(v):>9}" for v in iou.values()))
    for key in ("audio_event", "audio_direction", "camera_lighting"):
        s = res[key]
        rec = ", ".join(f"{k} {_f(v)}" for k, v in s["recall"].items())
        lines.append(f"{key}: accuracy {_f(s['accuracy'])} over {s['samples']} samples (recall: {rec})")
    return "\n".join(lines)


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"
