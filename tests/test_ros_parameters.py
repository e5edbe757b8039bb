"""The node's parameters against their one source (edge.config.RuntimeConfig): shipped files, schema, descriptors,
edge run's config, the question gate; `declare` on a real rclpy node (no traffic)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from edge.config import RuntimeConfig, load_yaml_model, options
from edge.errors import ConfigError
from ros_nodes import parameters as P
from ros_nodes.node_io import QuestionGate


def test_shipped_files_are_generated_from_the_config_model() -> None:
    assert json.loads(P.SCHEMA_FILE.read_text()) == P.json_schema(), "stale: run python -m ros_nodes.parameters"
    assert P.PARAM_FILE.read_text() == P.param_yaml(), "stale: run python -m ros_nodes.parameters"


def test_docs_show_the_generated_parameter_table() -> None:
    assert P.markdown_table() in (Path(__file__).resolve().parents[1] / "docs" / "ros.md").read_text()


def test_schema_accepts_the_shipped_file_and_rejects_unknown_keys_and_out_of_range() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = P.json_schema()
    jsonschema.validate(yaml.safe_load(P.PARAM_FILE.read_text()), schema)
    jsonschema.validate({"/**": {"ros__parameters": {}}}, schema)  # every key optional
    for bad in ({"budget_msec": 50.0}, {"dwell_frames": 0}, {"policy": "night"}, {"use_llm": "yes"},
                {"max_input_lag_s": -1.0}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"/**": {"ros__parameters": bad}}, schema)


def test_the_same_file_configures_edge_run_and_the_node(tmp_path: Path) -> None:
    """A ROS parameters file and edge run's flat YAML read the same; an empty file is every default."""
    cfg = load_yaml_model(P.PARAM_FILE, RuntimeConfig)
    assert cfg == RuntimeConfig()
    assert cfg.perception_dir.endswith("models/perception") and cfg.llm is None and cfg.rig is None
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing set\n")
    assert load_yaml_model(empty, RuntimeConfig) == RuntimeConfig()
    flat = tmp_path / "run.yaml"
    flat.write_text("policy: camera\nbudget_ms: 50\n")
    assert load_yaml_model(flat, RuntimeConfig).budget_ms == 50.0
    bad = tmp_path / "bad.param.yaml"
    bad.write_text("/**:\n  ros__parameters:\n    budget_msec: 50.0\n")
    with pytest.raises(ConfigError, match="key 'budget_msec': unknown key"):
        load_yaml_model(bad, RuntimeConfig)


def test_edge_run_reads_the_shared_model_and_ignores_node_keys_aloud(tmp_path: Path, capsys) -> None:
    """edge run --config validates with RuntimeConfig (the one model); keys only the node reads are accepted, so
    that one file configures both, and named on stderr when set; report.json records the run keys as before."""
    import argparse

    from edge.runtime.cli import load_config, run_options

    def args(config: Path, policy: str | None = None, backend: str | None = None) -> argparse.Namespace:
        return argparse.Namespace(config=config, policy=policy, no_llm=False, backend=backend, max_frames=None)

    assert load_config(args(P.PARAM_FILE)) == RuntimeConfig()
    assert capsys.readouterr().err == ""  # the shipped file sets node keys to their defaults: nothing to say
    f = tmp_path / "both.yaml"
    f.write_text("rig: calibration/default_rig.yaml\ncamera_transport: raw\nbudget_ms: 50\n")
    cfg = load_config(args(f, policy="camera", backend="onnxruntime"))
    assert (cfg.budget_ms, cfg.policy, cfg.backend) == (50.0, "camera", "onnxruntime")
    assert f"edge run: {f}: ignoring camera_transport (read by edge node only)" in capsys.readouterr().err
    assert cfg.rig == "calibration/default_rig.yaml"  # both front ends read the rig (a LiDAR rig's runs)
    dumped = run_options(cfg)
    assert list(dumped) == list(options("run"))  # declaration order, node-only keys left out
    assert json.dumps(dumped["policy"]) == '"camera"' and type(dumped["backend"]) is str


def test_every_node_option_has_a_type_description_and_range_where_numeric() -> None:
    opts = P.node_options()
    assert {o.name for o in opts} == set(options("node"))
    for o in opts:
        assert o.description and o.kind in (bool, int, float, str)
        if o.kind in (int, float):
            assert o.minimum is not None and o.maximum is not None and o.minimum <= o.default <= o.maximum, o.name
    assert {o.name for o in opts if o.dynamic} == {"policy", "budget_ms", "budget_mb", "dwell_frames",
                                                   "quality_per_ms", "answer_weight", "questions_every_s",
                                                   "max_input_lag_s"}
    policy = next(o for o in opts if o.name == "policy")
    assert policy.choices == ("adaptive", "camera", "all") and policy.default == "adaptive"
    backend = next(o for o in opts if o.name == "backend")
    assert backend.choices == ("eager", "onnxruntime", "tensorrt") and type(backend.default) is str


