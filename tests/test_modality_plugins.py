"""Modality plugins (issue 11, first milestone): the four built-ins are found through the `edge.modalities` entry
points like any installed package's, the core's lists read the registry and came out as they were before, and a
bad plugin (import failure, malformed declaration, a name or a topic already taken) is named and left out while
the others stay registered.

Fake plugins are modules written to a tmp dir and reached through `importlib.metadata.EntryPoint` objects handed to
`edge.modalities.registry.build`, so nothing is installed and the process's cached registry is untouched.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import pytest

from edge.drives import topics as T
from edge.errors import EdgeError, PluginError
from edge.modalities import GROUP, ModalityPlugin, SyncKind, TokenSpec
from edge.modalities import registry as registry_module
from edge.modalities.registry import build, discover, registry, reload
from edge.sensors.rig import load_rig

ROOT = Path(__file__).resolve().parents[1]
BUILTIN_NAMES = ("fisheye", "ultrasonic", "audio", "camera")
IMAGE, JPEG, INFO = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/CameraInfo"
RANGE = "sensor_msgs/msg/Range"
ULTRASONIC = ("front_left_side", "front_left_corner", "front_left_center", "front_right_center", "front_right_corner",
              "front_right_side", "rear_left_side", "rear_left_corner", "rear_left_center", "rear_right_center",
              "rear_right_corner", "rear_right_side")  # calibration/default_rig.yaml


def camera(base: str) -> list[tuple[str, tuple[str, ...], bool]]:
    return [(f"{base}/image_raw", (IMAGE,), True), (f"{base}/image_raw/compressed", (JPEG,), True),
            (f"{base}/camera_info", (INFO,), True)]


# Each built-in's topics on the default rig, as the contract was before the plugins (DESIGN.md's topic names).
DEFAULT_RIG_TOPICS = {
    "fisheye": [t for c in ("front", "rear", "left", "right") for t in camera(f"/fisheye/{c}")],
    "ultrasonic": [(f"/ultrasonic/{n}", (RANGE,), True) for n in ULTRASONIC],
    "audio": [("/audio/raw", (IMAGE,), True)],
    "camera": camera("/camera/front"),
}
CORE_TOPICS = [("/odom", ("nav_msgs/msg/Odometry",), True),
               ("/ground_truth/bev_occupancy", ("nav_msgs/msg/OccupancyGrid",), False),
               ("/ground_truth/objects", ("visualization_msgs/msg/MarkerArray",), False),
               ("/ground_truth/audio_events", ("visualization_msgs/msg/MarkerArray",), False),
               ("/ground_truth/qa", ("std_msgs/msg/String",), False),
               ("/ground_truth/conditions", ("std_msgs/msg/String",), False)]


def as_set(specs: object) -> set[tuple[str, tuple[str, ...], bool]]:
    return {(s.name, s.types, s.sensor) for s in specs}  # type: ignore[attr-defined]


def builtin_points() -> list[EntryPoint]:
    """The core's own entry points: other installed packages (make setup installs plugins/lidar) add theirs."""
    return [ep for ep in entry_points(group=GROUP) if ep.value.startswith("edge.modalities.builtin:")]


def other_names() -> tuple[str, ...]:
    """The installed plugins besides the built-ins, in registry order (by name, after the built-ins)."""
    return tuple(sorted({ep.name for ep in entry_points(group=GROUP)} - set(BUILTIN_NAMES)))


def test_builtins_are_discovered_through_entry_points_in_order() -> None:
    reg = discover(strict=True)
    assert reg.names == (*BUILTIN_NAMES, *other_names()) and not reg.problems  # the built-ins first, then by name
    assert reg.sources[:4] == tuple(f"{n} = edge.modalities.builtin:{n.upper()}" for n in BUILTIN_NAMES)
    assert {ep.name for ep in entry_points(group=GROUP)} >= set(BUILTIN_NAMES)  # installed metadata, not a list
    assert reg.bev_names[:2] == ("fisheye", "ultrasonic")
    assert [p.sync for p in reg][:4] == [SyncKind.NEAREST, SyncKind.LATEST, SyncKind.WINDOW, SyncKind.NEAREST]
    assert build(builtin_points(), strict=True).names == BUILTIN_NAMES
    assert registry() is registry() and reload().names == reg.names  # cached, reloadable


