"""Backend benchmark: latency of each perception network part on eager PyTorch and on ONNX Runtime (and TensorRT
where it can run), on inputs computed from a real sample of a generated drive, all measured in the same run so the
ratios hold on a loaded machine.

    python benchmarks/bench_backends.py [--bag DRIVE] [--repeat 30] [--threads 1 2] [--cache DIR] [--json FILE]

Latency: median wall time per batch-1 call, the eager call and the engine call of a module interleaved. Ratio:
engine time / eager time of the same pair (below 1 = the engine is faster). Also printed: the whole
`PerceptionStack.run` on the sample (preprocessing, kernels and decoding included), the engine build time (fresh
cache) and the time to load every engine again from the cache (key, file hash and verification included), the
max abs difference from eager on the real sample, the threads (the same count for torch and ONNX Runtime's
intra-op pool) and the load average around each measurement (on a shared machine a 2-thread eager call stalls
whenever another job takes one core; measure 1 thread too).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from timing import timed_pair  # benchmarks/timing.py
from edge.backends.trt import missing_requirements
from edge.names import BackendName
from edge.drives.sync import SyncConfig, Synchronizer
from edge.encoders import PerceptionStack
from edge.encoders.base import image_tensor
from edge.encoders.camera import keep_variant

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def real_sample(bag: Path | None, workdir: Path) -> Any:
    if bag is None:
        from edge.drives.generate import generate_drive

        print("generating a 2 s drive (siren, seed 7) ...", file=sys.stderr)
        bag = generate_drive(workdir / "drive", seed=7, duration=2.0, scenario="siren", progress=False).path
    samples = list(Synchronizer(bag, SyncConfig(image_reduce=4)))
    return next(s for s in reversed(samples) if s.get("audio") is not None and s.sensor("camera", "front") is not None)


def network_inputs(stack: PerceptionStack, sample: Any) -> dict[tuple[str, str], tuple[torch.Tensor, ...]]:
    """Each network part's inputs from the sample, as the encoders compute them."""
    imgs, present = stack.fisheye.preprocess(sample)
    fe = (image_tensor(imgs)[None], torch.from_numpy(present)[None])
    raster = stack.ultrasonic.raster(torch.from_numpy(stack.ultrasonic.preprocess(sample))[None])
    feats = stack.audio.preprocess(sample)
    with torch.no_grad():
        f_bev, _ = stack.fisheye(*fe)
        u_bev, _ = stack.ultrasonic.features(raster)
    on = torch.ones(1, dtype=torch.bool)
    out = {("fisheye", ""): fe, ("ultrasonic", ""): (raster,),
           ("audio", ""): tuple(torch.from_numpy(feats[k])[None] for k in ("logmel", "gcc", "gcc_avg"))}
    for keep in (1.0, 0.5, 0.25):
        out[("camera", keep_variant(keep))] = (image_tensor(stack.camera.preprocess(sample))[None],)
    out[("fusion", "")] = (f_bev, u_bev, raster, on, on.clone())
    return out


def bench_backend(backend: str, model: Path, sample: Any, repeat: int, cache: Path) -> dict[str, Any]:
    eager = PerceptionStack.load(model)
    stack = PerceptionStack.load(model)
    t0 = time.perf_counter()
    stack.set_backend(backend, cache_dir=cache, progress=True)
    build_s = time.perf_counter() - t0
    fresh = sum(e.built for e in stack.engines.engines.values())
    t0 = time.perf_counter()
    PerceptionStack.load(model).set_backend(backend, cache_dir=cache)  # everything from the cache now
    load_s = time.perf_counter() - t0
    rows = []
    for (name, variant), args in network_inputs(eager, sample).items():
        net = getattr(eager, name).network(variant)
        engine = stack.engines.get(name, variant, getattr(stack, name))
        with torch.no_grad():
            ref = net(*args)
            got = engine(*args)
            err = max(float((g - r).abs().max()) for g, r in zip(got, ref))
            t_eager, t_engine = timed_pair(lambda: net(*args), lambda: engine(*args), repeat)
        rows.append({"module": name + (f" {variant}" if variant else ""), "eager_ms": t_eager * 1e3,
                     "engine_ms": t_engine * 1e3, "ratio": t_engine / t_eager, "max_abs_err": err,
                     "engine": engine.path.name, "threads": engine.info.get("intra_op_threads")})
    t_eager, t_engine = timed_pair(lambda: eager.run(sample, settings={"camera": 0.5}),
                                   lambda: stack.run(sample, settings={"camera": 0.5}), repeat)
    rows.append({"module": "PerceptionStack.run (all, keep 0.5)", "eager_ms": t_eager * 1e3,
                 "engine_ms": t_engine * 1e3, "ratio": t_engine / t_eager, "max_abs_err": None, "engine": "",
                 "threads": None})
    return {"backend": backend, "build_s": build_s, "engines_built": fresh, "load_from_cache_s": load_s,
            "providers": next(iter(stack.engines.engines.values())).info.get("providers"), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=REPO / "models" / "perception")
    ap.add_argument("--bag", type=Path, default=None, help="drive to take the sample from [a generated 2 s drive]")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--threads", type=int, nargs="+", default=[2],
                    help="thread counts to measure (torch and ONNX Runtime intra-op alike) [2]")
    ap.add_argument("--cache", type=Path, default=None, help="engine cache [a fresh temporary one: builds measured]")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    missing = missing_requirements()
    backends = [BackendName.ONNXRUNTIME] + ([] if missing else [BackendName.TENSORRT])
    report: dict[str, Any] = {"platform": platform.platform(), "cpu": cpu_model(), "cores": os.cpu_count(),
                              "torch": torch.__version__, "results": []}
    try:
        import onnxruntime

        report["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        sample = real_sample(args.bag, Path(tmp))
        for threads in args.threads:
            torch.set_num_threads(threads)  # the engines' sessions take the same count when they are created
            for backend in backends:
                load_before = os.getloadavg()[0]
                res = bench_backend(backend, args.model, sample, args.repeat, args.cache or Path(tmp) / "engines")
                res.update(threads=threads, load_avg=(load_before, os.getloadavg()[0]))
                report["results"].append(res)
    print(f"\nbatch 1, median of {args.repeat} interleaved calls; torch {torch.__version__}, onnxruntime "
          f"{report.get('onnxruntime')}; {report['cores']} cores ({report['cpu']})")
    for res in report["results"]:
        print(f"\n== {res['backend']} vs eager, {res['threads']} thread(s) each (providers {res['providers']}); "
              f"load average {res['load_avg'][0]:.2f} before, {res['load_avg'][1]:.2f} after ==")
        if res["engines_built"]:
            print(f"built {res['engines_built']} engines in {res['build_s']:.1f} s; ", end="")
        print(f"all loaded again from the cache (hash + verification) in {res['load_from_cache_s']:.1f} s")
        print(f"{'network part':<38}{'eager ms':>10}{'engine ms':>11}{'ratio':>8}{'max abs err':>13}")
        for r in res["rows"]:
            err = f"{r['max_abs_err']:.2g}" if r["max_abs_err"] is not None else "-"
            print(f"{r['module']:<38}{r['eager_ms']:>10.2f}{r['engine_ms']:>11.2f}{r['ratio']:>8.2f}{err:>13}")
    if missing:
        print("\ntensorrt: not run here, missing " + "; ".join(missing))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
