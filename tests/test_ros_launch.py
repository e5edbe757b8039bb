"""The colcon package and launch files (package.xml, ros_nodes/launch/) against the real CLIs they start.

ROS launch has no wheels, so the launch files are imported with a stand-in `launch` package put in sys.modules for
the duration of one test (monkeypatch). The stand-ins only record what the launch files declare and which
processes they would start; they emulate nothing of launch's behaviour. Each recorded command is then parsed by
the real argparse parser of `edge replay` / `edge node` (edge.cli.build_parser), option names matched exactly.
Where the real `launch` is importable, one more test loads the files with it.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import importlib.util
import inspect
import os
import random
import re
import subprocess
import sys
import time
import tomllib
import types
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from edge.cli import build_parser
from ros_nodes import launch_commands as L

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_DIR = ROOT / "ros_nodes" / "launch"
TABLES = {"replay": L.REPLAY_ARGUMENTS, "runtime": L.RUNTIME_ARGUMENTS, "drive": L.DRIVE_ARGUMENTS,
          "split": L.SPLIT_ARGUMENTS}
EDGE = [sys.executable, "-m", "edge.cli"]


# ---------------------------------------------------------------- stand-in `launch`, for reading the files only
class _Recorded:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration(_Recorded):
    def perform(self, context: Any) -> str:
        return context.launch_configurations[self.args[0]]


def _fake_launch() -> dict[str, types.ModuleType]:
    mods = {name: types.ModuleType(name) for name in
            ("launch", "launch.actions", "launch.substitutions", "launch.event_handlers")}
    mods["launch"].LaunchDescription = type("LaunchDescription", (_Recorded,), {})
    for name in ("DeclareLaunchArgument", "ExecuteProcess", "OpaqueFunction", "RegisterEventHandler", "Shutdown"):
        setattr(mods["launch.actions"], name, type(name, (_Recorded,), {}))
    mods["launch.substitutions"].LaunchConfiguration = _LaunchConfiguration
    mods["launch.event_handlers"].OnProcessIO = type("OnProcessIO", (_Recorded,), {})
    return mods


def load_launch_file(name: str, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    for mod_name, mod in _fake_launch().items():
        monkeypatch.setitem(sys.modules, mod_name, mod)
    spec = importlib.util.spec_from_file_location(f"_launch_{name}", LAUNCH_DIR / f"{name}.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def declared(description: Any) -> dict[str, dict[str, Any]]:
    out = {}
    for e in description.args[0]:
        if type(e).__name__ == "DeclareLaunchArgument":
            out[e.args[0]] = e.kwargs
    return out


def started(description: Any, values: dict[str, str]) -> list[Any]:
    """What the file's OpaqueFunction returns when launch hands it `values` (as strings, like launch does)."""
    [opaque] = [e for e in description.args[0] if type(e).__name__ == "OpaqueFunction"]
    context = types.SimpleNamespace(launch_configurations=dict(values))
    return opaque.kwargs["function"](context)


def defaults(table: dict[str, L.Arg], **given: str) -> dict[str, str]:
    values = {name: a.default for name, a in table.items() if a.default is not None}
    values.update(given)
    return values


# ---------------------------------------------------------------- the real CLI parsers
def cli_subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser(only=command)
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[command]


def parse_command(command: str, cmd: list[str]) -> argparse.Namespace:
    """Parse a launched command with the real `edge COMMAND` parser; every option must exist under its full name."""
    assert cmd[:3] == EDGE and cmd[3] == command, cmd
    sub = cli_subparser(command)
    options = set(sub._option_string_actions)
    ros_block = cmd.index("--ros-args") if "--ros-args" in cmd else len(cmd)
    for token in cmd[4:ros_block]:
        if token.startswith("-") and not re.fullmatch(r"-\d.*", token):
            assert token in options, f"`edge {command}` has no option {token} (its options: {sorted(options)})"
    try:
        return build_parser(only=command).parse_args(cmd[3:])
    except SystemExit as exc:
        raise AssertionError(f"`edge {command}` rejects {cmd[3:]}") from exc


def cli_defaults(command: str) -> dict[str, Any]:
    return {a.dest: a.default for a in cli_subparser(command)._actions if a.dest != "help"}