def test_builtin_topics_for_the_default_rig() -> None:
    rig = load_rig()
    reg = registry()
    for plugin in reg:  # an installed plugin outside the core has no sensor on the core's default rig
        assert [(s.name, s.types, s.sensor) for s in plugin.topics_for(rig)] == DEFAULT_RIG_TOPICS.get(plugin.name, [])
    assert reg.rig_sensors(rig)["ultrasonic"] == ULTRASONIC
    assert reg["ultrasonic"].topics_for(None) == ()  # rig unknown: no per-sensor topics, as known_topics(()) was


def test_known_topics_unchanged() -> None:
    rig = load_rig()
    expected = {t for ts in DEFAULT_RIG_TOPICS.values() for t in ts} | set(CORE_TOPICS)
    assert len(expected) == 34
    assert as_set(T.known_topics(registry().rig_sensors(rig)).values()) == expected
    # without a rig, the plain-sequence calls give the other installed plugins their default sensors' topics
    others = {t for p in registry() if p.name not in BUILTIN_NAMES for t in as_set(p.topics_for(None))}
    expected |= others
    assert as_set(T.known_topics(ULTRASONIC).values()) == expected  # the historic call: a rig's ultrasonic names
    no_rig = expected - set(DEFAULT_RIG_TOPICS["ultrasonic"])
    assert as_set(T.known_topics(()).values()) == no_rig and as_set(T.known_topics().values()) == no_rig


def test_core_lists_read_from_the_registry_are_as_before() -> None:
    from edge.encoders.config import PerceptionConfig
    from edge.encoders.base import D_ENC
    from edge.encoders.scene_tokens import AUDIO_TOKENS, BEV_TOKENS
    from edge.encoders.stack import MODULES, weights_file
    from edge.runtime.context import ContextEstimator
    from edge.runtime.report import stage_order
    from edge.runtime.scheduler import MODALITIES
    from edge.token_layouts import TOKEN_LAYOUTS

    names, bev = registry().names, registry().bev_names
    STAGES = stage_order(registry())  # every installed plugin's stages (a report lists those of its stack)
    assert MODALITIES == names and MODALITIES[:4] == BUILTIN_NAMES and MODULES == (*names, "fusion")
    assert STAGES == ("context+plan", *bev, "fusion", *(n for n in names if n not in bev), "attach")
    core = ("context+plan", "fusion", "attach", *BUILTIN_NAMES)  # the built-ins' stages in the order they had
    assert tuple(s for s in STAGES if s in core) == \
        ("context+plan", "fisheye", "ultrasonic", "fusion", "audio", "camera", "attach")
    assert set(ContextEstimator().trackers) == {"fisheye", "camera", "ultrasonic", "audio"} | {
        s for p in registry() if p.name not in BUILTIN_NAMES for s in p.health_streams}
    counts = {"fisheye": BEV_TOKENS, "ultrasonic": BEV_TOKENS, "audio": AUDIO_TOKENS,
              "camera": PerceptionConfig().tokens["camera"]}
    for p in (p for p in registry() if p.name in BUILTIN_NAMES):  # declarations agree with encoders and weights
        assert p.tokens == TokenSpec(counts[p.name], D_ENC, TOKEN_LAYOUTS[p.name])
        assert weights_file(p.name) == p.weights and (ROOT / "models" / "perception" / p.weights).is_file()
    assert weights_file("fusion") == "fusion.safetensors"


