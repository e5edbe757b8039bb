"""What the ROS 2 launch files (ros_nodes/launch/*.launch.py) declare and the `edge` commands they start.

Plain Python with no `launch` import, so that the mapping from launch arguments to CLI options is tested where ROS
launch is not installed (tests/test_ros_launch.py parses every command with the real argparse parsers). Each launch
argument maps to one option of `edge replay` or `edge node`; `use_sim_time` is the ROS parameter, passed to the node
in its `--ros-args` block. Launch hands every value over as a string ('true', '1.5', '/odom /audio/raw').
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from typing import NamedTuple


class Arg(NamedTuple):
    default: str | None  # None: required
    description: str
    choices: tuple[str, ...] | None = None


REPLAY_ARGUMENTS: dict[str, Arg] = {
    "bag": Arg(None, "rosbag2 bag directory (MCAP or sqlite3) to replay"),
    "rate": Arg("1.0", "playback rate, x real time; 0 = as fast as possible (--rate)"),
    "loop": Arg("false", "start again at the end (--loop)"),
    "start_offset": Arg("0.0", "start this many seconds into the bag (--start-offset)"),
    "topics": Arg("", "topics to replay, separated by spaces or commas; empty = all (--topics)"),
    "clock_hz": Arg("40.0", "/clock publication rate (--clock-hz)"),
    "delay": Arg("0.0", "seconds to wait before playing, for discovery (--delay)"),
    "wait_for_subscribers": Arg("0.0", "wait up to this many seconds until every topic has a subscriber; "
                                       "0 = don't wait (--wait-for-subscribers)"),
    "subscribers": Arg("1", "with wait_for_subscribers: the subscribers every topic must have (--subscribers)"),
    "linger": Arg("0.5", "keep the node this many seconds after the end (--linger)"),
    "raw_images": Arg("false", "publish camera streams decoded as sensor_msgs/Image on <base> (--raw-images)"),
}

# Runtime arguments left empty keep the value of the parameters file (ros_nodes/config/runtime.param.yaml unless
# `params_file` names another); a value given here overrides it (the node's -p, through its CLI option).
RUNTIME_ARGUMENTS: dict[str, Arg] = {
    "params_file": Arg("", "ROS parameters file of the node; empty = the shipped defaults (--params-file)"),
    "rig": Arg("", "rig calibration YAML; empty = the parameters file's (--rig)"),
    "policy": Arg("", "modality policy adaptive, camera or all; empty = the parameters file's (--policy)"),
    "budget_ms": Arg("", "latency budget per frame, ms; empty = the parameters file's (--budget-ms)"),
    "aligners": Arg("", "aligner checkpoint directory; empty = the parameters file's (--aligners)"),
    "llm": Arg("true", "false = perception and scheduling only (--no-llm); true = the parameters file's use_llm"),
    "backend": Arg("", "encoders on eager, onnxruntime or tensorrt; empty = the parameters file's (--backend)"),
    "autostart": Arg("true", "configure and activate at start; false = wait for lifecycle transitions (--managed)"),
    "use_sim_time": Arg("false", "follow /clock instead of the system clock (ROS parameter, via --ros-args)"),
    "role": Arg("composite", "composite: the whole runtime in one node; perception or llm: one node of the split "
                             "graph (--role)", ("composite", "perception", "llm")),
}

# drive.launch.py: the runtime on the replay's /clock; the replay starts once the runtime has subscribed (see
# RUNTIME_READY) and then gives discovery 2 s, since best-effort data sent before the match is lost.
DRIVE_ARGUMENTS: dict[str, Arg] = {
    **REPLAY_ARGUMENTS,
    "delay": Arg("2.0", "seconds the replay waits after the runtime is up, for discovery (--delay)"),
    **RUNTIME_ARGUMENTS,
    "use_sim_time": Arg("true", "the runtime follows the replay's /clock (ROS parameter, via --ros-args)"),
}

# split.launch.py: the split graph (perception node + LLM node) on a replayed drive, as drive.launch.py starts the
# composite; the replay starts once the perception node has subscribed. Each node's role is fixed by the file.
SPLIT_ARGUMENTS: dict[str, Arg] = {name: a for name, a in DRIVE_ARGUMENTS.items() if name != "role"}

# What `edge node` prints on stderr once it is active (ros_nodes/runtime_node.READY).
RUNTIME_READY = "edge node: subscribed"

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def as_bool(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise ValueError(f"launch argument '{name}': expected true or false, not {text!r}")


def edge_command(*args: str) -> list[str]:
    """`edge ARGS` run by the interpreter that runs the launch file: the one with rclpy and the sourced workspace
    (colcon's ament_cmake_python installs no `edge` console script)."""
    return [sys.executable, "-m", "edge.cli", *args]


def replay_command(values: Mapping[str, str]) -> list[str]:
    bag = values["bag"].strip()
    if not bag:
        raise ValueError("launch argument 'bag' is required: bag:=PATH_TO_BAG_DIRECTORY")
    cmd = edge_command("replay", os.path.expanduser(bag), "--rate", values["rate"],
                       "--start-offset", values["start_offset"], "--clock-hz", values["clock_hz"],
                       "--delay", values["delay"], "--wait-for-subscribers", values["wait_for_subscribers"],
                       "--subscribers", values["subscribers"],
                       "--linger", values["linger"])
    if as_bool("loop", values["loop"]):
        cmd.append("--loop")
    if as_bool("raw_images", values["raw_images"]):
        cmd.append("--raw-images")
    topics = [t for t in re.split(r"[\s,]+", values["topics"]) if t]
    if topics:
        cmd += ["--topics", *topics]
    return cmd


def runtime_command(values: Mapping[str, str]) -> list[str]:
    cmd = edge_command("node")
    for name, option in (("params_file", "--params-file"), ("rig", "--rig"), ("aligners", "--aligners")):
        if values[name].strip():
            cmd += [option, os.path.expanduser(values[name].strip())]
    for name, option in (("policy", "--policy"), ("budget_ms", "--budget-ms"), ("backend", "--backend")):
        if values[name].strip():
            cmd += [option, values[name].strip()]
    if not as_bool("llm", values["llm"]):
        cmd.append("--no-llm")
    if not as_bool("autostart", values["autostart"]):
        cmd.append("--managed")
    role = values.get("role", "composite").strip()
    if role != "composite":
        cmd += ["--role", role]
    sim_time = "true" if as_bool("use_sim_time", values["use_sim_time"]) else "false"
    return cmd + ["--ros-args", "-p", f"use_sim_time:={sim_time}"]  # the ROS block comes last


def split_commands(values: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """The split graph's perception node and LLM node, with the same arguments (each reads its own)."""
    return runtime_command({**values, "role": "perception"}), runtime_command({**values, "role": "llm"})


class ReadyWatch:
    """Fed a process's output chunk by chunk: True once, for the chunk that completes `marker`."""

    def __init__(self, marker: str) -> None:
        self.marker, self.tail, self.fired = marker.encode(), b"", False

    def feed(self, data: bytes | str) -> bool:
        if self.fired:
            return False
        text = self.tail + (data.encode() if isinstance(data, str) else data)
        if self.marker in text:
            self.fired, self.tail = True, b""
            return True
        self.tail = text[max(0, len(text) - len(self.marker) + 1):]  # a marker split across chunks still counts
        return False
