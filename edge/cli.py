"""The `edge` command line: one sub-command group per module, registered below.

Each command module exposes `register(subparsers)`; it adds its parser and sets `func` to a callable
taking the parsed namespace and returning an exit code. Modules are imported lazily per command so
that `edge drive info` does not pay for importing torch or rclpy.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command name -> module providing register(); keep this list the single place commands are wired.
COMMAND_MODULES: dict[str, str] = {
    "drive": "edge.drives.cli",
    "demo": "edge.demo",
    "run": "edge.runtime.cli",
    "report": "edge.runtime.report_cli",
    "bench": "edge.runtime.bench",
    "replay": "ros_nodes.replay",
    "node": "ros_nodes.runtime_node",
    "launch": "ros_nodes.launcher",
    "train": "edge.train_cli",
    "eval": "edge.eval_cli",
    "adapt": "edge.llm.adapt",
    "calibrate": "edge.calibration.cli",
}


def register_group(sub: argparse._SubParsersAction, name: str, help_text: str, subcommands: dict[str, str]) -> None:
    """A command with sub-commands, each given as 'module:function' taking the inner subparsers (e.g. train, eval)."""
    parser = sub.add_parser(name, help=help_text)
    inner = parser.add_subparsers(dest=f"{name}_what", metavar="WHAT")
    inner.required = True
    for target in subcommands.values():
        module, func = target.split(":")
        getattr(importlib.import_module(module), func)(inner)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge", description="mpnp-edge runtime tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in COMMAND_MODULES.items():
        if only is not None and name != only:
            sub.add_parser(name, help=f"(see `edge {name} --help`)")
            continue
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = argv[0] if argv and argv[0] in COMMAND_MODULES else None
    parser = build_parser(only=chosen)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except EdgeError as exc:  # user-facing errors: one clear line, no traceback
        print(f"edge: error: {exc}", file=sys.stderr)
        return 2


from edge.errors import EdgeError  # noqa: E402  (kept at the end: errors has no imports of its own)

if __name__ == "__main__":
    raise SystemExit(main())
