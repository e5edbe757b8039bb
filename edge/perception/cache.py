"""Preprocess a drive once into a compact .npz (images at model size, ranges, audio features, targets), so that
training epochs never decode JPEG or recompute spectra. Each modality's arrays come from its encoder's own
`training_sample` (edge.encoders.base.ModalityEncoder), stored as `<name>.<key>`, so training, evaluation and the
runtime see identical inputs; the core adds the frame's stamp, its BEV targets and its lighting condition.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge.drives.sync import SyncConfig, Synchronizer
from edge.encoders.base import Diagnostics, ModalityEncoder
from edge.encoders.config import PerceptionConfig
from edge.encoders.stack import PerceptionStack
from edge.errors import EdgeError
from edge.frames import Frame
from edge.perception.labels import bev_targets, lighting_target

CACHE_VERSION = 2  # 2: columns per modality, from the encoders' training hooks


def cache_path(bag: Path, cfg: PerceptionConfig, stride: int, cache_dir: Path, modalities: tuple[str, ...]) -> Path:
    meta = bag / "metadata.yaml"
    stamp = f"{meta.stat().st_size}:{meta.stat().st_mtime_ns}" if meta.exists() else ""
    key = hashlib.sha256(f"{CACHE_VERSION}|{bag.resolve()}|{stamp}|{cfg.to_json()}|{stride}|{','.join(modalities)}"
                         .encode()).hexdigest()
    return cache_dir / f"{bag.name}-{key[:12]}.npz"


def check_trainable(stack: PerceptionStack) -> None:
    """EdgeError naming each encoder that lacks the training hooks its modality needs (before any drive is read)."""
    missing = []
    for name, encoder in stack.encoders.items():
        hooks = ("training_sample", *(("bev_training",) if name in stack.bev_names else ()))
        absent = [h for h in hooks if getattr(type(encoder), h) is getattr(ModalityEncoder, h)]
        if absent:
            missing.append(f"modality '{name}' ({type(encoder).__name__}): no {', '.join(absent)}")
    if missing:
        raise EdgeError("the perception training cannot train " + "; ".join(missing)
                        + " (edge.encoders.base.ModalityEncoder's training hooks, docs/plugins.md)")


def sample_row(stack: PerceptionStack, sample: Frame, diag: Diagnostics) -> dict[str, np.ndarray]:
    """One cached row: the core's stamp and targets, then each modality's arrays."""
    cfg, gt = stack.cfg, sample.ground_truth
    row = {"stamp_ns": np.asarray(sample.stamp_ns), "bev": bev_targets(gt.bev if gt else None, cfg),
           "lighting": np.asarray(lighting_target(gt.conditions if gt else None))}
    for name, encoder in stack.encoders.items():
        row.update({f"{name}.{k}": np.asarray(v) for k, v in encoder.training_sample(sample, diag).items()})
    return row


def build_cache(bag: Path, stack: PerceptionStack, stride: int, cache_dir: Path, progress: bool = True) -> Path:
    """Write (or reuse) the cache of one drive; every `stride`-th synchronised sample is kept."""
    cfg = stack.cfg
    out = cache_path(bag, cfg, stride, cache_dir, tuple(stack.encoders))
    if out.exists():
        return out
    check_trainable(stack)
    cache_dir.mkdir(parents=True, exist_ok=True)
    sync = Synchronizer(bag, SyncConfig(image_reduce=cfg.image_reduce), plugins=stack.plugins.values())
    cols: dict[str, list[np.ndarray]] = {}
    diag = Diagnostics()
    bar = tqdm(desc=f"cache {bag.name}", unit="sample", disable=not progress, leave=False)
    for i, sample in enumerate(sync):
        if i % stride:
            continue
        for k, v in sample_row(stack, sample, diag).items():
            cols.setdefault(k, []).append(v)
        bar.update(1)
    bar.close()
    arrays = {k: np.stack(v) for k, v in cols.items()} or {"stamp_ns": np.zeros(0, np.int64)}
    arrays["meta"] = np.frombuffer(json.dumps({"bag": str(bag), "stride": stride, "config": cfg.to_json(),
                                               "modalities": list(stack.encoders),
                                               "diagnostics": diag.messages + sync.diagnostics}).encode(), np.uint8)
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(out)
    return out


def load_cache(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