def test_builtin_encoders_are_built_from_their_plugins() -> None:
    """Each built-in names its encoder factory as a string; the stack builds one encoder per plugin from it."""
    from edge.encoders import AudioEncoder, CameraEncoder, FisheyeEncoder, PerceptionConfig, UltrasonicEncoder
    from edge.encoders.stack import build_encoder

    kinds = {"fisheye": FisheyeEncoder, "ultrasonic": UltrasonicEncoder, "audio": AudioEncoder, "camera": CameraEncoder}
    cfg, rig = PerceptionConfig(), load_rig()
    for p in (p for p in registry() if p.name in BUILTIN_NAMES):
        assert p.encoder == f"edge.encoders.{p.name}:build"
        encoder = build_encoder(p, cfg, rig)
        assert type(encoder) is kinds[p.name] and (encoder.bev_channels > 0) == p.bev
        assert encoder.n_tokens == p.tokens.count


FAKE_PLUGINS = {
    "fake_lidar": '''
        import dataclasses
        from edge.drives.topics import TopicSpec
        from edge.modalities import ModalityPlugin, SyncKind, TokenSpec

        def points(sensors):
            return tuple(TopicSpec(f"/lidar/{n}/points", ("sensor_msgs/msg/PointCloud2",), True) for n in sensors)

        LIDAR = ModalityPlugin(name="lidar", sensors=lambda rig: ("roof",), default_sensors=("roof",), topics=points,
                               sync=SyncKind.NEAREST, bev=True, tokens=TokenSpec(8, 128, "pillars-v1"),
                               weights="lidar.safetensors", health_streams=("lidar",), encoder="fake_lidar_encoder:build",
                               decoder="fake_lidar_encoder:POINTS")
        NOT_A_PLUGIN = {"name": "radar"}
        SECOND_CAMERA = dataclasses.replace(LIDAR, name="camera", topics=lambda s: ())
        FRONT_THIEF = dataclasses.replace(
            LIDAR, name="rearcam", topics=lambda s: (TopicSpec("/camera/front/image_raw", ("sensor_msgs/msg/Image",),
                                                               True),))
        BROKEN_TOPICS = dataclasses.replace(LIDAR, name="sonar", topics=lambda s: 1 / 0)
    ''',
    "fake_missing_lib": '''
        raise ImportError("libpcl_common.so.1.14: cannot open shared object file")
    ''',
    "fake_malformed": '''
        from edge.modalities import ModalityPlugin, SyncKind, TokenSpec

        BAD = ModalityPlugin(name="Thermal Cam", sensors=lambda rig: (), default_sensors=(), topics=lambda s: (),
                             sync="nearest", bev=False, tokens=TokenSpec(0, 128, ""), weights="thermal.pt",
                             health_streams=(), encoder="thermal.encoder", decoder="thermal:decode")
    ''',
}
# entry point name -> (value, what the problem must say); "lidar" is the valid fifth plugin.
BAD = {
    "pcl": ("fake_missing_lib:PLUGIN", "failed to import: ImportError: libpcl_common"),
    "thermal": ("fake_malformed:BAD", "malformed declaration: name 'Thermal Cam'"),
    "radar": ("fake_lidar:NOT_A_PLUGIN", "is a dict, not an edge.modalities.ModalityPlugin"),
    "flash": ("fake_lidar:LIDAR", "declares modality 'lidar' under the entry point name 'flash'"),
    "sonar": ("fake_lidar:BROKEN_TOPICS", "raised ZeroDivisionError"),
    "camera": ("fake_lidar:SECOND_CAMERA", "claims the modality name 'camera' of camera = edge.modalities.builtin"),
    "rearcam": ("fake_lidar:FRONT_THIEF", "claims the topic '/camera/front/image_raw' of camera = "),
}


@pytest.fixture()
def fake_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[EntryPoint]]:
    """The built-ins' entry points plus the fake ones, their modules importable from tmp_path (without the other
    installed packages': the real LiDAR plugin would hold the fake one's name)."""
    for name, text in FAKE_PLUGINS.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    points = [*builtin_points(), EntryPoint("lidar", "fake_lidar:LIDAR", GROUP)]
    points += [EntryPoint(name, value, GROUP) for name, (value, _) in BAD.items()]
    yield points
    for name in FAKE_PLUGINS:
        sys.modules.pop(name, None)


