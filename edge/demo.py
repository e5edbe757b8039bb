"""`edge demo`: the main job on the embedded default, end to end on this machine.

Generates (or reuses) the default `day-to-night` drive with its siren event, then reads it back the way the
runtime does (time-aligned samples) and summarises what every stream delivered and what the ground truth says.
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

from edge.errors import EdgeError

DEFAULT_DRIVE = Path("drives") / "day-to-night-seed0"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job on the embedded default drive")
    p.add_argument("--drive", default=str(DEFAULT_DRIVE), help=f"bag to use or create [{DEFAULT_DRIVE}]")
    p.add_argument("--duration", type=float, default=60.0, help="simulated seconds if the drive is generated [60]")
    p.set_defaults(func=run)


def _ensure_drive(path: Path, duration: float) -> None:
    from edge.drives.bag import open_bag
    from edge.drives.generate import generate_drive

    if path.exists():
        try:
            bag = open_bag(path)
            if not bag.diagnostics:
                print(f"reusing {path}")
                return
            print(f"{path} is damaged ({bag.diagnostics[0]}); keeping it and generating next to it")
        except EdgeError as exc:
            print(f"{path} cannot be read ({exc}); keeping it and generating next to it")
        path = path.with_name(path.name + f"-{int(time.time())}")
    summary = generate_drive(path, seed=0, duration=duration, scenario="day-to-night")
    print(f"generated {summary.path}: {summary.messages} messages, {summary.size_bytes / 1e6:.0f} MB, "
          f"{summary.realtime_factor:.2f}x real time")


def run(args: argparse.Namespace) -> int:
    from edge.drives.info import bag_info
    from edge.drives.sync import SyncConfig, Synchronizer

    path = Path(args.drive)
    _ensure_drive(path, args.duration)
    info = bag_info(path)
    print(f"{path}: {info['duration_s']:.1f} s, {info['message_count']} messages on {len(info['topics'])} topics")
    sync = Synchronizer(path, SyncConfig(image_reduce=2))
    present: collections.Counter[str] = collections.Counter()
    lighting: list[tuple[float, str]] = []
    events: dict[str, list[list[float]]] = collections.defaultdict(list)  # class -> [start, end] spans
    qa = 0
    n = 0
    started = time.perf_counter()
    first = None
    for sample in sync:
        first = first or sample.stamp_ns
        t = (sample.stamp_ns - first) / 1e9
        n += 1
        for key in sample.source_stamps:
            present[key.split("/")[0] if key.startswith("ultrasonic/") else key] += 1
        gt = sample.ground_truth
        if gt and gt.conditions and (not lighting or lighting[-1][1] != gt.conditions["lighting"]):
            lighting.append((t, gt.conditions["lighting"]))
        for event in (gt.audio_events or []) if gt else []:
            spans = events[event["class"]]
            if spans and t - spans[-1][1] < 0.25:
                spans[-1][1] = t
            else:
                spans.append([t, t])
        qa += len(gt.qa) if gt else 0
    wall = time.perf_counter() - started
    print(f"read {n} synchronised samples in {wall:.1f} s ({info['duration_s'] / max(wall, 1e-9):.1f}x real time)")
    for key in sorted(present):
        per = present[key] / n / (12 if key == "ultrasonic" else 1)
        print(f"  {key:22s} present in {100 * per:5.1f} % of samples")
    print("lighting: " + ", ".join(f"{label} from {t:.0f} s" for t, label in lighting))
    for name, spans in sorted(events.items()):
        print(f"audio event {name}: " + ", ".join(f"{a:.1f}-{b:.1f} s" for a, b in spans))
    print(f"ground-truth question-answer pairs: {qa}")
    for d in sync.diagnostics:
        print(f"diagnostic: {d}")
    return 0
