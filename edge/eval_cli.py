"""`edge eval <what>`: one sub-command per evaluated part. Add one with one line in SUBCOMMANDS: a module path
and the name of its `register(subparsers)` function (the module is imported only when `edge eval` is used)."""

from __future__ import annotations

import argparse

SUBCOMMANDS: dict[str, str] = {
    "perception": "edge.perception.cli:register_eval",
    "qa": "edge.llm.eval_qa:register",
    "scheduler": "edge.runtime.evaluate:add_parser",
}


def register(sub: argparse._SubParsersAction) -> None:
    from edge.cli import register_group

    register_group(sub, "eval", "evaluate trained models on held-out drives (see `edge eval <what> --help`)", SUBCOMMANDS)
