"""Frames beside a busy LLM: what the answer thread's lower OS priority buys the frame path, and what it costs answers.

    python benchmarks/bench_answer_priority.py DRIVE [--frames 60] [--rounds 2] [--nice 0 10 19] [--modalities ...]

Runs the runtime's stack paced at 10 Hz on the drive's samples (the plan's encoders at `--threads`, the timings of
`Runtime.step`'s stages) in blocks of `--frames` frames, one block per condition, the conditions in turn `--rounds`
times so that drift in the machine's load falls on each alike: no LLM (quiet), then the answer worker at each
`--nice` with a question always waiting (the worst case: questions faster than answers, as `edge eval scheduler
--llm` asks them). Prints per condition the frame latency p50 / p95 / p99 and the answers finished per second with
their generation time; then each LLM condition's frame p95 as a ratio of the quiet p95 measured in the same run.
Compare only rows of one run: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge.drives.bag import open_bag
from edge.drives.sync import SyncConfig, Synchronizer
from edge.runtime.answer_worker import AnswerWorker
from edge.runtime.answerer import make_answerer
from edge.runtime.runtime import Runtime
from edge.runtime.scheduler import Plan

REPO = Path(__file__).resolve().parents[1]
QUESTION = "How far is the nearest obstacle on the rear?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("drive")
    ap.add_argument("--frames", type=int, default=60, help="frames per block")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--nice", type=int, nargs="+", default=[0, 10, 19])
    ap.add_argument("--modalities", nargs="+", default=["fisheye", "ultrasonic", "audio"])
    ap.add_argument("--threads", type=int, default=1, help="encoder threads of the frame path")
    ap.add_argument("--aligners", default=str(REPO / "models" / "aligners"))
    a = ap.parse_args()
    answerer = make_answerer(a.aligners, None, 8)
    wanted = set(a.modalities)
    aligners = next((s.name for s in answerer.aligner_sets() if set(s.modalities) == wanted), "")
    plan = Plan(tuple(a.modalities), answerer.n_blocks, 1.0, aligners=aligners, threads=a.threads)
    rt = Runtime(answerer=None)
    sync = Synchronizer(open_bag(a.drive), SyncConfig(image_reduce=rt.stack.cfg.image_reduce))
    samples = [s for _, s in zip(range(200), sync)]
    torch.set_num_threads(a.threads)
    for s in samples[:3]:  # warm-up
        rt.stack.run(s, plan.modalities, {"camera": 1.0}, isolate=True)

    frame_ms: dict[str, list[float]] = {}
    answers: dict[str, list[dict[str, Any]]] = {}
    spent: dict[str, float] = {}
    conditions = ["quiet"] + [f"LLM nice {n}" for n in a.nice]
    i = 0
    for _ in range(a.rounds):
        for cond in conditions:
            worker = None if cond == "quiet" else AnswerWorker(answerer, 1000.0, nice=int(cond.split()[-1]))
            started, due = time.perf_counter(), time.perf_counter()
            for _ in range(a.frames):
                sample = samples[i % len(samples)]
                i += 1
                t = time.perf_counter()
                out = rt.stack.run(sample, plan.modalities, {"camera": 1.0}, isolate=True)
                if worker is not None and worker.pending < 2:  # a question always waiting
                    worker.submit([{"question": QUESTION, "_asked": time.perf_counter()}], plan, out.tokens,
                                  sample.stamp_ns)
                frame_ms.setdefault(cond, []).append((time.perf_counter() - t) * 1e3)
                if worker is not None:
                    answers.setdefault(cond, []).extend(worker.collect())
                due += 0.1
                time.sleep(max(0.0, due - time.perf_counter()))
            spent[cond] = spent.get(cond, 0.0) + time.perf_counter() - started
            if worker is not None:
                answers[cond].extend(worker.finish(30.0))
                worker.close()
                if worker.nice_applied is False:
                    print(f"{cond}: the thread's priority could not be lowered; the row is at nice 0")

    print(f"plan: {plan.describe()}; {a.rounds} rounds x {a.frames} frames per condition, 10 Hz")
    print(f"{'condition':14s} {'frames':>6s} {'p50 ms':>7s} {'p95 ms':>7s} {'p99 ms':>7s} "
          f"{'answers/s':>9s} {'generate p50 ms':>15s}")
    p95: dict[str, float] = {}
    for cond in conditions:
        v = np.array(frame_ms[cond])
        p50, p95[cond], p99 = (float(np.percentile(v, q)) for q in (50, 95, 99))
        done = answers.get(cond, [])
        rate = len(done) / spent[cond] if done else 0.0
        gen = statistics.median(x["generate_ms"] for x in done) if done else float("nan")
        print(f"{cond:14s} {len(v):6d} {p50:7.1f} {p95[cond]:7.1f} {p99:7.1f} {rate:9.2f} {gen:15.0f}")
    for cond in conditions[1:]:
        print(f"{cond}: frame p95 {p95[cond] / p95['quiet']:.2f}x the quiet p95")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
