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
    for bad in ({"budget_msec": 50.0}, {"dwell_frames": 0}, {"policy": "night"}, {"use_llm": "yes"}):
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
    assert f"edge run: {f}: ignoring camera_transport, rig (read by edge node only)" in capsys.readouterr().err
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
                                                   "quality_per_ms", "answer_weight", "questions_every_s"}
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
