"""`edge bench`: latency and throughput of the runtime, measured the way ros2_benchmark measures a graph.

Samples of a drive are preloaded (decoded once, before timing), then played into the runtime's bounded queue at a
fixed rate by a producer thread while the runtime consumes them; each output is matched to its input by header
stamp, so latency includes queueing. Warm-up frames are excluded. A peak-throughput search finds the highest rate
with at most 5 % of samples dropped. The JSON report carries the device metadata needed to compare runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge.errors import EdgeError
from edge.names import BACKENDS, POLICIES, BackendName, Policy
from edge.runtime.cli import add_topic_options, topic_names, topic_remap

DROP_LIMIT = 0.05


def device_metadata(bag: Path) -> dict[str, Any]:
    """CPU/GPU model, library versions, Jetson power mode and clocks where present, and a hash of the data."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    meta: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
                            "torch": torch.__version__, "platform": platform.platform()}
    for mod in ("onnxruntime", "transformers", "cv2", "numpy"):
        try:
            meta[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            meta[mod] = None
    meta["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    tegra = Path("/etc/nv_tegra_release")
    if tegra.exists():  # Jetson: L4T release, power mode and clocks
        meta["jetson_release"] = tegra.read_text().splitlines()[0]
        for key, cmd in (("power_mode", ["nvpmodel", "-q"]), ("clocks", ["jetson_clocks", "--show"])):
            try:
                meta[key] = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
            except (OSError, subprocess.SubprocessError) as exc:
                meta[key] = f"unavailable ({exc.__class__.__name__})"
    digest = hashlib.sha256()
    for f in sorted(p for p in Path(bag).iterdir() if p.is_file()) if Path(bag).is_dir() else [Path(bag)]:
        digest.update(f.name.encode())
        digest.update(str(f.stat().st_size).encode())
        with open(f, "rb") as fh:
            digest.update(fh.read(1 << 20))
    meta["data_sha256"] = digest.hexdigest()[:16]
    meta["load_avg"] = os.getloadavg()
    return meta


def latency_stats(ms: list[float]) -> dict[str, float | None]:
    if not ms:
        return {k: None for k in ("min", "p50", "p95", "p99", "max", "jitter")}
    a = np.asarray(ms)
    return {"min": float(a.min()), "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max()), "jitter": float(a.std())}


def fixed_rate_run(runtime: Any, samples: list[Any], rate_hz: float, warmup: int) -> dict[str, Any]:
    """Play `samples` at `rate_hz` into the runtime's bounded queue; match outputs to inputs by header stamp."""
    submitted: dict[int, float] = {}
    done = threading.Event()
    runtime.dropped = 0

    def produce() -> None:
        start = time.perf_counter()
        for i, s in enumerate(samples):
            delay = start + i / rate_hz - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            submitted[s.stamp_ns] = time.perf_counter()
            runtime.submit(s)
        done.set()

    latencies: list[tuple[int, float, dict[str, float]]] = []
    producer = threading.Thread(target=produce, daemon=True)
    t0 = time.perf_counter()
    producer.start()
    while not (done.is_set() and not runtime.queue):
        if not runtime.queue:
            time.sleep(0.0005)
            continue
        result = runtime.step(runtime.queue.popleft())
        latencies.append((result.stamp_ns, (time.perf_counter() - submitted[result.stamp_ns]) * 1e3,
                          result.timings_ms))
    wall = time.perf_counter() - t0
    order = {s.stamp_ns: i for i, s in enumerate(samples)}
    kept = [(ms, tm) for stamp, ms, tm in latencies if order[stamp] >= warmup]
    stages: dict[str, list[float]] = {}
    for _, tm in kept:
        for k, v in tm.items():
            stages.setdefault(k.split("@")[0], []).append(v)
    n_measured = max(len(samples) - warmup, 1)
    dropped = n_measured - len(kept)
    return {"rate_hz": rate_hz, "samples": len(samples), "processed": len(latencies), "dropped": dropped,
            "drop_rate": dropped / n_measured, "throughput_hz": len(latencies) / wall if wall else 0.0,
            "latency_ms": latency_stats([ms for ms, _ in kept]),
            "stages_ms": {k: latency_stats(v) for k, v in sorted(stages.items())}}


def peak_throughput(runtime: Any, samples: list[Any], warmup: int, lo: float = 1.0, hi: float = 60.0,
                    steps: int = 5) -> dict[str, Any]:
    """The highest rate with at most DROP_LIMIT drops, by bisection between lo and hi Hz."""
    best: dict[str, Any] | None = None
    for _ in range(steps):
        mid = (lo * hi) ** 0.5
        run = fixed_rate_run(runtime, samples, mid, warmup)
        if run["drop_rate"] <= DROP_LIMIT:
            best, lo = run, mid
        else:
            hi = mid
    return {"rate_hz": lo if best else None, "run": best}


def run_bench(bag: Path, rates: list[float], frames: int, warmup: int, policy: str, use_llm: bool,
              peak: bool, backend: str = BackendName.EAGER, remap: Any = None) -> dict[str, Any]:
    """`remap` (edge.drives.topics.TopicRemap): read a bag recorded under other topic names or a namespace."""
    from edge.drives.bag import open_bag
    from edge.drives.sync import SyncConfig, Synchronizer
    from edge.runtime.runtime import Runtime
    from edge.runtime.scheduler import Budget

    bag_handle = open_bag(bag, remap)  # first: a bad remap is an error before the models load
    answerer = None
    if use_llm:
        from edge.runtime.answerer import make_answerer

        answerer = make_answerer(Path(__file__).resolve().parents[2] / "models" / "aligners", None, 8)
    # Static Policy.ALL by default: the benchmark measures the pipeline, not the scheduler's choice.
    runtime = Runtime(policy=policy, budget=Budget(latency_ms=1e9), answerer=answerer, queue_depth=2, backend=backend,
                      progress=True)
    print(f"preloading {frames} samples from {bag} ...", file=sys.stderr)
    samples = []
    for s in Synchronizer(bag_handle, SyncConfig(image_reduce=runtime.stack.cfg.image_reduce, ground_truth=False)):
        samples.append(s)
        if len(samples) >= frames:
            break
    if len(samples) <= warmup:
        raise EdgeError(f"{bag}: only {len(samples)} samples; need more than the {warmup} warm-up frames")
    runtime.calibrate(samples[0])
    report: dict[str, Any] = {"meta": device_metadata(bag), "bag": str(bag),
                              "topic_names": topic_names(remap), "policy": policy, "llm": use_llm,
                              "backend": runtime.stack.backend, "warmup_frames": warmup, "fixed_rate": []}
    for rate in rates:
        print(f"fixed rate {rate:g} Hz ...", file=sys.stderr)
        report["fixed_rate"].append(fixed_rate_run(runtime, samples, rate, warmup))
    if peak:
        print("peak-throughput search ...", file=sys.stderr)
        report["peak"] = peak_throughput(runtime, samples, warmup)
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return report


def compare(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Side-by-side p50/p99 latency and throughput of two bench reports, with B/A ratios."""
    lines = [f"A: {a['meta'].get('cpu')} / {a['meta'].get('gpu')}, {a.get('backend', BackendName.EAGER)}  ({a['bag']})",
             f"B: {b['meta'].get('cpu')} / {b['meta'].get('gpu')}, {b.get('backend', BackendName.EAGER)}  ({b['bag']})",
             f"{'rate':>8} {'A p50':>9} {'B p50':>9} {'B/A':>6} {'A p99':>9} {'B p99':>9} {'B/A':>6} {'A drop':>7} {'B drop':>7}"]
    by_rate = {r["rate_hz"]: r for r in b["fixed_rate"]}
    for ra in a["fixed_rate"]:
        rb = by_rate.get(ra["rate_hz"])
        if rb is None:
            continue
        la, lb = ra["latency_ms"], rb["latency_ms"]
        ratio = lambda x, y: f"{y / x:6.2f}" if x and y else "   n/a"  # noqa: E731
        lines.append(f"{ra['rate_hz']:>7g}Hz {la['p50'] or 0:9.1f} {lb['p50'] or 0:9.1f} {ratio(la['p50'], lb['p50'])} "
                     f"{la['p99'] or 0:9.1f} {lb['p99'] or 0:9.1f} {ratio(la['p99'], lb['p99'])} "
                     f"{ra['drop_rate']:7.1%} {rb['drop_rate']:7.1%}")
    pa, pb = (a.get("peak") or {}).get("rate_hz"), (b.get("peak") or {}).get("rate_hz")
    if pa or pb:
        lines.append(f"peak throughput: A {pa or 0:.1f} Hz, B {pb or 0:.1f} Hz")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="latency and throughput of the runtime on a drive; `edge bench compare A B`",
                       usage="edge bench BAG [options] | edge bench compare A.json B.json")
    p.add_argument("bag", help="drive to replay (preloaded), or 'compare'")
    p.add_argument("reports", nargs="*", help="with 'compare': the two bench reports")
    p.add_argument("--rates", type=float, nargs="+", default=[10.0, 30.0], help="fixed rates in Hz [10 30]")
    p.add_argument("--frames", type=int, default=120, help="samples to preload [120]")
    p.add_argument("--warmup", type=int, default=10, help="frames excluded from the statistics [10]")
    p.add_argument("--policy", default=Policy.ALL.value, choices=POLICIES, help="[all]")
    p.add_argument("--backend", default=BackendName.EAGER.value, choices=BACKENDS,
                   help="encoders' network parts on this backend [eager]")
    p.add_argument("--llm", action="store_true", help="also attach modalities to the LLM each frame")
    p.add_argument("--no-peak", action="store_true", help="skip the peak-throughput search")
    p.add_argument("--json", default="bench.json", help="output file [bench.json]")
    add_topic_options(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.bag == "compare":
        if len(args.reports) != 2:
            raise EdgeError("usage: edge bench compare A.json B.json")
        try:
            a, b = (json.loads(Path(p).read_text()) for p in args.reports)
        except (OSError, json.JSONDecodeError) as exc:
            raise EdgeError(f"cannot read bench reports: {exc}") from None
        print(compare(a, b))
        return 0
    if args.reports:
        raise EdgeError(f"unexpected arguments {args.reports}; usage: edge bench BAG [options]")
    report = run_bench(Path(args.bag), args.rates, args.frames, args.warmup, args.policy, args.llm, not args.no_peak,
                       args.backend, topic_remap(args))
    print(f"backend: {report['backend']}")
    Path(args.json).write_text(json.dumps(report, indent=1))
    for run in report["fixed_rate"]:
        lat = run["latency_ms"]
        print(f"{run['rate_hz']:g} Hz: p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, drops {run['drop_rate']:.1%}, "
              f"throughput {run['throughput_hz']:.1f} Hz")
    if report.get("peak"):
        print(f"peak throughput with <= {DROP_LIMIT:.0%} drops: {report['peak']['rate_hz'] or 0:.1f} Hz")
    print(f"peak RSS {report['peak_rss_mb']:.0f} MB; report: {args.json}")
    return 0
