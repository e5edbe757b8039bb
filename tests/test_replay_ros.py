"""`edge replay` over real DDS: a bag replayed in one process is received by an rclpy subscriber in another."""

from __future__ import annotations

import json
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

pytestmark = [pytest.mark.ros, pytest.mark.timeout(120)]
ROOT = Path(__file__).resolve().parents[1]

SUBSCRIBER = textwrap.dedent("""
    import json, sys, time
    import rclpy
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy
    from ros_nodes.replay import message_class
    from edge.drives import messages as M
    from edge.drives.bag import is_sensor_topic

    topics = json.loads(sys.argv[1])  # {topic: msgtype}
    rclpy.init()
    node = Node("edge_replay_test_listener")
    got = {t: [] for t in topics}
    clock = []
    last = [time.monotonic()]
    def make_cb(topic, msgtype):
        def cb(data):
            msg = M.deserialize(data, msgtype)
            got[topic].append([M.header_stamp_ns(msg), data.hex() if topic.startswith("/ground_truth/qa") else len(data)])
            last[0] = time.monotonic()
        return cb
    subs = []
    for topic, msgtype in topics.items():
        rel = ReliabilityPolicy.BEST_EFFORT if is_sensor_topic(topic) else ReliabilityPolicy.RELIABLE
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=rel)
        subs.append(node.create_subscription(message_class(msgtype), topic, make_cb(topic, msgtype), qos, raw=True))
    from rosgraph_msgs.msg import Clock
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.BEST_EFFORT)
    subs.append(node.create_subscription(Clock, "/clock",
                lambda m: clock.append(m.clock.sec * 10**9 + m.clock.nanosec), qos))
    print("ready", flush=True)
    start = time.monotonic()
    while time.monotonic() - start < 60:
        rclpy.spin_once(node, timeout_sec=0.05)
        if any(got.values()) and time.monotonic() - last[0] > 3.0:
            break
    print(json.dumps({"got": got, "clock": clock}), flush=True)
    node.destroy_node()
    rclpy.shutdown()
""")


@pytest.fixture()
def ros_env() -> dict[str, str]:
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(random.randint(1, 100))
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_replay_received_in_another_process(make_bag, ros_env):
    bag = make_bag("dds", duration_s=1.0, fisheye_size=(64, 48), front_size=(64, 40),
                   ultrasonic_names=("front_left_side", "rear_right_side"))
    with open_bag(bag) as b:
        topics = {name: info.msgtype for name, info in b.topics.items()}
        expected: dict[str, list[int]] = {}
        qa_bytes = []
        for m in b.messages(raw=True):
            from edge.drives import messages as M
            msg = M.deserialize(m.msg, m.msgtype)
            expected.setdefault(m.topic, []).append(M.header_stamp_ns(msg))
            if m.topic == T.GT_QA:
                qa_bytes.append(m.msg.hex())
        start, end = b.start_ns, b.end_ns
    listener = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, json.dumps(topics)], cwd=ROOT, env=ros_env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        player = subprocess.run(
            [sys.executable, "-m", "edge.cli", "replay", str(bag), "--rate", "1.0", "--delay", "2.0",
             "--wait-for-subscribers", "30"],
            cwd=ROOT, env=ros_env, capture_output=True, text=True, timeout=60,
        )
        wall = time.monotonic() - t0
        assert player.returncode == 0, player.stderr
        assert f"published {sum(len(v) for v in expected.values())} messages" in player.stderr
        out, err = listener.communicate(timeout=60)
    finally:
        if listener.poll() is None:
            listener.kill()
    result = json.loads(out.strip().splitlines()[-1])
    got = result["got"]
    assert wall >= 2.0 + 0.9  # paced at real time: the 1 s drive took about a second after the delay
    for topic, stamps in expected.items():
        assert [g[0] for g in got[topic]] == stamps, topic  # every message, in order, header stamps preserved
    # CDR forwarded byte for byte (DDS may pad the payload to a multiple of 4 bytes)
    for (_, received), sent in zip(got[T.GT_QA], qa_bytes, strict=True):
        assert received.startswith(sent) and set(received[len(sent):]) <= {"0"} and len(received) - len(sent) < 8
    clock = result["clock"]
    assert len(clock) >= 10 and clock == sorted(clock)
    assert start <= clock[0] and clock[-1] <= end and clock[-1] >= end - 100_000_000


def test_replay_cli_errors_are_clear(tmp_path: Path, ros_env):
    r = subprocess.run([sys.executable, "-m", "edge.cli", "replay", str(tmp_path / "missing")], cwd=ROOT,
                       env=ros_env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "missing: no such bag" in r.stderr and "Traceback" not in r.stderr
