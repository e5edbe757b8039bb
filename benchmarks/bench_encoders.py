"""Encoder benchmark: latency and peak memory per modality encoder (batch 1, eval mode), with the front-camera ViT
unpruned and pruned to keep 0.5 and 0.25, and each kernel-backed path against its pure-PyTorch reference, all
measured in the same run so the ratios hold on a loaded machine.

    python benchmarks/bench_encoders.py [--model models/perception] [--repeat 20] [--threads 2] [--json FILE]

Latency: median wall time per call, calls of a compared pair interleaved. Peak memory: on the CPU the peak resident set
size above its pre-call level during one call (Linux VmHWM, reset before the call; the benchmark re-executes
itself with a fixed glibc mmap threshold so that freed tensor buffers leave the process and each call's
working memory shows); on a GPU torch.cuda.max_memory_allocated above the pre-call level.
Ratios: time (or memory) of the variant / time of the reference row named in `vs`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

import edge.kernels.bev_ops as bev_ops
from timing import timed_pair  # benchmarks/timing.py
from edge.encoders import PerceptionConfig, PerceptionStack, audio_features
from edge.kernels import prune as prune_mod
from edge.kernels import ultrasonic as us_mod
from edge.sensors.rig import load_rig


def peak_bytes(fn: Callable[[], Any], device: str) -> int:
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    return _rss_peak(fn)


def _proc_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def _rss_peak(fn: Callable[[], Any]) -> int:
    """Peak resident memory above the pre-call level during one call (Linux: VmHWM reset via clear_refs).

    Why RSS: CPU tensors do not go through tracemalloc and the profiler's memory events are not reliable across
    custom ops; RSS is what the device actually has to provide (allocator caching included)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return 0
    base = _proc_kb("VmRSS")
    fn()
    return max(0, _proc_kb("VmHWM") - base) * 1024


def reference_projector(self: Any, features: torch.Tensor, depth: Any = None) -> torch.Tensor:
    b, c = features.shape[0], features.shape[-1]
    out = bev_ops.bev_pool_reference(features.reshape(b, -1, c), None, self.offsets, self.src_idx,
                                     self.depth_idx[:0], self.weight)
    g = self.spec.grid
    return out.reshape(b, g.nx, g.ny, c)


def reference_raster(ranges: torch.Tensor, sensors: torch.Tensor, grid: Any, arc_thickness: float = 0.2,
                     per_sensor: bool = False) -> torch.Tensor:
    return us_mod.ultrasonic_raster_reference(sensors, ranges, grid.x_min, grid.y_min, grid.nx, grid.ny,
                                              grid.resolution, arc_thickness, per_sensor, dtype=torch.float32)


def reference_prune(x: torch.Tensor, k: int, scores: Any = None, q_cls: Any = None, keys: Any = None,
                    has_cls: bool = True, fuse: bool = True) -> prune_mod.PruneResult:
    return prune_mod.PruneResult(*prune_mod.prune_tokens_reference(x, scores, q_cls, keys, int(k), has_cls, fuse))