def test_bad_plugins_are_named_and_left_out(fake_points: list[EntryPoint], caplog: pytest.LogCaptureFixture) -> None:
    reg = build(fake_points)
    assert reg.names == (*BUILTIN_NAMES, "lidar")  # a fifth valid plugin after the built-ins
    assert reg["camera"].weights == "camera.safetensors"  # the built-in kept its name
    assert len(reg.problems) == len(BAD)
    for name, (value, says) in BAD.items():
        found = [p for p in reg.problems if p.plugin == f"'{name}' ({name} = {value})"]
        assert len(found) == 1, (name, [str(p) for p in reg.problems])
        assert says in str(found[0]) and f"{name} = {value}" in str(found[0])
        assert any(f"{name} = {value}" in r.getMessage() for r in caplog.records)  # logged, not only kept
    with pytest.raises(PluginError, match=r"'pcl' \(pcl = fake_missing_lib:PLUGIN\): failed to import"):
        build(fake_points, strict=True)
    assert issubclass(PluginError, EdgeError)


def test_a_fifth_plugin_joins_known_topics(fake_points: list[EntryPoint], monkeypatch: pytest.MonkeyPatch) -> None:
    reg = build(p for p in fake_points if (p.name, p.value) not in {(n, v) for n, (v, _) in BAD.items()})
    assert not reg.problems and reg.names == (*BUILTIN_NAMES, "lidar")
    assert reg.bev_names == ("fisheye", "ultrasonic", "lidar")
    monkeypatch.setattr(registry_module, "registry", lambda: reg)
    topics = T.known_topics(ULTRASONIC)
    assert topics["/lidar/roof/points"] == T.TopicSpec("/lidar/roof/points", ("sensor_msgs/msg/PointCloud2",), True)
    assert len(topics) == 35 and T.known_topics({"lidar": ("front", "rear")}).keys() >= {
        "/lidar/front/points", "/lidar/rear/points"}


def test_declaration_is_checked_and_no_plugins_is_a_problem() -> None:
    with pytest.raises(PluginError, match="sync 'sweep' is not one of nearest, window, latest"):
        ModalityPlugin(name="radar", sensors=lambda rig: (), default_sensors=(), topics=lambda s: (),
                       sync="sweep", bev=False, tokens=TokenSpec(4, 128, "radar-v1"),  # type: ignore[arg-type]
                       weights="radar.safetensors", health_streams=("radar",), encoder="edge_radar:build",
                       decoder="edge_radar:DECODER")
    with pytest.raises(PluginError, match="encoder 'edge_radar.build' must be 'module:callable'"):
        ModalityPlugin(name="radar", sensors=lambda rig: (), default_sensors=(), topics=lambda s: (),
                       sync=SyncKind.NEAREST, bev=False, tokens=TokenSpec(4, 128, "radar-v1"),
                       weights="radar.safetensors", health_streams=("radar",), encoder="edge_radar.build",
                       decoder="edge_radar:DECODER")
    with pytest.raises(PluginError, match="decoder 'edge_radar.decode' must be 'module:attribute'"):
        ModalityPlugin(name="radar", sensors=lambda rig: (), default_sensors=(), topics=lambda s: (),
                       sync=SyncKind.NEAREST, bev=False, tokens=TokenSpec(4, 128, "radar-v1"),
                       weights="radar.safetensors", health_streams=("radar",), encoder="edge_radar:build",
                       decoder="edge_radar.decode")
    empty = build([])
    assert empty.names == () and "no plugin installed" in str(empty.problems[0])


def test_registry_stays_light() -> None:
    """Bag I/O asks it for the topic contract: discovering must not pull in torch, the encoders, runtime or LLM."""
    code = ("import sys; from edge.drives.topics import known_topics; known_topics(); "
            "print(sorted({m.split('.')[0] if not m.startswith('edge.') else '.'.join(m.split('.')[:2]) "
            "for m in sys.modules if m.startswith(('torch', 'edge.encoders', 'edge.runtime', 'edge.llm', "
            "'edge.perception'))}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out

