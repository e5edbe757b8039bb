"""`edge train <what>`: one sub-command per trainable part. Add one with one line in SUBCOMMANDS: a module path
and the name of its `register(subparsers)` function (the module is imported only when `edge train` is used)."""

from __future__ import annotations

import argparse
import importlib

SUBCOMMANDS: dict[str, str] = {
    "perception": "edge.perception.cli:register_train",
    "aligners": "edge.llm.train_aligners:register",
}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train models on generated drives (see `edge train <what> --help`)")
    inner = parser.add_subparsers(dest="train_what", metavar="WHAT")
    inner.required = True
    for target in SUBCOMMANDS.values():
        module, func = target.split(":")
        getattr(importlib.import_module(module), func)(inner)
