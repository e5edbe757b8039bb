"""The simulator hook (issue 11): a modality plugin adds its sensor to generated drives through
`ModalityPlugin.simulator`, without changing a byte of what the built-ins generate."""

from __future__ import annotations

import dataclasses
import math
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import Field
from rosbags.rosbag2 import Reader

from edge.config import StrictModel
from edge.drives import generate as generate_module
from edge.drives import messages as M
from edge.drives import topics as T
from edge.drives.generate import generate_drive, plugin_simulations, simulated_plugins
from edge.drives.scenarios import get_scenario
from edge.drives.sim_hooks import START_NS, SimMessage, SimSetup, to_ns
from edge.drives.world import build_world
from edge.errors import EdgeError, PluginError
from edge.modalities import ModalityPlugin, SyncKind, TokenSpec
from edge.modalities.builtin import BUILTINS
from edge.modalities.registry import GROUP, Registry, build, registry
from edge.sensors.rig import DEFAULT_RIG, PoseSpec, Rig, load_rig


def test_simulator_is_declared_as_a_factory_reference() -> None:
    audio = registry()["audio"]
    assert all(p.simulator is None for p in BUILTINS)  # the built-ins simulate in the generator itself
    assert dataclasses.replace(audio, simulator="edge_lidar.sim:build").simulator == "edge_lidar.sim:build"
    for bad in ("edge_lidar.sim.build", "edge_lidar.sim:", 3):
        with pytest.raises(PluginError, match=r"simulator .* must be 'module:callable' \(its simulator factory\)"):
            dataclasses.replace(audio, simulator=bad)


def test_setup_gives_each_stream_its_own_reproducible_rng() -> None:
    a = SimSetup(world=None, rig=None, seed=3, sensors=("roof",))  # type: ignore[arg-type]
    b = dataclasses.replace(a, seed=4)
    draw = lambda s, name: s.rng(name).integers(0, 2**62, 4).tolist()  # noqa: E731
    assert draw(a, "lidar") == draw(a, "lidar") != draw(a, "lidar/roof")
    assert draw(a, "lidar") != draw(b, "lidar")
    assert to_ns(0.0) == START_NS and to_ns(0.1) == START_NS + 100_000_000


# ------------------------------------------------------------------ a plugin that simulates its sensor

PC2, STRING = "sensor_msgs/msg/PointCloud2", "std_msgs/msg/String"
CLOSED: list[str] = []  # simulators closed, by sensor set
WINDOWS: list[tuple[float, float]] = []  # the windows asked for


class ScannerSpec(StrictModel):
    """The fake plugin's own rig section: its sensors' poses and one rate."""

    sensors: dict[str, PoseSpec]
    rate_hz: float = Field(gt=0, le=50)


def points_topic(sensor: str) -> str:
    return f"/scanner/{sensor}/points"


def cloud(stamp: int, frame_id: str, xyz: np.ndarray) -> object:
    types = M.typestore().types
    field = types["sensor_msgs/msg/PointField"]
    fields = [field(name=a, offset=4 * i, datatype=field.FLOAT32, count=1) for i, a in enumerate("xyz")]
    data = xyz.astype(np.float32).view(np.uint8).reshape(-1)
    return types[PC2](header=M.header(stamp, frame_id), height=1, width=len(xyz), fields=fields, is_bigendian=False,
                      point_step=12, row_step=12 * len(xyz), data=data, is_dense=True)


class ScannerSim:
    """One sweep per sensor at the section's rate: the actors' positions in base_link with noise from its own rng,
    and its own ground truth (how many actors it had in range) under /ground_truth/scanner/."""

    def __init__(self, setup: SimSetup) -> None:
        self.setup, self.spec = setup, setup.rig.plugin_spec("scanner", ScannerSpec)
        self.rng = setup.rng("scanner")

    def messages(self, t0: float, t1: float) -> list[SimMessage]:
        WINDOWS.append((t0, t1))
        period = 1.0 / self.spec.rate_hz
        out: list[SimMessage] = []
        for c in range(math.ceil(t0 / period - 1e-9), math.ceil(t1 / period - 1e-9)):
            t = c * period
            x, y, yaw = self.setup.world.ego.pose(t)
            xy = np.array([a.pose(t)[:2] for a in self.setup.world.actors]).reshape(-1, 2) - (x, y)
            xyz = np.column_stack([xy, np.zeros(len(xy))]) + self.rng.normal(0, 0.02, (len(xy), 3))
            for n, sensor in enumerate(self.setup.sensors):
                stamp = to_ns(t) + 1_000_000 * n
                out.append((stamp, points_topic(sensor), PC2, cloud(stamp, f"scanner_{sensor}", xyz)))
            stamp = to_ns(t)
            out.append((stamp, "/ground_truth/scanner/actors", STRING, M.string_json({"actors": len(xy)}, stamp)))
        return out

    def close(self) -> None:
        CLOSED.append(",".join(self.setup.sensors))