# ---------------------------------------------------------------- launch files
@pytest.mark.parametrize("name", sorted(TABLES))
def test_launch_file_declares_its_table(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    args = declared(load_launch_file(name, monkeypatch).generate_launch_description())
    table = TABLES[name]
    assert list(args) == list(table)
    for arg_name, a in table.items():
        assert args[arg_name] == {"default_value": a.default, "description": a.description, "choices": a.choices}
        if a.choices is not None:
            assert a.default in a.choices  # launch refuses a default outside its choices


def test_replay_launch_defaults_are_the_cli_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    ld = load_launch_file("replay", monkeypatch).generate_launch_description()
    [proc] = started(ld, defaults(L.REPLAY_ARGUMENTS, bag="drives/x"))
    assert type(proc).__name__ == "ExecuteProcess"
    ns = parse_command("replay", proc.kwargs["cmd"])
    assert ns.bag == "drives/x"
    expected = cli_defaults("replay")
    for dest, value in vars(ns).items():
        if dest not in ("bag", "func", "command"):
            assert value == expected[dest], dest


def test_runtime_launch_defaults_are_the_cli_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    ld = load_launch_file("runtime", monkeypatch).generate_launch_description()
    [proc] = started(ld, defaults(L.RUNTIME_ARGUMENTS))
    ns = parse_command("node", proc.kwargs["cmd"])
    expected = cli_defaults("node")
    for dest, value in vars(ns).items():
        if dest == "ros_args":
            assert value == ["-p", "use_sim_time:=false"]
        elif dest not in ("func", "command"):
            assert value == expected[dest], dest


@pytest.mark.parametrize("command,table,builder,given", [
    ("replay", L.REPLAY_ARGUMENTS, L.replay_command,
     dict(bag="/d", rate="2.5", loop="True", start_offset="1.5", topics="/odom, /audio/raw", clock_hz="10",
          delay="0.25", wait_for_subscribers="4", subscribers="2", linger="0.1", raw_images="yes")),
    ("node", L.RUNTIME_ARGUMENTS, L.runtime_command,
     dict(params_file="/p.param.yaml", rig="/r.yaml", policy="all", budget_ms="50", aligners="/al", llm="false",
          backend="onnxruntime", autostart="false", use_sim_time="1", role="perception")),
])
def test_every_launch_argument_reaches_one_cli_option_and_every_option_has_one(command, table, builder, given):
    """Every launch argument set away from its default changes the parsed CLI namespace, and every option of the
    CLI is then away from its default: nothing is dropped on the way, no option is left without a launch argument."""
    assert set(given) == set(table)
    ns = vars(parse_command(command, builder(given)))
    base = cli_defaults(command)
    # replay's --ros-args (remaps for `edge launch` graphs) has no launch argument: it runs on the wall clock
    exempt = {"func"} | ({"ros_args"} if command == "replay" else set())
    unchanged = sorted(dest for dest, default in base.items() if ns[dest] == default and dest not in exempt)
    assert unchanged == [], f"`edge {command}` options no launch argument sets: {unchanged}"
    if command == "replay":
        assert ns["topics"] == ["/odom", "/audio/raw"] and ns["loop"] is True and ns["rate"] == 2.5
    else:
        assert ns["no_llm"] is True and ns["managed"] is True and ns["ros_args"] == ["-p", "use_sim_time:=true"]


def test_drive_launch_starts_the_replay_once_the_runtime_has_subscribed(monkeypatch: pytest.MonkeyPatch) -> None:
    ld = load_launch_file("drive", monkeypatch).generate_launch_description()
    node, handler = started(ld, defaults(L.DRIVE_ARGUMENTS, bag="/d"))
    assert type(node).__name__ == "ExecuteProcess" and type(handler).__name__ == "RegisterEventHandler"
    ns = parse_command("node", node.kwargs["cmd"])
    assert ns.ros_args == ["-p", "use_sim_time:=true"]  # the runtime follows the replay's /clock
    assert type(node.kwargs["on_exit"]).__name__ == "Shutdown"
    [on_io] = handler.args
    assert on_io.kwargs["target_action"] is node
    on_stderr = on_io.kwargs["on_stderr"]
    chunk = types.SimpleNamespace
    assert on_stderr(chunk(text=b"loading perception models\n")) is None
    head, tail = L.RUNTIME_READY.encode()[:7], L.RUNTIME_READY.encode()[7:]
    assert on_stderr(chunk(text=b"...\n" + head)) is None
    [replay] = on_stderr(chunk(text=tail + b" to 19 sensor topics\n"))  # the marker split across two chunks
    assert on_stderr(chunk(text=L.RUNTIME_READY.encode())) is None  # started once
    rns = parse_command("replay", replay.kwargs["cmd"])
    assert rns.bag == "/d" and rns.delay == 2.0 and "--ros-args" not in replay.kwargs["cmd"]  # replay: wall clock


def test_split_launch_starts_both_nodes_and_the_replay_once_perception_has_subscribed(monkeypatch) -> None:
    ld = load_launch_file("split", monkeypatch).generate_launch_description()
    perception, llm, handler = started(ld, defaults(L.SPLIT_ARGUMENTS, bag="/d", policy="all"))
    for proc, role in ((perception, "perception"), (llm, "llm")):
        ns = parse_command("node", proc.kwargs["cmd"])
        assert ns.role == role and ns.policy == "all" and ns.ros_args == ["-p", "use_sim_time:=true"]
        assert type(proc.kwargs["on_exit"]).__name__ == "Shutdown"
    [on_io] = handler.args
    assert on_io.kwargs["target_action"] is perception
    [replay] = on_io.kwargs["on_stderr"](types.SimpleNamespace(text=L.RUNTIME_READY.encode() + b" to 19 topics\n"))
    assert parse_command("replay", replay.kwargs["cmd"]).delay == 2.0


def test_ready_marker_is_what_edge_node_prints() -> None:
    from ros_nodes import runtime_node

    assert runtime_node.READY == L.RUNTIME_READY
    assert 'f"{READY} to ' in inspect.getsource(runtime_node)


def test_bad_values_and_invented_options_fail() -> None:
    """The checks above can fail: a misspelt or abbreviated option, a bad value and a bad boolean are caught."""
    ok = L.replay_command(defaults(L.REPLAY_ARGUMENTS, bag="/d"))
    with pytest.raises(AssertionError, match="has no option --no-such-option"):
        parse_command("replay", ok + ["--no-such-option", "1"])
    with pytest.raises(AssertionError, match="has no option --start"):
        parse_command("replay", ok + ["--start", "3"])  # argparse alone would take the abbreviation
    with pytest.raises(AssertionError, match="rejects"):
        parse_command("replay", L.replay_command(defaults(L.REPLAY_ARGUMENTS, bag="/d", rate="fast")))
    with pytest.raises(AssertionError, match="rejects"):
        parse_command("node", L.runtime_command(defaults(L.RUNTIME_ARGUMENTS, policy="night")))
    with pytest.raises(ValueError, match="'loop': expected true or false"):
        L.replay_command(defaults(L.REPLAY_ARGUMENTS, bag="/d", loop="sometimes"))
    with pytest.raises(ValueError, match="'bag' is required"):
        L.replay_command(defaults(L.REPLAY_ARGUMENTS, bag=" "))


def test_real_launch_loads_the_files_where_installed() -> None:
    launch = pytest.importorskip("launch")  # a ROS 2 installation; absent from the project's venv
    from launch.utilities import perform_substitutions

    for name, table in TABLES.items():
        spec = importlib.util.spec_from_file_location(f"_real_launch_{name}", LAUNCH_DIR / f"{name}.launch.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        ld = module.generate_launch_description()
        assert [a.name for a in ld.get_launch_arguments()] == list(table)
        context = launch.LaunchContext()
        context.launch_configurations.update(defaults(table, bag="/d"))
        [opaque] = [e for e in ld.entities if isinstance(e, launch.actions.OpaqueFunction)]
        proc = opaque.execute(context)[0]
        cmd = [perform_substitutions(context, part) for part in proc.cmd]
        parse_command("node" if name != "replay" else "replay", cmd)


# ---------------------------------------------------------------- package.xml
def _package() -> ET.Element:
    return ET.parse(ROOT / "package.xml").getroot()  # raises on malformed XML


def _depends(tag: str) -> set[str]:
    return {e.text.strip() for e in _package().findall(tag)}


def _imported_top_modules(path: Path) -> set[str]:
    """Top-level modules a file imports, at any depth, plus those named as 'pkg.msg' strings (importlib)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            m = re.fullmatch(r"([a-z][a-z0-9_]*)\.(msg|srv|action)", node.value)
            if m:
                out.add(m.group(1))
    return out


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_package_xml_is_format_3_with_the_required_tags() -> None:
    pkg = _package()
    assert pkg.tag == "package" and pkg.get("format") == "3"
    for tag in ("name", "version", "description", "maintainer", "license"):
        assert (pkg.findtext(tag) or "").strip(), tag
    assert pkg.find("maintainer").get("email")
    assert pkg.findtext("name") == "mpnp_edge"
    assert pkg.findtext("version") == _pyproject()["project"]["version"]
    assert re.search(r"project\(\s*mpnp_edge\b", (ROOT / "CMakeLists.txt").read_text())  # ament_package() checks
    assert pkg.findtext("export/build_type") == "ament_cmake"
    assert {"ament_cmake", "ament_cmake_python"} <= _depends("buildtool_depend")
    assert "pybind11-dev" in _depends("build_depend")


def test_package_xml_exec_depends_cover_every_ros_module_the_nodes_and_launch_files_use() -> None:
    stdlib, project = set(sys.stdlib_module_names) | {"__future__"}, {"edge", "ros_nodes"}
    declared_python = {re.split(r"[<>=!~\[ ;]", d)[0].lower().replace("_", "-")
                       for d in _pyproject()["project"]["dependencies"]}
    dists = importlib.metadata.packages_distributions()
    used: dict[str, str] = {}
    for path in sorted((ROOT / "ros_nodes").rglob("*.py")):
        for mod in _imported_top_modules(path) - stdlib - project:
            if {d.lower().replace("_", "-") for d in dists.get(mod, [])} & declared_python:
                continue  # a pyproject dependency (numpy, ...): its rosdep key is checked below
            used.setdefault(mod, str(path.relative_to(ROOT)))
    # message packages of the topic contract, which `edge replay` publishes from a bag
    for value in vars(__import__("edge.drives.topics", fromlist=["x"])).values():
        if isinstance(value, str) and (m := re.fullmatch(r"([a-z][a-z0-9_]*)/msg/\w+", value)):
            used.setdefault(m.group(1), "edge/drives/topics.py")
    assert {"rclpy", "launch", "sensor_msgs", "rosgraph_msgs", "builtin_interfaces"} <= set(used)  # scan works
    exec_depends = _depends("exec_depend")
    missing = {mod: where for mod, where in used.items() if mod not in exec_depends}
    assert not missing, f"package.xml lacks exec_depend for {missing}"
    assert {"rclpy", "sensor_msgs", "nav_msgs", "std_msgs", "diagnostic_msgs", "std_srvs", "visualization_msgs",
            "rosgraph_msgs", "ros2launch"} <= exec_depends


# pyproject dependency -> rosdep key (None: no key, installed with pip; torch: NVIDIA's wheel on a Jetson)
ROSDEP_KEYS = {"numpy": "python3-numpy", "pyyaml": "python3-yaml", "pydantic": "python3-pydantic",
               "tqdm": "python3-tqdm", "opencv-python-headless": "python3-opencv", "rosbags": "python3-rosbags-pip",
               "onnxruntime": "python3-onnxruntime-pip", "transformers": "python3-transformers-pip",
               "mcap": None, "safetensors": None, "onnx": None, "onnxscript": None, "torch": None, "gguf": None,
               "accelerate": None, "zstandard": None}


def test_package_xml_python_dependencies_follow_pyproject() -> None:
    deps = {}
    for spec in _pyproject()["project"]["dependencies"]:
        name = re.split(r"[<>=!~\[ ;]", spec)[0].lower()
        deps[name] = (re.search(r">=\s*([\d.]+)", spec) or [None, None])[1]
    assert set(deps) == set(ROSDEP_KEYS), "a new pyproject dependency: decide its rosdep key in package.xml"
    exec_depends = {e.text.strip(): e.get("version_gte") for e in _package().findall("exec_depend")}
    for name, key in ROSDEP_KEYS.items():
        if key is None:
            continue
        assert key in exec_depends, f"{name}: exec_depend {key} missing"
        if exec_depends[key] is not None:
            assert exec_depends[key] == deps[name], f"{key}: version_gte differs from pyproject's {name}"


# ---------------------------------------------------------------- the launched runtime command, for real
@pytest.mark.ros
@pytest.mark.timeout(180)
def test_runtime_command_with_use_sim_time_follows_clock(tmp_path: Path) -> None:
    """The command runtime.launch.py starts, run as it is: with use_sim_time:=true the node subscribes to /clock."""
    env = dict(os.environ, ROS_DOMAIN_ID=str(random.randint(201, 230)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               RMW_IMPLEMENTATION="rmw_fastrtps_cpp", PYTHONUNBUFFERED="1")
    cmd = L.runtime_command(defaults(L.RUNTIME_ARGUMENTS, llm="false", use_sim_time="true"))
    node = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)  # not the repo root
    probe = ("import rclpy, sys, time\nrclpy.init(); n = rclpy.create_node('clock_probe')\n"
             "end = time.monotonic() + 60\nwhile time.monotonic() < end and n.count_subscribers('/clock') == 0:\n"
             "    rclpy.spin_once(n, timeout_sec=0.2)\nprint(n.count_subscribers('/clock'))\n")
    try:
        line, deadline = "", time.monotonic() + 150
        while L.RUNTIME_READY not in line and time.monotonic() < deadline and node.poll() is None:
            line = node.stderr.readline()
        assert L.RUNTIME_READY in line, f"edge node did not start: {line!r}"
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=90)
        assert out.stdout.strip() == "1", out.stderr
    finally:
        node.terminate()
        try:
            node.wait(timeout=20)
        except subprocess.TimeoutExpired:
            node.kill()
