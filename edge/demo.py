"""`edge demo`: the main job on the embedded default, end to end on this machine.

Generates (or reuses) the default `day-to-night` drive with its siren event, runs the runtime over it with the
shipped perception models and the embedded LLM, and prints the plan changes and why, the answers against ground
truth, latency percentiles, peak memory and where the report is.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from edge.errors import EdgeError

DEFAULT_DRIVE = Path("drives") / "day-to-night-seed0"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job on the embedded default drive")
    p.add_argument("--drive", default=str(DEFAULT_DRIVE), help=f"bag to use or create [{DEFAULT_DRIVE}]")
    p.add_argument("--duration", type=float, default=60.0, help="simulated seconds if the drive is generated [60]")
    p.add_argument("--no-llm", action="store_true", help="perception and scheduling only")
    p.set_defaults(func=run)


def _ensure_drive(path: Path, duration: float) -> Path:
    """The drive to run: `path` when it reads cleanly, else a newly generated one (a damaged bag is kept)."""
    from edge.drives.bag import open_bag
    from edge.drives.generate import generate_drive

    if path.exists():
        try:
            bag = open_bag(path)
            if not bag.diagnostics:
                print(f"reusing {path}")
                return path
            print(f"{path} is damaged ({bag.diagnostics[0]}); keeping it and generating next to it")
        except EdgeError as exc:
            print(f"{path} cannot be read ({exc}); keeping it and generating next to it")
        path = path.with_name(path.name + f"-{int(time.time())}")
    summary = generate_drive(path, seed=0, duration=duration, scenario="day-to-night")
    print(f"generated {summary.path}: {summary.messages} messages, {summary.size_bytes / 1e6:.0f} MB, "
          f"{summary.realtime_factor:.2f}x real time")
    return summary.path


def run(args: argparse.Namespace) -> int:
    import json

    from edge.config import RuntimeConfig
    from edge.runtime.cli import print_summary, run_drive

    path = Path(args.drive)
    path = _ensure_drive(path, args.duration)
    cfg = RuntimeConfig(use_llm=not args.no_llm)
    summary = run_drive(path, cfg, Path("reports") / "demo")
    doc = json.loads((Path(summary["report"]) / "report.json").read_text())
    print("\nplan changes:")
    for sw in doc["switches"]:
        print(f"  {sw['t']:6.1f} s  {sw['plan']}  <- {sw['reason']}")
    answers = [(f["t"], a) for f in doc["frames"] for a in f["answers"]]
    if answers:
        print("\nanswers against ground truth:")
        for t, a in answers:
            mark = "ok " if a.get("correct") else "   "
            print(f"  {mark}{t:6.1f} s  {a['question']}  -> {a['response']!r}  (truth: {a.get('answer')!r}; "
                  f"modalities {'+'.join(a['modalities']) or 'none'})")
    print()
    print_summary(summary)
    return 0