def test_question_gate_refuses_with_a_reason() -> None:
    now = [0.0]
    gate = QuestionGate(has_llm=True, every_s=2.0, clock=lambda: now[0])
    assert gate.refusal("is the left side clear?") is None
    now[0] = 1.0
    assert "at most one every 2 s" in gate.refusal("and the right?")
    now[0] = 2.5
    assert gate.refusal("and the right?") is None
    assert "use_llm is false" in QuestionGate(has_llm=False, every_s=1.0).refusal("anything?")
    assert gate.refusal("  ") == "empty question"


def test_edge_run_yaml_is_wrapped_for_rcl(tmp_path: Path) -> None:
    from ros_nodes.runtime_node import ros_params_file

    flat = tmp_path / "run.yaml"
    flat.write_text("policy: all\n")
    wrapped = Path(ros_params_file(str(flat)))
    assert yaml.safe_load(wrapped.read_text()) == {"/**": {"ros__parameters": {"policy": "all"}}}
    assert ros_params_file(str(P.PARAM_FILE)) == str(P.PARAM_FILE)


@pytest.mark.ros
def test_declare_takes_good_values_and_names_bad_ones(tmp_path: Path) -> None:
    import rclpy
    from rclpy.node import Node

    params = tmp_path / "p.param.yaml"
    params.write_text("/**:\n  ros__parameters:\n    budget_ms: 50\n    dwell_frames: 0\n    policy: camera\n"
                      "    use_llm: 3\n    budget_msec: 1.0\n")
    context = rclpy.Context()
    rclpy.init(context=context, args=["x", "--ros-args", "--params-file", str(params)])
    try:
        node = Node(P.NODE_NAME, context=context)
        problems = P.declare(node)
        values = P.current_values(node)
        assert values["budget_ms"] == 50.0 and values["policy"] == "camera"  # YAML's 50 taken as 50.0
        assert set(problems) == {"dwell_frames", "use_llm", "budget_msec"}
        assert "unknown key" in problems["budget_msec"]
        assert values["dwell_frames"] == 5  # the default stands in until configure reports the problem
        d = node.describe_parameter("budget_ms")
        assert d.floating_point_range[0].from_value == 1.0 and d.description
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_pipeline_reports_an_undecodable_image_and_keeps_going() -> None:
    """Bad input on a sensor topic (a raw image in an encoding nobody decodes) becomes a reported problem for
    /diagnostics; the frames keep coming with that camera missing, and past a frame whose processing failed. Real sync and decoding; the runtime is a
    stand-in that records what it is given."""
    import types

    import numpy as np

    from edge.drives import messages as M
    from edge.drives import topics as T
    from edge.sensors.rig import load_rig
    from ros_nodes import node_io as io

    got: list = []
    seen = [0]

    def submit(sample: object) -> None:
        seen[0] += 1
        if seen[0] == 2:
            raise RuntimeError("a frame that fails")
        got.append(sample)

    runtime = types.SimpleNamespace(stack=types.SimpleNamespace(cfg=types.SimpleNamespace(image_reduce=4)),
                                    submit=submit, drain=lambda: [])
    pipeline = io.Pipeline(runtime, io.stream_types(load_rig()), publish=lambda r: None, before_frame=lambda: None,
                           max_delay_s=0.1)
    pipeline.start()
    img = np.zeros((48, 64, 3), np.uint8)
    t0 = 1_700_000_000_000_000_000
    for i in range(20):
        t = t0 + i * 100_000_000
        pipeline.put(T.fisheye_image_topic("front"), T.COMPRESSED_IMAGE,
                     M.serialize(M.compressed_image(t, "fisheye_front", img), T.COMPRESSED_IMAGE))
        bad = M.raw_image(t, "camera_front", img)
        bad.encoding = "yuv422_unknown"
        pipeline.put(T.FRONT_CAMERA_IMAGE, T.IMAGE, M.serialize(bad, T.IMAGE))
    deadline = time.monotonic() + 20
    while len(got) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    pipeline.stop()
    assert len(got) >= 5 and all(s.sensor("camera", "front") is None and s.sensor("fisheye", "front") is not None for s in got)
    assert pipeline.failed_frames == 1  # logged and counted; the frames after it came
    assert any("camera/front/image_raw" in p for p in pipeline.input_problems()), pipeline.input_problems()


