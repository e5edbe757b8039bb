"""`edge launch`: graph files validated, processes started in order with their ROS arguments, nothing restarted,
signals forwarded, and no process of the graph left behind (SIGINT, then SIGTERM, then SIGKILL to its group)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from edge.errors import ConfigError
from ros_nodes.launcher import DEFAULT_GRAPH, launch, load_graph

ROOT = Path(__file__).resolve().parents[1]

POLITE = textwrap.dedent("""
    import json, pathlib, signal, sys, time
    signal.signal(signal.SIGINT, lambda *a: (print("polite got SIGINT", flush=True), sys.exit(0)))
    print(json.dumps(sys.argv[1:]), flush=True)
    pathlib.Path(sys.argv[1]).write_text("up")
    print("polite ready", flush=True)
    time.sleep(120)
""")
AFTER = "import pathlib, sys; print('after saw ready' if pathlib.Path(sys.argv[1]).exists() else 'too early')"
STUBBORN = textwrap.dedent("""
    import signal, subprocess, sys, time
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print(f"grandchild {child.pid}", flush=True)
    time.sleep(120)
""")


def write_graph(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "graph.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def scripts(tmp_path: Path) -> dict[str, str]:
    for name, body in (("polite", POLITE), ("after", AFTER), ("stubborn", STUBBORN)):
        (tmp_path / f"{name}.py").write_text(body)
    return {"py": sys.executable, "dir": str(tmp_path)}


def gone(pid: int, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_bad_graphs_are_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'\$\{bag\}': not set"):
        load_graph(DEFAULT_GRAPH, {})
    assert [p.name for p in load_graph(DEFAULT_GRAPH, {"bag": "/d"}).processes] == ["runtime", "replay"]
    g = write_graph(tmp_path, "processes:\n  - name: a\n    edge: [node]\n    restart: true\n")
    with pytest.raises(ConfigError, match="processes.0.restart': unknown key"):
        load_graph(g, {})
    g = write_graph(tmp_path, "processes:\n  - name: a\n    edge: [node]\n    exec: [ls]\n")
    with pytest.raises(ConfigError, match="exactly one of"):
        load_graph(g, {})


def test_default_graph_hands_the_node_its_parameters_file() -> None:
    runtime, replay = load_graph(DEFAULT_GRAPH, {"bag": "/d"}).processes
    argv = runtime.argv()
    assert argv[1:4] == ["-m", "edge.cli", "node"]
    assert argv[argv.index("--params-file") + 1] == str(ROOT / "ros_nodes" / "config" / "runtime.param.yaml")
    assert "use_sim_time:=true" in argv and replay.required is False


def test_graph_runs_in_order_passes_ros_args_and_leaves_nothing_behind(tmp_path: Path) -> None:
    v = scripts(tmp_path)
    marker = tmp_path / "polite.up"
    graph = load_graph(write_graph(tmp_path, f"""
        processes:
          - name: polite
            exec: [{v['py']}, {v['dir']}/polite.py, {marker}]
            params_file: /p.yaml
            parameters: {{policy: all, use_sim_time: true}}
            remap: {{odom: /vehicle/odom}}
            ready: polite ready
          - name: after
            exec: [{v['py']}, {v['dir']}/after.py, {marker}]
            required: false
          - name: stubborn
            exec: [{v['py']}, {v['dir']}/stubborn.py]
            ready: grandchild
        stop_timeout_s: 1.0
    """), {})
    out, stop = io.StringIO(), threading.Event()
    runner = threading.Thread(target=lambda: out.write(f"status {launch(graph, out, stop)}\n"))
    runner.start()
    deadline = time.monotonic() + 30
    while "after exited with 0" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runner.is_alive(), out.getvalue()  # a process that is not required ended: the graph runs on
    stop.set()  # what SIGINT / SIGTERM to edge launch do
    runner.join(timeout=30)
    text = out.getvalue()
    argv = json.loads(next(ln for ln in text.splitlines() if ln.startswith("[polite] [")).split("] ", 1)[1])
    assert argv[1:] == ["--ros-args", "--params-file", "/p.yaml", "-p", "policy:=all", "-p", "use_sim_time:=true",
                        "-r", "odom:=/vehicle/odom"]
    assert "[after] after saw ready" in text
    assert "[polite] polite got SIGINT" in text and "[launch] polite stopped (0)" in text
    assert "[launch] stubborn stopped (-9)" in text  # ignored SIGINT and SIGTERM
    grandchild = int(text.split("[stubborn] grandchild ")[1].split()[0])
    assert gone(grandchild), "a process of the graph was left behind"
    assert "status 0" in text and "restart" not in text


def test_a_required_process_exiting_ends_the_graph_with_its_status(tmp_path: Path) -> None:
    v = scripts(tmp_path)
    graph = load_graph(write_graph(tmp_path, f"""
        processes:
          - name: polite
            exec: [{v['py']}, {v['dir']}/polite.py, {tmp_path / 'm'}]
            ready: polite ready
          - name: failing
            exec: [{v['py']}, -c, "import sys; sys.exit(3)"]
        stop_timeout_s: 1.0
    """), {})
    out = io.StringIO()
    assert launch(graph, out) == 3
    assert "[launch] failing exited with 3" in out.getvalue() and "[launch] polite stopped (0)" in out.getvalue()


def test_edge_launch_forwards_sigterm(tmp_path: Path) -> None:
    v = scripts(tmp_path)
    g = write_graph(tmp_path, f"""
        processes:
          - name: polite
            exec: [{v['py']}, {v['dir']}/polite.py, {tmp_path / 'm'}]
            ready: polite ready
        stop_timeout_s: 2.0
    """)
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "launch", str(g)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "polite ready" in line:
            break
    pid = int(next(ln for ln in lines if "started polite" in ln).split("(pid ")[1].split(")")[0])
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "SIGTERM: stopping the graph" in rest and "polite got SIGINT" in rest
    assert gone(pid)
