"""The split graph (perception node + LLM node) beside the composite node, over real DDS on loopback: the same
replayed drive feeds both graphs at once, this test process is the client.

Both graphs run with `policy` pinned to `all`: under the adaptive default each process's scheduler measures its own
costs on a shared, loaded machine and may choose different plans, which would make the grids differ for a reason
that is not the node path. And with `max_input_lag_s` 0 (never skip): a process that falls behind on a loaded
machine skips its backlog, and two processes never skip the same messages, so their grids would differ for that."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pytest

from edge.drives import topics as T
from tests.test_runtime_node_ros import NodeProcess, drive, finished, replay, ros_env  # noqa: F401 - fixtures

pytestmark = [pytest.mark.ros]
SPLIT_BEV, COMPOSITE_BEV = "/split/bev", "/composite/bev"
OCCUPIED = 100  # nav_msgs/OccupancyGrid value of an obstacle cell (docs/drives.md)
NO_SKIP = "max_input_lag_s:=0.0"  # every message processed in order, however late (see the module's docstring)


class GraphClient:
    """Records both graphs' grids (full data, arrival time) and the LLM node's answers; asks questions."""

    def __init__(self) -> None:
        import rclpy
        from nav_msgs.msg import OccupancyGrid
        from std_msgs.msg import String

        self.rclpy, self.context = rclpy, rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("split_test_client", context=self.context)
        self.grids: dict[str, dict[int, np.ndarray]] = {SPLIT_BEV: {}, COMPOSITE_BEV: {}}
        self.arrivals: list[float] = []  # split grids' arrival (monotonic)
        self.answers: list[tuple[float, dict[str, Any]]] = []
        for topic in self.grids:
            self.node.create_subscription(OccupancyGrid, topic, self._grid(topic), 100)
        self.node.create_subscription(String, T.ANSWER, lambda m: self.answers.append(
            (time.monotonic(), json.loads(m.data))), 100)
        from diagnostic_msgs.msg import DiagnosticArray

        self.llm_diag: list[dict[str, dict[str, str]]] = []  # the LLM node's statuses, by name -> values
        self.node.create_subscription(DiagnosticArray, T.DIAGNOSTICS, self._diag, 100)
        self.question = self.node.create_publisher(String, T.QUESTION, 10)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def _grid(self, topic: str) -> Any:
        def callback(m: Any) -> None:
            self.grids[topic][m.header.stamp.sec * 10**9 + m.header.stamp.nanosec] = \
                np.asarray(m.data, dtype=np.int8).reshape(m.info.height, m.info.width)
            if topic == SPLIT_BEV:
                self.arrivals.append(time.monotonic())
        return callback

    def _diag(self, m: Any) -> None:
        llm = {st.name: {v.key: v.value for v in st.values} for st in m.status if st.name.startswith("mpnp_edge/llm/")}
        if llm:
            self.llm_diag.append(llm)

    def spin(self, seconds: float, until: Any = None) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (until and until()):
            self.executor.spin_once(timeout_sec=0.05)

    def ask(self, text: str) -> float:
        from std_msgs.msg import String

        self.spin(30, until=lambda: self.question.get_subscription_count() > 0)
        self.question.publish(String(data=text))
        return time.monotonic()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.shutdown(context=self.context)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a == OCCUPIED, b == OCCUPIED
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.mark.timeout(900)
def test_split_graph_gives_the_composite_occupancy_and_answers_while_it_flows(drive, ros_env) -> None:
    """One replay feeds the composite node (outputs remapped under /composite) and the split graph at once: a
    question before any tokens is refused with that reason; the LLM node (the real embedded LLM) answers a question
    from the perception node's tokens while grids keep arriving, and publishes the answer's processing time and the
    tokens' ages on /diagnostics; on every stamp both graphs published, the grids agree (IoU of obstacle cells
    >= 0.99)."""
    bag, front_stamps = drive
    nodes = {
        "perception": NodeProcess(["--role", "perception", "--policy", "all", "--ros-args", "-p", NO_SKIP,
                                   "-r", f"perception/bev_occupancy:={SPLIT_BEV}"], ros_env),
        "llm": NodeProcess(["--role", "llm", "--ros-args", "-p", "questions_every_s:=0.5"], ros_env),
        "composite": NodeProcess(["--no-llm", "--policy", "all", "--ros-args", "-p", NO_SKIP, "-r",
                                  f"perception/bev_occupancy:={COMPOSITE_BEV}", "-r", "mpnp/plan:=/composite/plan",
                                  "-r", "mpnp/question:=/composite/question", "-r", "mpnp/answer:=/composite/answer",
                                  "-r", "__node:=mpnp_edge_composite"], ros_env),
    }
    client = GraphClient()
    try:
        for n in nodes.values():
            n.wait_for("edge node: subscribed")
        client.ask("is the left side clear?")
        client.spin(60, until=lambda: client.answers)
        assert client.answers, "no reply to a question asked before any tokens"
        assert "no modality tokens received yet" in client.answers[0][1]["refused"]

        # 6 s of wall time: room to answer while grids flow. Both graphs must be matched before the first message:
        # best-effort data sent before a match is lost, and a graph that missed the start has other audio windows
        # and plausibility history on the first common stamps.
        player = replay(bag, ros_env, "--rate", "0.5", "--subscribers", "2")
        client.spin(300, until=lambda: len(client.arrivals) >= 6)
        assert len(client.arrivals) >= 6, nodes["perception"].lines[-20:]
        asked = client.ask("is the left side clear?")
        client.spin(300, until=lambda: len(client.answers) >= 2)
        assert len(client.answers) >= 2, nodes["llm"].lines[-20:]
        answered, reply = client.answers[1]
        assert "refused" not in reply and "error" not in reply, reply
        assert reply["modalities"] and reply["stamp_ns"] in front_stamps, reply  # tokens of a camera-stamped frame
        client.spin(3, until=lambda: any("mpnp_edge/llm/processing_time" in d for d in client.llm_diag))
        timing = [d for d in client.llm_diag if "mpnp_edge/llm/processing_time" in d][0]
        assert float(timing["mpnp_edge/llm/processing_time"]["total_ms"]) >= \
            float(timing["mpnp_edge/llm/processing_time"]["generate_ms"]) > 0
        assert timing["mpnp_edge/llm/processing_time"]["stamp_ns"] == str(reply["stamp_ns"])
        assert all(float(timing["mpnp_edge/llm/tokens"][f"{m}_age_s"]) < 5 for m in reply["modalities"])
        finished(player)  # every topic matched by both graphs before playback: no 120 s wait
        client.spin(3)

        before = [t for t in client.arrivals if asked - 2.0 <= t < asked]
        during = [t for t in client.arrivals if asked <= t <= answered]
        span = answered - asked
        print(f"grids/s: {len(before) / 2.0:.1f} in the 2 s before the question, "
              f"{len(during) / max(span, 1e-9):.1f} during its {span:.2f} s answer")
        if span >= 0.6:  # two frame periods at 0.5x: grids must have kept coming
            assert during, "no occupancy grid while the LLM node answered"

        split, composite = client.grids[SPLIT_BEV], client.grids[COMPOSITE_BEV]
        common = sorted(set(split) & set(composite))
        ious = [iou(split[s], composite[s]) for s in common]
        equal = sum(np.array_equal(split[s], composite[s]) for s in common)
        print(f"{len(split)} split grids, {len(composite)} composite grids, {len(common)} on common stamps: "
              f"{equal} identical, min IoU {min(ious, default=float('nan')):.4f}")
        assert len(common) >= 0.8 * min(len(split), len(composite)) and len(common) >= 10
        assert min(ious) >= 0.99, sorted(ious)[:5]
    finally:
        codes = {name: n.stop() for name, n in nodes.items()}
        client.close()
    assert codes == {"perception": 0, "llm": 0, "composite": 0}, codes
