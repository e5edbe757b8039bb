"""Adding a modality touches no core file (issue 11): the drive helpers (sensor QoS, the remap contract, `edge drive
info`'s contract check) know a plugin's topics from its declaration, and `edge run`'s report and summary list the
modalities the run's perception stack built, not every installed plugin. A fake "thermal" plugin, registered only in
these tests, stands for a modality the core has never heard of."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.drives import messages as M
from edge.drives import topics as T
from edge.drives.bag import BagWriter, is_sensor_topic, open_bag, sensor_prefixes
from edge.drives.info import bag_info
from edge.encoders.config import PerceptionConfig
from edge.modalities import ModalityPlugin, SyncKind, TokenSpec
from edge.modalities import registry as registry_module
from edge.modalities.builtin import BUILTINS
from edge.modalities.registry import Registry
# imported here, before any test puts its registry in place: modules that read the registry at import
# (edge.runtime.scheduler.MODALITIES) must hold the installed one
from edge.runtime import report as R
from edge.runtime.cli import print_summary
from edge.runtime.context import Context
from edge.runtime.runtime import FrameResult
from edge.runtime.scheduler import Decision, Plan

S = 1_700_000_000_000_000_000
MS = 1_000_000
HEAD = "/thermal/"
BUILTIN_NAMES = tuple(p.name for p in BUILTINS)


def _thermal_topic(sensor: str) -> str:
    return f"{HEAD}{sensor}/image_raw"


def _recorded(topics: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(t[len(HEAD):-len("/image_raw")] for t in topics if t.startswith(HEAD) and t.endswith("/image_raw"))


THERMAL = ModalityPlugin(
    name="thermal", sensors=lambda rig: (), default_sensors=(), recorded_sensors=_recorded,
    topics=lambda sensors: tuple(T.TopicSpec(_thermal_topic(s), (T.IMAGE,), True) for s in sensors),
    sync=SyncKind.NEAREST, bev=False, tokens=TokenSpec(4, 128, "thermal-v1"), weights="thermal.safetensors",
    health_streams=("thermal",), encoder="edge_thermal:build", decoder="edge.drives.decoders:IMAGE")


@pytest.fixture()
def with_thermal(monkeypatch: pytest.MonkeyPatch) -> Registry:
    """The built-ins and the fake plugin as the installed registry (not the real one: no LiDAR here)."""
    reg = Registry((*BUILTINS, THERMAL), tuple(f"{p.name} = test" for p in (*BUILTINS, THERMAL)))
    monkeypatch.setattr(registry_module, "registry", lambda: reg)
    monkeypatch.setattr(R, "registry", lambda: reg)  # the report's own binding (its default plugins)
    return reg


# ---------------------------------------------------------------- drive helpers


def test_the_builtins_sensor_namespaces_are_the_historic_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """bag.py's former _SENSOR_PREFIXES, now derived from the built-ins' declarations."""
    reg = Registry(BUILTINS, tuple(p.name for p in BUILTINS))
    monkeypatch.setattr(registry_module, "registry", lambda: reg)
    assert set(sensor_prefixes()) == {"/fisheye/", "/camera/", "/ultrasonic/", "/audio/"}
    for topic, sensor in (("/ultrasonic/some_new_sensor", True), ("/camera/rear/image_raw", True),
                          ("/fisheye/front/image_raw/compressed", True), ("/odom", True),
                          ("/ground_truth/qa", False), ("/tf", False), ("/thermal/rear/image_raw", False)):
        assert is_sensor_topic(topic) is sensor, topic


def test_a_plugins_topics_are_sensor_data_without_a_core_edit(with_thermal: Registry, tmp_path: Path) -> None:
    assert "/thermal/" in sensor_prefixes()
    topic = _thermal_topic("rear")  # no default sensor: not in the contract read without a rig
    assert topic not in T.known_topics(()) and is_sensor_topic(topic)
    with BagWriter(tmp_path / "bag") as w:  # recorded with the sensor QoS (best effort), as the built-ins' are
        w.write(topic, T.IMAGE, S, M.raw_image(S, "thermal_rear", np.zeros((4, 4, 3), np.uint8)))
        w.write("/tf_static_like", T.STRING, S, M.string_json("x"))
    with open_bag(tmp_path / "bag") as bag:
        qos = {name: info.qos[0].get("reliability") for name, info in bag.topics.items()}
    assert qos[topic] != qos["/tf_static_like"]


def test_a_plugins_recorded_sensor_is_a_contract_topic_for_remaps(with_thermal: Registry) -> None:
    topic = _thermal_topic("roof")
    assert T.is_contract_topic(topic) and T.is_contract_topic("/ultrasonic/any_sensor")
    assert not T.is_contract_topic("/thermal/roof/other")
    remap = T.TopicRemap.parse([f"{topic}:=/vehicle/ir/image"])
    view = remap.view({"/vehicle/ir/image", "/odom"}, "bag")
    assert view.contract_name("/vehicle/ir/image") == topic
    with pytest.raises(T.RemapError, match="not a topic the runtime reads"):
        T.TopicRemap.parse(["/thermal/roof/other:=/x"])


def test_drive_info_checks_a_plugins_topics_against_its_declaration(with_thermal: Registry, tmp_path: Path) -> None:
    good, bad = _thermal_topic("front"), _thermal_topic("rear")
    with BagWriter(tmp_path / "bag") as w:  # the writer checks the contract read without a rig: no thermal sensor
        w.write(good, T.IMAGE, S, M.raw_image(S, "thermal_front", np.zeros((4, 4, 3), np.uint8)))
        w.write(bad, T.STRING, S, M.string_json("not an image"))
        w.write(T.ultrasonic_topic("fl"), T.STRING, S, M.string_json("not a range"))
    topics = {t["name"]: t for t in bag_info(tmp_path / "bag")["topics"]}
    assert "contract_error" not in topics[good]
    assert topics[bad]["contract_error"] == "expected sensor_msgs/msg/Image"
    assert topics[T.ultrasonic_topic("fl")]["contract_error"] == "expected sensor_msgs/msg/Range"  # as before


def test_recorded_sensors_per_plugin(with_thermal: Registry) -> None:
    names = ("/ultrasonic/b", "/ultrasonic/a", "/thermal/x/image_raw", "/fisheye/front/image_raw")
    assert with_thermal.recorded_sensors(names) == {"ultrasonic": ("a", "b"), "thermal": ("x",)}
    broken = ModalityPlugin(**{**THERMAL.__dict__, "name": "broken", "health_streams": ("broken",),
                               "recorded_sensors": lambda topics: 1 / 0})
    assert "broken" not in Registry((*BUILTINS, broken), ()).recorded_sensors(names)


def test_builtin_topic_names_keep_their_historic_names_in_topics() -> None:
    from edge.modalities import builtin

    assert T.FISHEYE_CAMERAS == builtin.FISHEYE.default_sensors == ("front", "rear", "left", "right")
    assert T.AUDIO == "/audio/raw" == builtin.AUDIO.topics(())[0].name
    assert T.fisheye_image_topic("left") == "/fisheye/left/image_raw"
    assert T.fisheye_info_topic("left") == "/fisheye/left/camera_info"
    assert (T.FRONT_CAMERA_IMAGE, T.FRONT_CAMERA_INFO) == ("/camera/front/image_raw", "/camera/front/camera_info")
    assert T.camera_image_topic("rear") == "/camera/rear/image_raw"
    assert T.camera_info_topic("rear") == "/camera/rear/camera_info"
    assert T.ultrasonic_topic("fl") == "/ultrasonic/fl"
    from edge.drives.topics import FISHEYE_CAMERAS, ultrasonic_topic  # from-imports too

    assert FISHEYE_CAMERAS == T.FISHEYE_CAMERAS and ultrasonic_topic is builtin.ultrasonic_topic
    with pytest.raises(AttributeError):
        T.THERMAL  # noqa: B018


# ---------------------------------------------------------------- report and summary


def _frame_result(t: int, modalities: tuple[str, ...], timings: dict[str, float]) -> Any:
    plan = Plan(modalities, 0, 1.0, "eager", "", 1)
    return FrameResult(S + t * 100 * MS, {}, plan, Decision(plan, t == 0, "first plan", 0.0),
                       Context(S, {}, {}, -120.0, 0.0, "day"), {"total": sum(timings.values()), **timings}, 100.0,
                       None, 0.1, [], {m: None for m in modalities})


def test_the_report_lists_the_modalities_the_stack_built(with_thermal: Registry, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A plugin installed but not built (a LiDAR on the default rig) is not in the duty, stages or timeline."""
    assert "thermal" in with_thermal.names
    built = list(BUILTINS)  # what edge run passes: runtime.stack.plugins.values()
    rep = R.ReportBuilder(PerceptionConfig(), (-1.0, 3.0, -1.0, 1.0), {"bag": "b"}, built)
    out = rep.start(tmp_path / "rep")
    stub = json.loads((out / "report.json").read_text())
    assert list(stub["summary"]["modality_duty"]) == list(BUILTIN_NAMES)
    rep.add(_frame_result(0, ("fisheye", "audio"), {"fisheye": 3.0, "fusion": 1.0, "audio": 2.0}))
    rep.add(_frame_result(1, ("ultrasonic",), {"ultrasonic": 1.0, "fusion": 1.0}))
    s = rep.summary()
    assert s["modality_duty"] == {"fisheye": 0.5, "ultrasonic": 0.5, "audio": 0.5, "camera": 0.0}
    assert list(s["stages_ms"]) == ["fisheye", "ultrasonic", "fusion", "audio"]
    assert rep.stages == ("context+plan", "fisheye", "ultrasonic", "fusion", "audio", "camera", "attach")
    assert ">thermal<" not in rep._timeline_svg() and ">camera<" in rep._timeline_svg()
    print_summary({**s, "report": str(out)})
    line = next(x for x in capsys.readouterr().out.splitlines() if "modality duty" in x)
    assert line.endswith("modality duty: fisheye 50%, ultrasonic 50%, audio 50%, camera 0%")

    # a run killed outright: `edge report` rebuilds the summary with the run's modalities (the stub's duty)
    recovered, n = R.recover(out)
    doc = json.loads((recovered / "report.json").read_text())
    assert n == 2 and doc["summary"]["modality_duty"] == s["modality_duty"]
    assert list(doc["summary"]["stages_ms"]) == list(s["stages_ms"])

    # without the plugins given (tests, older callers): every installed plugin, as before
    assert "thermal" in R.ReportBuilder(None, None, {}).summary()["modality_duty"]


def test_a_built_plugin_is_in_the_report(with_thermal: Registry) -> None:
    rep = R.ReportBuilder(PerceptionConfig(), (-1.0, 3.0, -1.0, 1.0), {}, [*BUILTINS, THERMAL])
    rep.add(_frame_result(0, ("thermal",), {"thermal": 2.0}))
    s = rep.summary()
    assert s["modality_duty"]["thermal"] == 1.0 and list(s["modality_duty"])[-1] == "thermal"
    assert s["stages_ms"]["thermal"]["p50"] == 2.0 and ">thermal<" in rep._timeline_svg()