def run(model: Path | None, repeat: int, device: str) -> list[dict[str, Any]]:
    rig = load_rig()
    stack = PerceptionStack.load(model, rig) if model and (model / "fusion.safetensors").exists() \
        else PerceptionStack(PerceptionConfig(), rig)
    stack = stack.to(device).eval()
    cfg = stack.cfg
    imgs = torch.randn(1, 4, 3, *cfg.fisheye_hw, device=device)
    ranges = torch.tensor([[0.8, 1.5, 2.0, 5.0, float("inf"), 3.0, 1.2, 0.5, 2.2, 4.0, float("inf"), 1.0]],
                          device=device)
    pcm = (np.random.default_rng(0).standard_normal((4, int(cfg.audio_rate * cfg.audio_window_s))) * 2000).astype(np.int16)
    feats = {k: torch.from_numpy(v)[None].to(device) for k, v in audio_features(pcm).items()}
    front = torch.randn(1, 3, *cfg.front_hw, device=device)
    fe, _ = stack.fisheye(imgs)
    us, _, raster = stack.ultrasonic(ranges)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def call(fn: Callable[[], Any]) -> Callable[[], Any]:
        def wrapped() -> Any:
            with torch.no_grad():
                out = fn()
            sync()
            return out
        return wrapped

    rows: list[dict[str, Any]] = []

    def add(name: str, fn: Callable[[], Any], ref_name: str, ref: Callable[[], Any], patch: Any = None) -> None:
        t_var, t_ref = timed_pair(call(fn), call(ref), repeat)
        m_var, m_ref = peak_bytes(call(fn), device), peak_bytes(call(ref), device)
        for n, t, m in ((ref_name, t_ref, m_ref), (name, t_var, m_var)):
            if not any(r["name"] == n for r in rows):
                rows.append({"name": n, "ms": t * 1e3, "peak_mb": m / 2**20})
        rows[-1].update(vs=ref_name, ref_ms=t_ref * 1e3, time_ratio=t_var / t_ref, mem_ratio=(m_var / m_ref) if m_ref else None)

    fisheye = lambda: stack.fisheye(imgs)  # noqa: E731

    def fisheye_ref() -> Any:
        with mock.patch.object(type(stack.fisheye.projector), "forward", reference_projector):
            return stack.fisheye(imgs)

    add("fisheye (bev_pool kernel)", fisheye, "fisheye (PyTorch reference projection)", fisheye_ref)

    def ultrasonic_ref() -> Any:
        with mock.patch("edge.encoders.ultrasonic.ultrasonic_raster", reference_raster):
            return stack.ultrasonic(ranges)

    add("ultrasonic (raster kernel)", lambda: stack.ultrasonic(ranges), "ultrasonic (PyTorch reference raster)",
        ultrasonic_ref)
    add("audio (network on features)", lambda: stack.audio(feats["logmel"], feats["gcc"], feats["gcc_avg"]),
        "audio features (numpy log-mel + GCC-PHAT)", lambda: audio_features(pcm))
    for keep in (0.5, 0.25):
        add(f"camera ViT keep {keep}", lambda k=keep: stack.camera(front, k), "camera ViT unpruned (keep 1.0)",
            lambda: stack.camera(front, 1.0))

    def camera_ref_prune() -> Any:
        with mock.patch("edge.encoders.camera.prune_tokens", reference_prune):
            return stack.camera(front, 0.5)

    add("camera ViT keep 0.5 (prune kernel)", lambda: stack.camera(front, 0.5),
        "camera ViT keep 0.5 (PyTorch reference pruning)", camera_ref_prune)
    add("fusion head", lambda: stack.fusion({"fisheye": fe, "ultrasonic": us}, {"ultrasonic": raster}),
        "fisheye (bev_pool kernel)", fisheye)
    return rows


def main() -> None:
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        # A fixed mmap threshold makes glibc return every large tensor buffer on free, so the per-call RSS peak
        # measures that call's working memory instead of whatever the heap already holds (re-exec to apply it).
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("models/perception"))
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    report: dict[str, Any] = {"platform": platform.platform(), "processor": platform.processor(),
                              "torch": torch.__version__, "threads": args.threads, "results": {}}
    for dev in devices:
        rows = run(args.model, args.repeat, dev)
        report["results"][dev] = rows
        name = torch.cuda.get_device_name() if dev == "cuda" else f"CPU, {args.threads} threads"
        print(f"\n== {name} (batch 1, median of {args.repeat}) ==")
        print(f"{'path':<48}{'ms':>9}{'peak MB':>9}  ratio (time / memory) vs")
        for r in rows:
            ratio = ""
            if "vs" in r:
                mem = f"{r['mem_ratio']:.2f}" if r["mem_ratio"] is not None else "-"
                ratio = f"  {r['time_ratio']:.2f} / {mem}  vs {r['vs']} ({r['ref_ms']:.2f} ms in this pair)"
            print(f"{r['name']:<48}{r['ms']:>9.2f}{r['peak_mb']:>9.2f}{ratio}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