def build_scanner(setup: SimSetup) -> ScannerSim:
    return ScannerSim(setup)


def raises_at_half_a_second(setup: SimSetup) -> ScannerSim:
    sim = ScannerSim(setup)
    plain = sim.messages
    sim.messages = lambda t0, t1: plain(t0, t1) if t0 < 0.45 else 1 / 0  # type: ignore[method-assign]
    return sim


def writes_over_odometry(setup: SimSetup) -> ScannerSim:
    sim = ScannerSim(setup)
    sim.messages = lambda t0, t1: [(to_ns(t0), T.ODOM, T.ODOMETRY, None)]  # type: ignore[method-assign]
    return sim


def stamps_too_late(setup: SimSetup) -> ScannerSim:
    sim = ScannerSim(setup)
    plain = sim.messages
    sim.messages = lambda t0, t1: [(m[0] + 150_000_000, *m[1:]) for m in plain(t0, t1)]  # type: ignore[method-assign]
    return sim


def scanner_sensors(rig: Rig) -> tuple[str, ...]:
    return tuple(rig.plugin_section("scanner").get("sensors", {}))  # type: ignore[union-attr]


SCANNER = ModalityPlugin(
    name="scanner", sensors=scanner_sensors, default_sensors=("roof",),
    topics=lambda sensors: tuple(T.TopicSpec(points_topic(n), (PC2,), True) for n in sensors),
    sync=SyncKind.NEAREST, bev=True, tokens=TokenSpec(8, 128, "pillars-v1"), weights="scanner.safetensors",
    health_streams=("scanner",), encoder="edge_scanner.encoder:build", decoder="edge_scanner.decode:POINTS",
    simulator=f"{__name__}:build_scanner")
SECTION = {"scanner": {"sensors": {"roof": {"xyz": [1.2, 0.0, 1.9], "rpy_deg": [0.0, 0.0, 0.0]},
                                   "rear": {"xyz": [-0.8, 0.0, 1.1], "rpy_deg": [0.0, 0.0, 180.0]}},
                       "rate_hz": 10.0}}


@pytest.fixture()
def installed(monkeypatch: pytest.MonkeyPatch) -> Registry:
    """The built-ins plus the scanner, through entry points as an installed package's, as the generator's registry
    (other installed plugins are left out: this test is about the built-ins' bytes)."""
    builtin = {p.name for p in BUILTINS}
    reg = build([*(ep for ep in entry_points(group=GROUP) if ep.name in builtin),
                 EntryPoint("scanner", f"{__name__}:SCANNER", GROUP)], strict=True)
    monkeypatch.setattr(generate_module, "registry", lambda: reg)
    return reg


@pytest.fixture(scope="module")
def rig_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default rig with the scanner's section: two sensors at 10 Hz."""
    data = yaml.safe_load(DEFAULT_RIG.read_text())
    path = tmp_path_factory.mktemp("rig") / "rig.yaml"
    path.write_text(yaml.safe_dump({**data, "plugins": SECTION}))
    return path


def read(bag: Path) -> tuple[list[tuple[str, str, int, bytes]], dict[str, str]]:
    """Every message as (topic, type, bag stamp, CDR bytes) in bag order, and the bag's custom metadata."""
    with Reader(bag) as r:
        msgs = [(c.topic, c.msgtype, t, bytes(d)) for c, t, d in r.messages()]
    info = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    return msgs, info.get("custom_data") or {}


