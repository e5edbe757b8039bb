"""`edge launch [GRAPH.yaml] --arg NAME=VALUE`: start a graph of ROS 2 nodes as processes, like `ros2 launch`.

For machines without ROS launch (the `launch` package has no wheel).
A graph file lists processes in start order: an `edge` command line (`edge: [node, --no-llm]`) or any other
program (`exec: [...]`), each with an optional parameters file, `-p` parameters and `-r` remaps (handed over in a
`--ros-args` block, as any ROS 2 executable takes them). A process with `ready: TEXT` must print TEXT before the
next one starts. `${NAME}` in any string is replaced by `--arg NAME=VALUE` (`${config}`: ros_nodes/config).

Nothing is restarted: when a `required` process (the default) exits, the graph is shut down and its exit status is
returned; a process with `required: false` (a replay that ends) is reported and the others run on. SIGINT and
SIGTERM are forwarded: every process gets SIGINT (as `ros2 launch` sends), then SIGTERM, then SIGKILL to its
process group after `stop_timeout_s` each, so no process of the graph is left behind. Output lines are prefixed
with the process name. The default graph (ros_nodes/config/drive.graph.yaml) runs `edge node` on `edge replay`.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, model_validator

from edge.config import StrictModel, parse_model
from edge.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "config"
DEFAULT_GRAPH = CONFIG_DIR / "drive.graph.yaml"
Scalar = str | int | float | bool


class ProcessSpec(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    edge: list[str] | None = None  # an `edge` command line
    exec: list[str] | None = None  # any other program, e.g. [ros2, run, pkg, node]
    params_file: str | None = None
    parameters: dict[str, Scalar] = {}
    remap: dict[str, str] = {}
    ready: str | None = None
    required: bool = True

    @model_validator(mode="after")
    def _one_command(self) -> "ProcessSpec":
        if (self.edge is None) == (self.exec is None) or not (self.edge or self.exec):
            raise ValueError("give exactly one of `edge` or `exec`, not empty")
        return self

    def argv(self) -> list[str]:
        cmd = [sys.executable, "-m", "edge.cli", *self.edge] if self.edge is not None else list(self.exec)
        ros = (["--params-file", self.params_file] if self.params_file else []) + \
            [a for k, v in self.parameters.items() for a in ("-p", f"{k}:={_ros_value(v)}")] + \
            [a for k, v in self.remap.items() for a in ("-r", f"{k}:={v}")]
        return cmd + (["--ros-args", *ros] if ros else [])


class Graph(StrictModel):
    processes: list[ProcessSpec] = Field(min_length=1)
    ready_timeout_s: float = Field(300.0, gt=0)
    stop_timeout_s: float = Field(10.0, gt=0)


def _ros_value(v: Scalar) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def load_graph(path: str | Path, args: dict[str, str]) -> Graph:
    """Read a graph file with `${NAME}` replaced; an unknown key or an unset ${NAME} is an error naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, "<file>", f"cannot be read: {exc.strerror}") from None
    values = {"config": str(CONFIG_DIR), **args}
    missing = sorted({m for m in re.findall(r"\$\{(\w+)\}", text) if m not in values})
    if missing:
        raise ConfigError(path, "${" + missing[0] + "}", f"not set: give --arg {missing[0]}=VALUE")
    text = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], text)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(path, "<syntax>", "invalid YAML") from None
    graph = parse_model(data, Graph, path)
    names = [p.name for p in graph.processes]
    if len(set(names)) != len(names):
        raise ConfigError(path, "processes", "process names must be unique")
    return graph


class Running:
    """One started process: output relayed line by line with its name, `ready` text watched."""

    def __init__(self, spec: ProcessSpec, out: Any) -> None:
        self.spec, self.out = spec, out
        self.ready = threading.Event()
        self.proc = subprocess.Popen(spec.argv(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)  # own group: signals come from the launcher only
        self.pid = self.proc.pid
        self._relay = threading.Thread(target=self._read, daemon=True)
        self._relay.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            print(f"[{self.spec.name}] {line.rstrip()}", file=self.out, flush=True)
            if self.spec.ready and self.spec.ready in line:
                self.ready.set()

    def stop(self, timeout_s: float) -> int:
        """SIGINT, then SIGTERM, then SIGKILL to the process group, each after `timeout_s`."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
                try:
                    self.proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    continue
        if self.proc.poll() is None:
            os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait()
        try:
            os.killpg(self.pid, signal.SIGKILL)  # anything the process left in its group
        except ProcessLookupError:
            pass
        self._relay.join(timeout=5)
        return self.proc.returncode


def launch(graph: Graph, out: Any = sys.stdout, stop: threading.Event | None = None) -> int:
    """Run the graph until a required process exits or `stop` is set; every process is gone on return."""
    stop = stop or threading.Event()
    running: list[Running] = []
    status = 0
    try:
        for spec in graph.processes:
            if stop.is_set():
                break
            r = Running(spec, out)
            running.append(r)
            print(f"[launch] started {spec.name} (pid {r.pid}): {' '.join(spec.argv())}", file=out, flush=True)
            if spec.ready:
                deadline = time.monotonic() + graph.ready_timeout_s
                while not (r.ready.wait(0.1) or stop.is_set() or r.proc.poll() is not None
                           or time.monotonic() > deadline):
                    pass
                if not r.ready.is_set() and not stop.is_set():
                    why = f"exited with {r.proc.returncode}" if r.proc.poll() is not None else \
                        f"did not print {spec.ready!r} within {graph.ready_timeout_s:g} s"
                    print(f"[launch] {spec.name} {why}: shutting down", file=out, flush=True)
                    return r.proc.returncode or 1
        reported: set[str] = set()
        while not stop.is_set():
            for r in running:
                code = r.proc.poll()
                if code is None or r.spec.name in reported:
                    continue
                reported.add(r.spec.name)
                print(f"[launch] {r.spec.name} exited with {code}" +
                      ("" if r.spec.required else " (not required: the others run on)"), file=out, flush=True)
                if r.spec.required:
                    status = code
                    stop.set()
            stop.wait(0.1)
        return status
    finally:
        for r in reversed(running):
            code = r.stop(graph.stop_timeout_s)
            print(f"[launch] {r.spec.name} stopped ({code})", file=out, flush=True)


def run(args: argparse.Namespace) -> int:
    values = {}
    for item in args.arg:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError("--arg", item, "expected NAME=VALUE")
        values[name] = value
    graph = load_graph(args.graph, values)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        print(f"[launch] {signal.Signals(signum).name}: stopping the graph", flush=True)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    return launch(graph, sys.stdout, stop)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("launch", help="start a graph of ROS 2 nodes as processes (like ros2 launch)",
                       description=__doc__.splitlines()[0])
    p.add_argument("graph", nargs="?", default=str(DEFAULT_GRAPH),
                   help="graph YAML [ros_nodes/config/drive.graph.yaml: edge node on edge replay, needs --arg bag=]")
    p.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE", help="sets ${NAME} in the graph file")
    p.set_defaults(func=run)
