"""`edge report DIR`: finish the report of a run that died before writing its summary (killed outright, out of
memory, power lost), from the frames it streamed to DIR/frames.jsonl."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="rebuild report.json's summary and report.html from frames.jsonl after a "
                                      "run died without writing them")
    p.add_argument("directory", type=Path, help="the run's report directory (holding report.json, frames.jsonl)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from edge.runtime.report import read_report, recover

    out, n = recover(args.directory)
    summary = read_report(out)["summary"]
    p50 = summary["latency_ms"]["p50"]
    print(f"edge report: {n} frames recovered from {out / 'frames.jsonl'}; wrote {out / 'report.json'} and "
          f"{out / 'report.html'} (partial; latency p50 {p50 if p50 is None else round(p50, 1)} ms)", file=sys.stderr)
    return 0