def test_a_plugin_simulator_adds_its_sensor_and_leaves_the_builtins_bytes(installed: Registry, rig_path: Path,
                                                                          tmp_path: Path) -> None:
    CLOSED.clear()
    WINDOWS.clear()
    with_it = generate_drive(tmp_path / "with", 3, 0.5, "siren", rig_path, progress=False)
    # consecutive windows tile [0, 0.5) exactly, in floats too: a sweep at t < t1 of one window is never also >= t0
    # of the next, nor lost between them (0.5 + 0.1 != 6 * 0.1)
    assert len(WINDOWS) == 5 and WINDOWS[0][0] == 0.0 and all(a[1] == b[0] for a, b in zip(WINDOWS, WINDOWS[1:]))
    without = generate_drive(tmp_path / "without", 3, 0.5, "siren", rig_path, progress=False, without=["scanner"])
    assert CLOSED == ["rear,roof"]  # built once for the drive, closed once; not built when left out
    (got, meta), (plain, plain_meta) = read(with_it.path), read(without.path)
    ours = [m for m in got if m[0].startswith(("/scanner/", "/ground_truth/scanner/"))]
    assert [m for m in got if m not in ours] == plain  # the built-ins: same messages, stamps, bytes and order
    assert meta.pop("mpnp_edge.simulators") == "scanner" and meta == plain_meta
    assert with_it.messages == without.messages + len(ours)
    by_topic = {t: [m for m in ours if m[0] == t] for t in {m[0] for m in ours}}
    assert sorted(by_topic) == ["/ground_truth/scanner/actors", "/scanner/rear/points", "/scanner/roof/points"]
    assert all(len(v) == 5 for v in by_topic.values())  # 10 Hz over 0.5 s
    roof = [M.deserialize(m[3], PC2) for m in by_topic["/scanner/roof/points"]]
    assert [M.header_stamp_ns(c) for c in roof] == [m[2] for m in by_topic["/scanner/roof/points"]]
    assert roof[0].header.frame_id == "scanner_roof" and roof[0].width > 0
    stamps = [m[2] for m in got]
    assert stamps == sorted(stamps)  # interleaved by stamp with the built-ins
    again = generate_drive(tmp_path / "again", 3, 0.5, "siren", rig_path, progress=False)
    assert read(again.path)[0] == got  # its own rng, seeded from the drive's: reproducible


def test_a_plugin_without_sensors_on_the_rig_is_not_simulated(installed: Registry) -> None:
    rig = load_rig()  # no scanner section: no sensors
    world = build_world(get_scenario("siren"), 3, 0.5, rig.footprint())
    assert plugin_simulations(world, rig, 3, installed) == []
    with pytest.raises(EdgeError, match=r"--without scanner: no plugin simulates such sensors on this rig \(those "
                                        r"that do: none; the built-ins"):
        simulated_plugins(installed, rig, ["scanner"])


@pytest.mark.parametrize(("simulator", "words"), [
    ("edge_scanner_not_installed.sim:build", "failed to import: ModuleNotFoundError"),
    (f"{__name__}:raises_at_half_a_second", "raised ZeroDivisionError: division by zero at t = 0.500 s"),
    (f"{__name__}:writes_over_odometry", "wrote '/odom', neither one of its topics on this rig (/scanner/rear/points, "
                                         "/scanner/roof/points) nor under /ground_truth/scanner/"),
    (f"{__name__}:stamps_too_late", "stamped '/scanner/rear/points' 1700000000150000000 ns, outside the frame "
                                    "window [1700000000000000000, 1700000000100000000] it was asked for"),
])
def test_a_failing_simulator_stops_generation_naming_the_plugin(installed: Registry, rig_path: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch, simulator: str,
                                                                words: str) -> None:
    broken = dataclasses.replace(SCANNER, simulator=simulator)
    monkeypatch.setattr(generate_module, "registry", lambda: Registry((*installed.plugins[:-1], broken), ()))
    with pytest.raises(PluginError) as info:
        generate_drive(tmp_path / "bag", 3, 0.6, "siren", rig_path, progress=False)
    message = str(info.value)
    assert message.startswith(f"modality plugin 'scanner' (simulator {simulator}): ") and words in message
    assert message.endswith("the drive can be generated without its sensors: edge drive generate ... --without "
                            "scanner")
    if "import" in words:
        assert not (tmp_path / "bag").exists()  # refused before the bag was created


def test_cli_without_a_plugin(installed: Registry, rig_path: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    from edge.cli import main

    assert main(["drive", "generate", str(tmp_path / "x"), "--duration", "0.2", "--scenario", "siren", "--rig",
                 str(rig_path), "--without", "fisheye", "--quiet"]) == 2
    assert "--without fisheye: no plugin simulates such sensors on this rig (those that do: scanner" in \
        capsys.readouterr().err
