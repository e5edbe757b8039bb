"""rclpy QoS profiles of DESIGN.md: sensor topics best effort / keep last 5, everything else reliable / 10 (questions
and answers / 1000)."""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from edge.drives.bag import DEFAULT_DEPTH, SENSOR_DEPTH, is_sensor_topic


def sensor_qos(depth: int = SENSOR_DEPTH) -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.VOLATILE)


def reliable_qos(depth: int = DEFAULT_DEPTH, latched: bool = False) -> QoSProfile:
    """`latched`: transient local, so a subscriber that joins later (and asks for it) gets the last `depth`."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


QUESTION_DEPTH = 1000


def question_qos() -> QoSProfile:
    """/mpnp/question and /mpnp/answer: reliable, keep last QUESTION_DEPTH. Every question gets a reply, so a burst
    must queue, not overwrite: at the default depth 10, 200 questions sent within 1 s to a node without an LLM got
    111 replies (tests/test_node_faults_ros.py); the rest were overwritten in the node's subscription history."""
    return reliable_qos(QUESTION_DEPTH)


def clock_qos() -> QoSProfile:
    """What rclcpp::ClockQoS() offers (best effort, keep last 1): /clock subscribers with use_sim_time match it."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.VOLATILE)


def qos_for_topic(topic: str) -> QoSProfile:
    return sensor_qos() if is_sensor_topic(topic) else reliable_qos()
