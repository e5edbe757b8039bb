"""`edge drive generate`, `edge drive info` and `edge drive qa-stats`."""

from __future__ import annotations

import argparse
import json

from edge.drives.scenarios import SCENARIOS


def register(sub: argparse._SubParsersAction) -> None:
    drive = sub.add_parser("drive", help="generate synthetic drives, inspect bags")
    cmds = drive.add_subparsers(dest="drive_command", metavar="ACTION")
    cmds.required = True

    gen = cmds.add_parser("generate", help="write a synthetic drive with ground truth as a rosbag2 bag (MCAP)")
    gen.add_argument("out", help="bag directory to create (must not exist, or be empty)")
    gen.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same drive [0]")
    gen.add_argument("--duration", type=float, default=60.0, help="simulated seconds [60]")
    gen.add_argument("--scenario", default="parking-day", choices=sorted(SCENARIOS), help="scenario [parking-day]")
    gen.add_argument("--rig", default=None, help="rig calibration YAML [calibration/default_rig.yaml]")
    gen.add_argument("--without", action="append", default=[], metavar="MODALITY",
                     help="leave out the sensors of this modality plugin's simulator (repeatable); the built-ins are "
                          "always simulated")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(func=_generate)

    info = cmds.add_parser("info", help="topics, types, counts, rates and duration of any rosbag2 bag")
    info.add_argument("bag", help="bag directory (or a single .mcap / .db3 file)")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_info)

    qa = cmds.add_parser("qa-stats", help="how spread each QA template's answers are over worlds (no rendering)")
    qa.add_argument("specs", nargs="+", help="scenario:seed:duration worlds, e.g. yard-day:1:30")
    qa.add_argument("--rig", default=None, help="rig calibration YAML [calibration/default_rig.yaml]")
    qa.set_defaults(func=_qa_stats)


def _generate(args: argparse.Namespace) -> int:
    from edge.drives.generate import generate_drive

    s = generate_drive(args.out, args.seed, args.duration, args.scenario, args.rig, progress=not args.quiet,
                       without=args.without)
    print(f"wrote {s.path}: {s.scenario}, seed {s.seed}, {s.duration:g} s, {s.messages} messages, "
          f"{s.size_bytes / 1e6:.1f} MB, {s.wall_seconds:.1f} s wall ({s.realtime_factor:.2f}x real time)")
    return 0


def _info(args: argparse.Namespace) -> int:
    from edge.drives.info import bag_info, format_info

    info = bag_info(args.bag)
    print(json.dumps(info, indent=2, default=str) if args.json else format_info(info))
    return 0


def _qa_stats(args: argparse.Namespace) -> int:
    """The balance table; exit 1 when a template's most frequent answer holds more than its limit."""
    from edge.drives.qa_stats import balance, format_balance, world_answers
    from edge.perception.data import DriveSpec
    from edge.sensors.rig import load_rig

    rig = load_rig(args.rig)
    pairs = []
    for item in args.specs:
        spec = DriveSpec.parse(item)
        pairs += world_answers(spec.scenario, spec.seed, spec.duration, rig)
    rows = balance(pairs)
    print(format_balance(rows))
    return 0 if all(r.ok for r in rows) else 1
