"""Probe against frame timing: why a stage re-measured after a frame (the runtime's probe) measured slower than the
same stage inside frames (issue 16: fisheye probes 50-170 ms, fisheye in frames 30-45 ms).

    python benchmarks/bench_probe_timing.py DRIVE [--frames 120] [--stage fisheye]

Runs the runtime's stack paced at 10 Hz on the drive's samples (1 encoder thread) and times `--stage` (wall and
thread-CPU ms, median over its runs) in these conditions: inside frames (every 3rd block of 20 frames runs it with
audio and the camera); as a probe after a frame that did not run it; as a probe right after a 2-thread probe of the
same stage; after an untimed run of it (warm); after a thread-count switch alone; the 2-thread probe itself. Equal
CPU time with more wall time means the probe was off the core (the OS gave it to other jobs after the frame used its
slice), not that the stage was colder. Prints the load average at the end: compare only rows of one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any, Callable

import torch

from edge.drives.bag import open_bag
from edge.drives.sync import SyncConfig, Synchronizer
from edge.runtime.cost_model import timed_call
from edge.runtime.runtime import Runtime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("drive")
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--stage", default="fisheye", choices=["fisheye", "ultrasonic", "audio"])
    a = ap.parse_args()
    rt = Runtime()
    sync = Synchronizer(open_bag(a.drive), SyncConfig(image_reduce=rt.stack.cfg.image_reduce))
    samples = [s for _, s in zip(range(a.frames), sync)]
    rt.calibrate(samples[0])
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}

    def timer(cond: str) -> Callable[[str, Callable[[], Any]], Any]:
        def run(name: str, fn: Callable[[], Any]) -> Any:
            out, wall, cpu = timed_call(fn)
            if out is not None:
                times.setdefault((cond, name), []).append((wall, cpu))
            return out
        return run

    def run(sample: Any, use: tuple[str, ...], threads: int, cond: str) -> None:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        rt.stack.run(sample, use, {"camera": 1.0}, timer=timer(cond), isolate=True)

    stage, due = (a.stage,), time.perf_counter()
    for i, s in enumerate(samples):
        phase = (i // 20) % 3
        run(s, (stage + ("audio", "camera")) if phase == 0 else ("audio", "camera"), 1, "inside frames")
        if phase == 1 and i % 4 == 0:
            run(s, stage, 1, "probe")
        elif phase == 1 and i % 4 == 2:
            run(s, stage, 2, "probe at 2 threads")
            run(s, stage, 1, "probe right after a 2-thread probe")
        elif phase == 2 and i % 4 == 0:
            run(s, stage, 1, "untimed warm-up run")
            run(s, stage, 1, "probe after a warm-up run")
        elif phase == 2 and i % 4 == 2:
            torch.set_num_threads(2)
            torch.set_num_threads(1)
            run(s, stage, 1, "probe after a thread switch alone")
        due += 0.1
        time.sleep(max(0.0, due - time.perf_counter()))
    print(f"{'condition':40s} {'n':>4s} {'wall ms p50':>12s} {'cpu ms p50':>11s}")
    for (cond, name), v in times.items():
        if name == a.stage and cond != "untimed warm-up run":
            print(f"{cond:40s} {len(v):4d} {statistics.median(w for w, _ in v):12.1f} "
                  f"{statistics.median(c for _, c in v):11.1f}")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
