"""Preprocess a drive once into a compact .npz (images at model size, ranges, audio features, targets), so that
training epochs never decode JPEG or recompute spectra. Arrays are produced by the plugins' own `preprocess`,
so training, evaluation and the runtime see identical inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edge.drives.sync import SyncConfig, Synchronizer
from edge.encoders.audio import audio_features
from edge.encoders.base import Diagnostics
from edge.encoders.config import PerceptionConfig
from edge.perception.labels import audio_targets, bev_targets, lighting_target

CACHE_VERSION = 1
AUDIO_KEYS = ("logmel", "gcc", "gcc_avg")


def cache_path(bag: Path, cfg: PerceptionConfig, stride: int, cache_dir: Path) -> Path:
    meta = bag / "metadata.yaml"
    stamp = f"{meta.stat().st_size}:{meta.stat().st_mtime_ns}" if meta.exists() else ""
    key = hashlib.sha256(f"{CACHE_VERSION}|{bag.resolve()}|{stamp}|{cfg.to_json()}|{stride}".encode()).hexdigest()
    return cache_dir / f"{bag.name}-{key[:12]}.npz"


def build_cache(bag: Path, stack: Any, stride: int, cache_dir: Path, progress: bool = True) -> Path:
    """Write (or reuse) the cache of one drive; every `stride`-th synchronised sample is kept."""
    cfg: PerceptionConfig = stack.cfg
    out = cache_path(bag, cfg, stride, cache_dir)
    if out.exists():
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)
    sync = Synchronizer(bag, SyncConfig(image_reduce=cfg.image_reduce))
    cols: dict[str, list[Any]] = {k: [] for k in (
        "stamp_ns", "fisheye", "fisheye_present", "front", "front_present", "ranges", "audio_present", "bev",
        "event", "direction", "lighting", *AUDIO_KEYS)}
    diag = Diagnostics()
    footprint = stack.footprint
    zero_audio = None
    bar = tqdm(desc=f"cache {bag.name}", unit="sample", disable=not progress, leave=False)
    for i, sample in enumerate(sync):
        if i % stride:
            continue
        imgs, present = stack.fisheye.preprocess(sample, diag)
        front = stack.camera.preprocess(sample, diag)
        feats = stack.audio.preprocess(sample, diag)
        gt = sample.ground_truth
        cols["stamp_ns"].append(sample.stamp_ns)
        cols["fisheye"].append(imgs)
        cols["fisheye_present"].append(present)
        cols["front"].append(front if front is not None else np.zeros((*cfg.front_hw, 3), np.uint8))
        cols["front_present"].append(front is not None)
        cols["ranges"].append(stack.ultrasonic.preprocess(sample, diag))
        if feats is None:
            n = int(round(cfg.audio_rate * cfg.audio_window_s))
            zero_audio = zero_audio or {k: np.zeros_like(v) for k, v in audio_features(np.zeros((4, n), np.int16)).items()}
            feats = zero_audio
        for k in AUDIO_KEYS:
            cols[k].append(feats[k].astype(np.float16))
        cols["audio_present"].append(sample.get("audio") is not None)
        cols["bev"].append(bev_targets(gt.bev if gt else None, cfg))
        ev, dr = audio_targets(gt.audio_events if gt else None, footprint)
        cols["event"].append(ev)
        cols["direction"].append(dr)
        cols["lighting"].append(lighting_target(gt.conditions if gt else None))
        bar.update(1)
    bar.close()
    arrays = {k: np.stack(v) if v else np.zeros(0) for k, v in cols.items()}
    arrays["meta"] = np.frombuffer(json.dumps({"bag": str(bag), "stride": stride, "config": cfg.to_json(),
                                               "diagnostics": diag.messages + sync.diagnostics}).encode(), np.uint8)
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(out)
    return out


def load_cache(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