def _stamped(t_s: float) -> bytes:
    """A CDR message whose header stamp is `t_s` (little-endian: encapsulation, then header.stamp first)."""
    import struct

    ns = round(t_s * 1e9)
    return b"\x00\x01\x00\x00" + struct.pack("<iI", ns // 1_000_000_000, ns % 1_000_000_000) + b"\x00" * 8


def test_a_node_behind_skips_what_is_older_than_max_input_lag_s_per_stream(capsys) -> None:
    """The worker's side of the inbox (no DDS, a stand-in runtime): a message stamped more than max_input_lag_s
    before the latest received on its own stream is skipped and counted per topic, apart from inbox-full drops, and
    named in the node's stop line; the others go on in order, another stream's stamps (even far ahead) never make
    one stale, a stream whose clock jumps back is not starved, and 0 processes everything."""
    import io as stdio
    import types

    from edge.sensors.rig import load_rig
    from ros_nodes import node_io as io

    def pipeline(max_lag_s: float) -> io.Pipeline:
        runtime = types.SimpleNamespace(stack=types.SimpleNamespace(cfg=types.SimpleNamespace(image_reduce=4)))
        return io.Pipeline(runtime, io.stream_types(load_rig()), publish=lambda r: None, before_frame=lambda: None,
                           max_delay_s=0.1, max_lag_s=max_lag_s)

    def taken(p: io.Pipeline) -> list[tuple[str, float]]:
        """What the worker takes from the inbox (it never started), up to an end mark (a stream of its own)."""
        p.put("end", "x/msg/Y", _stamped(0.0))
        out = []
        for m in p._incoming():
            if m.topic == "end":
                return out
            out.append((m.topic, m.stamp_ns / 1e9))
        raise AssertionError("the end mark was skipped")

    sent = [("a", 10.0), ("a", 10.5), ("b", 10.1), ("a", 11.2), ("a", 11.6), ("c", 500.0), ("b", 10.2)]
    p = pipeline(1.0)
    for stream, t in sent:
        p.put(stream, "x/msg/Y", _stamped(t))
    assert taken(p) == [("b", 10.1), ("a", 11.2), ("a", 11.6), ("c", 500.0), ("b", 10.2)]
    assert p.lag.skipped == {"a": 2} and p.lag.total == 2 and p.dropped == 0  # a@10.0, a@10.5: 1.6 s, 1.1 s behind
    out = stdio.StringIO()
    io.Tally(out=out, losses=p.losses).flush(final=True)
    assert "2 messages skipped as behind (max_input_lag_s); 0 messages dropped (inbox full)" in out.getvalue()

    p = pipeline(0.0)  # never skip: every message, in order (a bag replayed for evaluation)
    for stream, t in sent:
        p.put(stream, "x/msg/Y", _stamped(t))
    assert taken(p) == sent and p.lag.total == 0

    p = pipeline(1.0)  # the clock jumps back (a replay looping with its own stamps): the new present counts
    for t in (30.0, 31.0, 32.0, 0.0, 0.1):
        p.put("a", "x/msg/Y", _stamped(t))
    assert taken(p) == [("a", 30.0), ("a", 31.0), ("a", 32.0), ("a", 0.0), ("a", 0.1)]

    bound = io.LagBound(0.5)  # the dynamic parameter: a new value holds from the next message taken
    bound.received("a", 2_000_000_000)
    assert bound.stale("a", 1_400_000_000) and not bound.stale("a", 1_600_000_000)
    bound.max_lag_s = 0.0
    assert not bound.stale("a", 0) and bound.skipped == {"a": 1}


@pytest.mark.parametrize("value, problem", [(-0.5, "greater than or equal to 0"), (float("nan"), "finite number"),
                                            (61.0, "less than or equal to 60")])
def test_max_input_lag_s_is_validated_naming_it(value: float, problem: str) -> None:
    """As the node validates its parameters at configure and on a runtime change (ros_nodes/lifecycle.py)."""
    with pytest.raises(ConfigError, match=f"key 'max_input_lag_s': .*{problem}"):
        P.validate({"max_input_lag_s": value}, "parameter set")
    assert P.validate({"max_input_lag_s": 0.0}, "parameter set").max_input_lag_s == 0.0
    lag = next(o for o in P.node_options() if o.name == "max_input_lag_s")
    assert (lag.kind, lag.default, lag.minimum, lag.dynamic) == (float, 1.0, 0.0, True)
