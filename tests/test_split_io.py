"""The split graph without DDS: the token contract (ros_nodes/split_io.py: tokens through sensor_msgs/Image 32FC1
and back, frames grouped by stamp, the LLM node's choice of aligner set) and the graph file for `edge launch`."""

from __future__ import annotations

import pytest
import torch

from edge.runtime.scheduler import AlignerSet
from ros_nodes.split_io import (TokenFrames, choose_aligner_set, llm_diagnostics_msg, token_ages, token_msg,
                                tokens_from_msg, token_topic)


@pytest.mark.ros
def test_tokens_survive_the_message_with_shape_and_stamp() -> None:
    from builtin_interfaces.msg import Time

    tokens = torch.randn(1, 5, 128)
    msg = token_msg(Time(sec=12, nanosec=345), tokens)
    assert (msg.height, msg.width, msg.encoding, msg.step) == (5, 128, "32FC1", 512)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (12, 345, "base_link")
    back = tokens_from_msg(msg)
    assert back.shape == (1, 5, 128) and torch.equal(back, tokens)
    msg.encoding = "mono8"
    with pytest.raises(ValueError, match="encoding 'mono8'"):
        tokens_from_msg(msg)
    msg.encoding, msg.data = "32FC1", msg.data[:-4]
    with pytest.raises(ValueError, match="5 x 128 floats"):
        tokens_from_msg(msg)
    assert token_topic("audio") == "perception/tokens/audio"  # relative: remappable


def test_frames_grouped_by_stamp_newest_complete_one_answered() -> None:
    now = [0.0]
    frames = TokenFrames(settle_s=0.03, clock=lambda: now[0])
    assert frames.latest() is None
    a, b = torch.zeros(1, 1, 2), torch.ones(1, 1, 2)
    frames.add("fisheye", 100, a)
    frames.add("audio", 100, a)
    assert sorted(frames.latest()[1]) == ["audio", "fisheye"]  # the only frame: answered from at once
    now[0] = 0.1
    frames.add("fisheye", 200, b)  # a newer frame begins: still settling, the previous one is complete
    stamp, tokens = frames.latest()
    assert stamp == 100 and sorted(tokens) == ["audio", "fisheye"]
    frames.add("audio", 200, b)
    now[0] = 0.14
    stamp, tokens = frames.latest()
    assert stamp == 200 and torch.equal(tokens["audio"], b)
    frames.add("camera", 150, a)  # late message of an older frame: ignored
    stamp, tokens = frames.latest()
    assert stamp == 200 and sorted(tokens) == ["audio", "fisheye"]


@pytest.mark.ros
def test_llm_node_diagnostics_give_token_ages_and_each_answers_processing_time() -> None:
    """The LLM node's /diagnostics: WARN once no modality's tokens came within 1 s (the perception node stopped);
    with an answer, its total, generation and wait times, WARN when it missed answer_budget_ms or failed."""
    from builtin_interfaces.msg import Time
    from diagnostic_msgs.msg import DiagnosticStatus

    OK, WARN = DiagnosticStatus.OK, DiagnosticStatus.WARN  # noqa: N806 - bytes in rclpy, as the message defines them
    now = [100.0]
    frames = TokenFrames(clock=lambda: now[0])
    frames.add("fisheye", 1, torch.zeros(1, 2, 4))
    now[0] = 100.4
    frames.add("audio", 1, torch.zeros(1, 2, 4))
    now[0] = 101.2
    ages = token_ages(frames, ("fisheye", "audio", "camera"))
    assert ages["fisheye"] == pytest.approx(1.2) and ages["audio"] == pytest.approx(0.8) and ages["camera"] > 1e9
    msg = llm_diagnostics_msg(Time(sec=5), ages, {"answered": 3, "refused": 1}, 2)
    (tokens,) = msg.status
    values = {v.key: v.value for v in tokens.values}
    assert tokens.name == "mpnp_edge/llm/tokens" and tokens.level == OK and tokens.message == "tokens of audio"
    assert values["fisheye_age_s"] == "1.200" and values["answered"] == "3" and values["pending"] == "2"
    answer = {"latency_ms": 900.0, "generate_ms": 650.0, "within_budget": True, "data_stamp_ns": 7}
    late = llm_diagnostics_msg(Time(sec=5), {"audio": 3.0}, {}, 0, {**answer, "within_budget": False})
    assert late.status[0].level == WARN and "perception node" in late.status[0].message
    timing = late.status[1]
    assert timing.name == "mpnp_edge/llm/processing_time" and timing.level == WARN
    assert {v.key: v.value for v in timing.values} == {"total_ms": "900.00", "generate_ms": "650.00",
                                                       "wait_ms": "250.00", "stamp_ns": "7"}
    assert llm_diagnostics_msg(Time(), ages, {}, 0, answer).status[1].level == OK


def test_aligner_set_choice_most_modalities_then_accuracy_none_when_nothing_fits() -> None:
    sets = [AlignerSet("run:fisheye", ("fisheye",), {"day": 0.6}),
            AlignerSet("run:fisheye+audio", ("fisheye", "audio"), {"day": 0.5, "night": 0.3}),
            AlignerSet("run:camera", ("camera",), {"day": 0.9}),
            AlignerSet("other:fisheye+audio", ("fisheye", "audio"), {"day": 0.55, "night": 0.45})]
    assert choose_aligner_set(sets, ["fisheye", "audio", "ultrasonic"], 1.0).name == "other:fisheye+audio"
    assert choose_aligner_set(sets, ["fisheye"], 1.0).name == "run:fisheye"
    assert choose_aligner_set(sets, ["camera"], 0.5) is None  # pruned otherwise than in training
    assert choose_aligner_set(sets, ["ultrasonic"], 1.0) is None


def test_split_graph_file_starts_both_roles_with_the_shipped_parameters() -> None:
    from edge.cli import build_parser
    from ros_nodes.launcher import CONFIG_DIR, load_graph

    perception, llm, replay = load_graph(CONFIG_DIR / "split.graph.yaml", {"bag": "/d"}).processes
    for spec, role in ((perception, "perception"), (llm, "llm")):
        argv = spec.argv()
        ns = build_parser(only="node").parse_args(argv[argv.index("edge.cli") + 1:])
        assert ns.role == role and ns.ros_args[ns.ros_args.index("--params-file") + 1] == \
            str(CONFIG_DIR / "runtime.param.yaml")
        assert spec.ready == "edge node: subscribed" and spec.required
    assert replay.edge[:2] == ["replay", "/d"] and not replay.required
