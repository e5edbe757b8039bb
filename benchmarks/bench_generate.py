"""Drive generation speed and bag size on this machine.

Prints simulated seconds per wall-clock second (target >= 1.0: real time) for the default rig, with the one-off
set-up (world, per-camera ray tables) counted and not counted, and the bag size scaled to a 60 s drive
(target <= about 200 MB). Usage: python benchmarks/bench_generate.py [--duration 20] [--scenario day-to-night]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

from edge.drives.generate import DriveGenerator, generate_drive
from edge.drives.scenarios import get_scenario
from edge.drives.world import build_world
from edge.sensors.rig import load_rig


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all threads); it too grows when other jobs contend for the cores."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--scenario", action="append", help="repeatable [day-to-night, parking-day]")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    scenarios = args.scenario or ["day-to-night", "parking-day"]
    rig = load_rig()
    results = []
    for name in scenarios:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            world = build_world(get_scenario(name), 1, args.duration, rig.footprint())
            DriveGenerator(world, rig, 1).close()
            setup = time.perf_counter() - t0
            cpu0 = _cpu_seconds()
            summary = generate_drive(Path(tmp) / "bag", seed=1, duration=args.duration, scenario=name, progress=False)
            cpu = _cpu_seconds() - cpu0
        steady = args.duration / max(summary.wall_seconds - setup, 1e-9)
        row = {
            "scenario": name, "duration_s": args.duration, "wall_s": round(summary.wall_seconds, 2),
            "setup_s": round(setup, 2), "realtime_factor": round(summary.realtime_factor, 2),
            "realtime_factor_without_setup": round(steady, 2),
            "mb_per_60s": round(summary.size_bytes / 1e6 * 60.0 / args.duration, 1),
            "cpu_s": round(cpu, 2), "simulated_s_per_cpu_s": round(args.duration / max(cpu, 1e-9), 2),
        }
        results.append(row)
        print(f"{name:14s} generation {row['realtime_factor']:.2f}x real time "
              f"({row['realtime_factor_without_setup']:.2f}x after {row['setup_s']:.1f} s set-up; target >= 1.0), "
              f"bag {row['mb_per_60s']:.0f} MB per 60 s (target <= 200); "
              f"{row['simulated_s_per_cpu_s']:.2f} simulated s per CPU s")
    meta = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "load_avg": os.getloadavg()}
    print(f"machine: {meta}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "machine": meta}, indent=2))


if __name__ == "__main__":
    main()
