"""The runtime as a ROS 2 node: a drive replayed in one process, the node in another, outputs read in a third."""

from __future__ import annotations

import json
import signal
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edge.drives import topics as T
from edge.drives.bag import open_bag
from edge.drives.generate import generate_drive

ROOT = Path(__file__).resolve().parents[1]

LISTENER = textwrap.dedent("""
    import json, sys, time
    import rclpy
    from nav_msgs.msg import OccupancyGrid
    from std_msgs.msg import String
    from diagnostic_msgs.msg import DiagnosticArray
    rclpy.init()
    node = rclpy.create_node("listener")
    got = {"bev": [], "plan": [], "diag": 0}
    def bev(m):
        got["bev"].append([m.header.stamp.sec * 10**9 + m.header.stamp.nanosec, m.header.frame_id, m.info.width,
                           m.info.height, sorted(set(m.data))])
    node.create_subscription(OccupancyGrid, "/perception/bev_occupancy", bev, 10)
    node.create_subscription(String, "/mpnp/plan", lambda m: got["plan"].append(json.loads(m.data)), 10)
    def diag(m):
        got["diag"] += 1
    node.create_subscription(DiagnosticArray, "/diagnostics", diag, 10)
    print("ready", flush=True)
    end = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < end and len(got["bev"]) < int(sys.argv[2]):
        rclpy.spin_once(node, timeout_sec=0.1)
    print(json.dumps(got), flush=True)
""")


@pytest.fixture()
def ros_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(random.randint(101, 200)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               RMW_IMPLEMENTATION="rmw_fastrtps_cpp", PYTHONUNBUFFERED="1")
    return env


@pytest.mark.ros
def test_node_publishes_bev_and_plan_stamped_with_its_inputs(tmp_path: Path, ros_env: dict[str, str]) -> None:
    bag = generate_drive(tmp_path / "drive", seed=3, duration=3.0, scenario="parking-day", progress=False).path
    with open_bag(bag) as b:
        front = [m for m in b.messages(topics=[T.fisheye_image_topic("front") + T.COMPRESSED_SUFFIX])]
    from edge.drives import messages as M

    front_stamps = {M.header_stamp_ns(m.msg) for m in front}
    node = subprocess.Popen([sys.executable, "-m", "edge.cli", "node", "--no-llm", "--policy", "all"], cwd=ROOT,
                            env=ros_env, stderr=subprocess.PIPE, text=True)
    listener = subprocess.Popen([sys.executable, "-c", LISTENER, "120", "5"], cwd=ROOT, env=ros_env,
                                stdout=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "subscribed" not in line and time.monotonic() < deadline and node.poll() is None:
            line = node.stderr.readline()
        assert "subscribed" in line, f"node did not start: {line!r}"
        assert listener.stdout.readline().strip() == "ready"
        replay = subprocess.run([sys.executable, "-m", "edge.cli", "replay", str(bag), "--rate", "0.5",
                                 "--wait-for-subscribers", "30", "--topics",
                                 *[t for t in open_bag(bag).topics if not t.startswith("/ground_truth")]],
                                cwd=ROOT, env=ros_env, capture_output=True, text=True, timeout=120)
        assert replay.returncode == 0, replay.stderr
        out, _ = listener.communicate(timeout=150)
    finally:
        node.send_signal(signal.SIGINT)  # what Ctrl-C and `ros2 launch` send
        for p in (node, listener):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    assert node.returncode == 0, f"node did not stop cleanly on SIGINT (exit {node.returncode}): {node.stderr.read()[-2000:]}"
    got = json.loads(out.strip().splitlines()[-1])
    assert len(got["bev"]) >= 5
    for stamp, frame, width, height, values in got["bev"]:
        assert stamp in front_stamps  # each output carries the stamp of the camera frame it came from
        assert frame == "base_link" and (width, height) == (100, 100)
        assert set(values) <= {0, 100, 90, 80, -1}
    assert got["plan"] and got["plan"][0]["reason"] == "static policy all"
    assert set(got["plan"][-1]["modalities"]) >= {"fisheye", "ultrasonic"}
    assert got["diag"] >= 1
