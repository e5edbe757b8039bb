"""`edge train <what>`: one sub-command per trainable part. Add one with one line in SUBCOMMANDS: a module path
and the name of its `register(subparsers)` function (the module is imported only when `edge train` is used)."""

from __future__ import annotations

import argparse

SUBCOMMANDS: dict[str, str] = {
    "perception": "edge.perception.cli:register_train",
    "aligners": "edge.llm.train_aligners:register",
}


def register(sub: argparse._SubParsersAction) -> None:
    from edge.cli import register_group

    register_group(sub, "train", "train models on generated drives (see `edge train <what> --help`)", SUBCOMMANDS)
