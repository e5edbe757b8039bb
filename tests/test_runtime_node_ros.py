"""The runtime as a managed ROS 2 node over real DDS: the node in one process, a drive replayed by `edge replay` in
another, and this test process as the ROS client (lifecycle services, parameter services, output subscriptions)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.drives import messages as M
from edge.drives import topics as T
from edge.drives.bag import open_bag
from edge.drives.generate import generate_drive

pytestmark = [pytest.mark.ros]
ROOT = Path(__file__).resolve().parents[1]
NODE = "/mpnp_edge_runtime"
ODOM_REMAP = "/odom:=/vehicle/odom"  # the replay's side of the node's -r odom:=/vehicle/odom


@pytest.fixture(scope="module")
def drive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[int]]:
    """A 3 s parking drive and the header stamps of its front fisheye frames (the node's reference camera)."""
    bag = generate_drive(tmp_path_factory.mktemp("node") / "drive", seed=3, duration=3.0, scenario="parking-day",
                         progress=False).path
    with open_bag(bag) as b:
        front = b.messages(topics=[T.fisheye_image_topic("front") + T.COMPRESSED_SUFFIX])
        return bag, {M.header_stamp_ns(m.msg) for m in front}


@pytest.fixture()
def ros_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A DDS domain of this test's own, on loopback; this process's client joins it too."""
    values = dict(ROS_DOMAIN_ID=str(random.randint(101, 200)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                  RMW_IMPLEMENTATION="rmw_fastrtps_cpp", PYTHONUNBUFFERED="1")
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return dict(os.environ)


class NodeProcess:
    """`edge node ...` with its stderr collected by a thread (lines can be awaited without blocking)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "node", *args], cwd=ROOT, env=env,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, timeout_s: float = 400) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            hit = [ln for ln in self.lines if text in ln]
            if hit:
                return hit[-1]
            time.sleep(0.1)
        raise AssertionError(f"edge node never printed {text!r}:\n{''.join(self.lines)[-3000:]}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)  # what Ctrl-C and `ros2 launch` send
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


class Client:
    """This process's rclpy node: calls the node's services and records what it publishes."""

    def __init__(self, grid_topic: str = T.OUT_BEV) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from nav_msgs.msg import OccupancyGrid
        from std_msgs.msg import String

        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("node_test_client", context=self.context)
        self.grids: list[tuple[int, str, int, int, set[int]]] = []
        self.plans: list[dict[str, Any]] = []
        self.answers: list[dict[str, Any]] = []
        self.diagnostics: list[Any] = []
        self.node.create_subscription(OccupancyGrid, grid_topic, self._grid, 100)
        self.node.create_subscription(String, T.OUT_PLAN, lambda m: self.plans.append(json.loads(m.data)), 100)
        self.node.create_subscription(String, T.ANSWER, lambda m: self.answers.append(json.loads(m.data)), 100)
        self.node.create_subscription(DiagnosticArray, T.DIAGNOSTICS, self.diagnostics.append, 100)
        self.question = self.node.create_publisher(String, T.QUESTION, 10)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def ask(self, text: str) -> None:
        from std_msgs.msg import String

        self.spin(10, until=lambda: self.question.get_subscription_count() > 0)  # matched: not lost
        self.question.publish(String(data=text))

    def _grid(self, m: Any) -> None:
        self.grids.append((m.header.stamp.sec * 10**9 + m.header.stamp.nanosec, m.header.frame_id, m.info.width,
                           m.info.height, set(m.data)))

    def spin(self, seconds: float, until: Any = None) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (until and until()):
            self.executor.spin_once(timeout_sec=0.05)

    def call(self, srv_type: Any, name: str, request: Any, timeout_s: float = 400) -> Any:
        client = self.node.create_client(srv_type, name)
        assert client.wait_for_service(timeout_sec=60), f"no service {name}"
        future = client.call_async(request)
        self.executor.spin_until_future_complete(future, timeout_sec=timeout_s)
        self.node.destroy_client(client)
        assert future.done(), f"{name}: no reply in {timeout_s} s"
        return future.result()

    def transition(self, label: str) -> tuple[bool, float]:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        ids = {"configure": Transition.TRANSITION_CONFIGURE, "activate": Transition.TRANSITION_ACTIVATE,
               "deactivate": Transition.TRANSITION_DEACTIVATE, "cleanup": Transition.TRANSITION_CLEANUP}
        t = time.perf_counter()
        ok = self.call(ChangeState, f"{NODE}/change_state", ChangeState.Request(transition=Transition(id=ids[label])))
        return ok.success, time.perf_counter() - t

    def state(self) -> str:
        from lifecycle_msgs.srv import GetState

        return self.call(GetState, f"{NODE}/get_state", GetState.Request()).current_state.label

    def set_parameter(self, name: str, value: Any) -> Any:
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
        return self.call(SetParameters, f"{NODE}/set_parameters", request).results[0]

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.shutdown(context=self.context)


@pytest.fixture()
def client_factory(ros_env: dict[str, str]) -> Iterator[Any]:
    made: list[Client] = []

    def make(**kw: Any) -> Client:
        made.append(Client(**kw))
        return made[-1]

    yield make
    for c in made:
        c.close()


def replay(bag: Path, env: dict[str, str], *extra: str, remaps: tuple[str, ...] = ()) -> subprocess.Popen:
    # the topics the node subscribes to, so that --wait-for-subscribers ends as soon as it has matched them all;
    # `remaps`: the node's input remaps, applied to the replay too, or the replay waits the whole 120 s on a topic the
    # node listens to under another name (before: /odom, 120 s before the first message of every replay)
    topics = [t for t in open_bag(bag).topics if not t.startswith("/ground_truth") and not t.endswith("camera_info")]
    ros_args = ["--ros-args", *(a for r in remaps for a in ("-r", r))] if remaps else []
    return subprocess.Popen([sys.executable, "-m", "edge.cli", "replay", str(bag), "--rate", "1.0",
                             "--wait-for-subscribers", "120", *extra, "--topics", *topics, *ros_args],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)


def finished(replay_process: subprocess.Popen) -> str:
    """The replay's stderr once it ended with status 0, having matched every topic before playing (no timeout)."""
    assert replay_process.wait(timeout=300) == 0, replay_process.stderr.read()
    err = replay_process.stderr.read()
    assert "fewer than" not in err, err  # a topic short at the timeout: playback waited the whole 120 s
    return err


def assert_frame_stamps(grids: list[tuple[Any, ...]], front_stamps: set[int], min_share: float) -> None:
    """The stamp rule (edge.drives.sync's frame clock): a grid carries the header stamp of the front fisheye frame
    it was computed from; a frame whose front image was lost on the way (best effort: raw 640x480 images are, at
    times) keeps the clock's own tick, which lies within the drive and after the frame before it."""
    stamps = [g[0] for g in grids]
    assert stamps == sorted(set(stamps))  # strictly increasing
    assert min(front_stamps) - 100_000_000 <= stamps[0] and stamps[-1] <= max(front_stamps) + 100_000_000
    matched = sum(s in front_stamps for s in stamps)
    assert matched >= min_share * len(stamps), f"only {matched} of {len(stamps)} grids carry a front camera stamp"


# Generous waits: they only matter on a loaded machine, where starting torch alone has taken minutes.
@pytest.mark.timeout(900)
def test_managed_node_lifecycle_parameters_transports_and_remaps(drive, ros_env, client_factory) -> None:
    """One managed node (no LLM, to keep it short), driven through the standard lifecycle and parameter services
    from this process: configure / activate; a compressed-image replay gives occupancy grids stamped with their
    camera frames (on a remapped output topic); a question gets a reply saying why it is not answered; a parameter
    change at runtime changes the published plan;
    static parameters are refused while configured; deactivate / activate loads nothing again; a raw-image replay
    gives grids as well."""
    bag, front_stamps = drive
    node = NodeProcess(["--managed", "--no-llm", "--ros-args", "-r",
                        "perception/bev_occupancy:=/car/bev", "-r", "odom:=/vehicle/odom"], ros_env)
    client = client_factory(grid_topic="/car/bev")
    try:
        node.wait_for("waiting for lifecycle transitions")
        assert client.state() == "unconfigured"
        refused = client.set_parameter("budget_ms", 0.5)
        assert not refused.successful and refused.reason  # outside the descriptor's range [1, 10000]
        assert client.transition("configure")[0] and client.state() == "inactive"
        refused = client.set_parameter("backend", "onnxruntime")
        assert not refused.successful and "read at configure" in refused.reason
        # A static policy with fisheye and ultrasonic: the adaptive default's choice varies with the machine's load
        # (docs/ros.md has its figures), and this test is about the node, not the scheduler.
        assert client.set_parameter("policy", "all").successful  # taken at activate
        # Every frame of the replays, however far behind a loaded machine puts the node (the default skips what is
        # more than 1 s behind: docs/ros.md); a runtime change, taken at activate like the policy.
        assert client.set_parameter("max_input_lag_s", 0.0).successful
        assert client.transition("activate")[0] and client.state() == "active"
        node.wait_for("edge node: subscribed")
        assert any("parameters applied:" in ln and "max_input_lag_s=0.0" in ln for ln in node.lines)
        subs = {t: len(client.node.get_subscriptions_info_by_topic(t)) for t in ("/vehicle/odom", "/odom")}
        assert subs == {"/vehicle/odom": 1, "/odom": 0}  # inputs are relative names, remappable
        refused = client.set_parameter("policy", "night")
        assert not refused.successful and "policy" in refused.reason

        compressed = replay(bag, ros_env, remaps=(ODOM_REMAP,))
        client.spin(300, until=lambda: len(client.grids) >= 8)
        assert len(client.grids) >= 8, node.lines[-20:]
        client.ask("is the left side clear?")
        client.spin(120, until=lambda: client.answers)
        assert client.answers and "use_llm is false" in client.answers[0]["refused"]  # every question a reply
        assert client.set_parameter("policy", "camera").successful
        client.spin(300, until=lambda: any(p["reason"].startswith("static policy camera") for p in client.plans))
        finished(compressed)
        first_plan, camera_plan = client.plans[0], client.plans[-1]
        assert first_plan["reason"] == "static policy all" and {"fisheye", "ultrasonic"} <= set(first_plan["modalities"])
        assert camera_plan["reason"].startswith("static policy camera") and "ultrasonic" not in camera_plan["modalities"]
        assert_frame_stamps(client.grids, front_stamps, 0.8)
        for stamp, frame, width, height, values in client.grids:
            assert frame == "base_link" and (width, height) == (100, 100)
            assert values <= {0, 100, 90, 80, -1}
        status = {s.name: {v.key: v.value for v in s.values} for s in client.diagnostics[-1].status}
        assert "fisheye_ms" in status["mpnp_edge/processing_time"]  # per-stage processing times
        assert status["mpnp_edge/input"]["lag_skips"] == "0"  # max_input_lag_s 0: nothing skipped
        assert int(status["mpnp_edge/input"]["received /fisheye/front/image_raw"]) >= len(client.grids)
        assert int(status["mpnp_edge/input"]["received /odom"]) > 0  # odometry arrived on the remapped name

        ok, deactivate_s = client.transition("deactivate")
        assert ok and client.state() == "inactive"
        assert client.set_parameter("policy", "all").successful  # taken at the next activate
        ok, activate_s = client.transition("activate")
        assert ok and client.state() == "active"
        print(f"deactivate {deactivate_s * 1e3:.0f} ms, activate {activate_s * 1e3:.0f} ms (service round trips)")
        assert sum("configured:" in ln for ln in node.lines) == 1  # nothing loaded again
        before = len(client.grids)
        raw = replay(bag, ros_env, "--raw-images", remaps=(ODOM_REMAP,))
        client.spin(300, until=lambda: len(client.grids) >= before + 8)
        finished(raw)
        assert len(client.grids) >= before + 8
        assert_frame_stamps(client.grids[before:], front_stamps, 0.5)
        assert client.transition("deactivate")[0] and client.transition("cleanup")[0]
        assert client.state() == "unconfigured"
    finally:
        code = node.stop()
    assert code == 0, f"node did not stop cleanly on SIGINT (exit {code}): {''.join(node.lines)[-2000:]}"


@pytest.mark.timeout(600)
def test_bad_parameters_fail_configure_naming_the_key(tmp_path, ros_env, client_factory) -> None:
    """A parameters file with an unknown key and a value out of range: configure returns FAILURE, the log names
    both keys, the node stays up and unconfigured; once the value is set right, configure goes on past them."""
    params = tmp_path / "bad.param.yaml"
    params.write_text("/**:\n  ros__parameters:\n    budget_msec: 50.0\n    dwell_frames: 0\n    use_llm: false\n")
    node = NodeProcess(["--params-file", str(params)], ros_env)  # autostart: configure runs at once
    client = client_factory()
    try:
        node.wait_for("autostart stopped in state unconfigured")
        text = "".join(node.lines)
        assert "configure failed" in text and "'budget_msec'" in text and "unknown key" in text
        assert "dwell_frames" in text
        assert client.state() == "unconfigured"
        assert client.set_parameter("dwell_frames", 3).successful
        assert not client.transition("configure")[0]  # the unknown key still fails it
        assert client.state() == "unconfigured"
    finally:
        code = node.stop()
    assert code == 0, f"node did not stop cleanly on SIGINT (exit {code}): {''.join(node.lines)[-2000:]}"
