"""The drive generator: reproducible bags that standard readers open, and ground truth that matches the sensors."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from rosbags.highlevel import AnyReader

from edge.drives import topics as T
from edge.drives.audio_sim import AudioSimulator
from edge.drives.bag import Bag
from edge.drives.generate import DriveGenerator, ego_parts, generate_drive
from edge.drives.groundtruth import GT_GRID, UNKNOWN, VEHICLE_VALUE, BevRasterizer, actor_states
from edge.drives.qa import TEMPLATES, make_qa
from edge.drives.qa_stats import balance, world_answers
from edge.drives.render import CameraRenderer, GroundTexture, Lighting, SceneFaces
from edge.drives.scenarios import SCENARIOS, Scenario
from edge.drives.ultrasonic_sim import Footprints, UltrasonicSimulator
from edge.drives.world import VEHICLE, Actor, EgoTrajectory, Part, World
from edge.errors import EdgeError
from edge.sensors.rig import load_rig

RIG = load_rig()


def static_world(actors: list[Actor], duration: float = 2.0, audio_events=()) -> World:
    """A still ego at the origin among the given actors, on plain ground."""
    times = np.linspace(0.0, duration, 11)
    zeros = np.zeros_like(times)
    ego = EgoTrajectory(times, zeros.copy(), zeros.copy(), zeros.copy(), zeros.copy())
    scenario = Scenario("test", "parking", "test world")
    return World(scenario, 0, duration, actors, ego, [], (90, 90, 90), (-50.0, 50.0), list(audio_events))


def box_actor(actor_id: int, x: float, y: float, size=(1.0, 1.0, 1.5), color=(20, 200, 240), cls: str = VEHICLE,
              kind: str = "car") -> Actor:
    return Actor(actor_id, kind, cls, [Part(0.0, 0.0, 0.0, *size, color)], np.array([0.0]), np.array([[x, y, 0.0]]))


@pytest.fixture(scope="module")
def scenario_bags(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("drives")
    return {name: generate_drive(root / name, seed=5, duration=1.0, scenario=name, progress=False).path
            for name in SCENARIOS}


def expected_types() -> dict[str, str]:
    expected = {T.fisheye_image_topic(c) + T.COMPRESSED_SUFFIX: T.COMPRESSED_IMAGE for c in T.FISHEYE_CAMERAS}
    expected.update({T.fisheye_info_topic(c): T.CAMERA_INFO for c in T.FISHEYE_CAMERAS})
    expected.update({T.FRONT_CAMERA_IMAGE + T.COMPRESSED_SUFFIX: T.COMPRESSED_IMAGE, T.FRONT_CAMERA_INFO: T.CAMERA_INFO,
                     T.AUDIO: T.IMAGE, T.ODOM: T.ODOMETRY, T.GT_BEV: T.OCCUPANCY_GRID, T.GT_OBJECTS: T.MARKER_ARRAY,
                     T.GT_AUDIO_EVENTS: T.MARKER_ARRAY, T.GT_QA: T.STRING, T.GT_CONDITIONS: T.STRING})
    expected.update({T.ultrasonic_topic(s.name): T.RANGE for s in RIG.ultrasonic})
    return expected


def test_every_scenario_opens_in_anyreader_with_the_contract(scenario_bags: dict[str, Path]) -> None:
    expected = expected_types()
    for name, path in scenario_bags.items():
        with AnyReader([path]) as reader:
            types = {c.topic: c.msgtype for c in reader.connections}
            assert types == expected, name
            counts = {c.topic: c.msgcount for c in reader.connections}
            assert counts[T.fisheye_image_topic("front") + T.COMPRESSED_SUFFIX] == 10
            info = next(reader.messages([c for c in reader.connections if c.topic == T.fisheye_info_topic("left")]))
            msg = reader.deserialize(info[2], info[0].msgtype)
            assert msg.distortion_model == "equidistant" and len(msg.d) == 4


def test_every_scenario_decodes_with_the_mcap_reader(scenario_bags: dict[str, Path]) -> None:
    for name, path in scenario_bags.items():
        mcap_file = next(path.glob("*.mcap"))
        with open(mcap_file, "rb") as f:
            reader = make_reader(f, decoder_factories=[DecoderFactory()])
            seen: dict[str, str] = {}
            for schema, channel, _, decoded in reader.iter_decoded_messages():
                seen[channel.topic] = schema.name
                if channel.topic == T.ultrasonic_topic("front_left_center"):
                    assert decoded.radiation_type == 0 and decoded.max_range == pytest.approx(5.5)
        assert seen == expected_types(), name


def _digest(path: Path) -> list[tuple[str, int, str]]:
    return [(m.topic, m.stamp_ns, hashlib.sha1(bytes(m.msg)).hexdigest()) for m in Bag(path).messages(raw=True)]


def test_same_seed_same_drive(tmp_path: Path) -> None:
    a = generate_drive(tmp_path / "a", seed=11, duration=0.6, scenario="siren", progress=False)
    b = generate_drive(tmp_path / "b", seed=11, duration=0.6, scenario="siren", progress=False)
    c = generate_drive(tmp_path / "c", seed=12, duration=0.6, scenario="siren", progress=False)
    assert _digest(a.path) == _digest(b.path)
    assert _digest(a.path) != _digest(c.path)


def test_obstacle_points_land_where_opencv_projects_them() -> None:
    """Render a box ahead of the front fisheye: its face centre is drawn at OpenCV's projection of that point."""
    box = box_actor(0, 6.0, 0.4, size=(0.8, 1.2, 1.6), color=(20, 200, 240))
    world = static_world([box])
    cam = RIG.fisheye["front"]
    renderer = CameraRenderer(cam, ego_parts(RIG))
    light = Lighting(1.0, np.array([0.0, 0.0, 1.0]), False)  # sun overhead: vertical faces get ambient light only
    faces = SceneFaces(world.actors).at(0.0, (0.0, 0.0, 0.0))
    img = renderer.render(GroundTexture(world).tile_for(0.0), (0.0, 0.0, 0.0), faces, light, np.random.default_rng(0))
    rear_face_points = np.array([[5.6, 0.4 + dy, z] for dy in (-0.4, 0.0, 0.4) for z in (0.4, 0.8, 1.2)])
    pts_cam = cam.base_to_cam(rear_face_points)
    ref, _ = cv2.fisheye.projectPoints(pts_cam.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), cam.K, cam.D)
    expected = np.array([20, 200, 240]) * light.ambient
    for u, v in ref.reshape(-1, 2):
        pixel = img[int(round(v)), int(round(u))].astype(float)
        assert np.abs(pixel - expected).max() < 12, (u, v, pixel, expected)
    # Just beside the box (0.3 m to its side) the ground shows, not the box.
    beside = cam.base_to_cam(np.array([[5.6, 1.3, 0.0]]))
    (u, v), = cv2.fisheye.projectPoints(beside.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), cam.K, cam.D)[0].reshape(-1, 2)
    assert np.abs(img[int(round(v)), int(round(u))].astype(float) - expected).max() > 40


def test_ultrasonic_measures_the_box_in_its_beam() -> None:
    sensor = next(s for s in RIG.ultrasonic if s.name == "front_left_center")
    distance = 1.7
    box = box_actor(0, sensor.position[0] + distance + 0.5, sensor.position[1], size=(1.0, 1.0, 1.0))
    world = static_world([box])
    sim = UltrasonicSimulator(RIG.ultrasonic, np.random.default_rng(3))
    fp = Footprints.of(world.actors, 0.0, (0.0, 0.0, 0.0), 12.0)
    # The beam is sampled by 15 rays, so the nearest ray may be off the normal by up to half a ray step (~2 deg).
    assert sim.true_range(sensor, fp) == pytest.approx(distance, rel=1e-3)
    readings = [sim.read(fp)[RIG.ultrasonic.index(sensor)] for _ in range(200)]
    valid = np.array([r for r in readings if r is not None])
    assert len(valid) > 180  # dropouts are rare
    assert abs(np.median(valid) - distance) < 0.03
    rear = next(s for s in RIG.ultrasonic if s.name == "rear_left_center")
    assert sim.true_range(rear, fp) == math.inf  # nothing behind: no echo (REP-117 +inf)


def test_bev_ground_truth_marks_object_cells_and_hides_what_is_behind() -> None:
    car = box_actor(0, 7.0, 0.0, size=(1.0, 2.0, 1.5))
    world = static_world([car])
    grid = GT_GRID
    raster = BevRasterizer(grid, RIG.footprint(), [c.position[:2] for c in RIG.fisheye.values()])
    g = raster.rasterize(actor_states(world.actors, 0.0, (0.0, 0.0, 0.0), 30.0))

    def cell(x: float, y: float) -> int:
        return int(g[int((y - grid.y_min) / grid.resolution), int((x - grid.x_min) / grid.resolution)])

    assert cell(7.0, 0.0) == VEHICLE_VALUE
    assert cell(5.5, 0.0) == 0  # free space between bumper and car
    assert cell(9.5, 0.0) == UNKNOWN  # hidden behind the car
    assert cell(7.0, 3.0) == 0  # free beside it
    assert cell(1.0, 0.0) == UNKNOWN  # the ego's own footprint


def test_qa_answers_follow_the_scene() -> None:
    x0, x1, _, y1 = RIG.footprint()
    ahead = box_actor(0, x1 + 3.0 + 0.5, 0.0)  # 1 m box: its near face 3.0 m from the bumper
    behind = box_actor(1, x0 - 1.0 - 0.5, 0.2)
    left = box_actor(2, 1.0, y1 + 0.8 + 0.5)
    states = actor_states([ahead, behind, left], 0.0, (0.0, 0.0, 0.0), 30.0)
    pairs = {p.kind: p.answer for p in make_qa(states, RIG.footprint(), [("siren", -30.0, 1.0)])}
    assert pairs["distance_front"] == "3.0 meters"
    assert pairs["distance_left"] == "1.0 meters"
    assert pairs["distance_right"] == "none"
    assert pairs["clear_front"] == "no" and pairs["clear_right"] == "yes"
    assert pairs["reverse_safe"] == "no"
    assert pairs["siren"] == "yes" and pairs["siren_direction"] == "rear"
    assert pairs["horn"] == "no" and "horn_direction" not in pairs  # asked only while a horn sounds
    for p in make_qa(states, RIG.footprint(), []):
        assert p.answer in TEMPLATES[p.kind].answers


def test_yard_spreads_every_templates_answers() -> None:
    """The balance rule of the QA benchmark over a few yard worlds (no rendering): the most frequent answer of a
    template holds at most 1.5 / answers (60 % for yes/no), with a margin for this small sample."""
    pairs = []
    for i, sc in enumerate(("yard-day", "yard-night", "yard-dusk", "yard-glare", "yard-day-to-night")):
        for seed in (1, 2):
            pairs += world_answers(sc, 10 * seed + i, 30.0, RIG)
    rows = {r.kind: r for r in balance(pairs)}
    assert set(rows) == set(TEMPLATES)
    for r in rows.values():
        assert r.top_share <= r.limit + 0.1, (r.kind, r.top_answer, r.top_share)
        assert len(r.answers) >= 0.75 * len(TEMPLATES[r.kind].answers), (r.kind, r.answers)


def test_siren_reaches_the_nearer_microphone_first() -> None:
    """A siren on the left arrives earlier at the left microphones: the inter-channel lag carries the direction."""
    siren = box_actor(0, 1.6, 25.0)
    world = static_world([siren], duration=2.0, audio_events=[("siren", 0.0, 2.0, 0)])
    audio = AudioSimulator(world, RIG.microphones, seed=0).render(0.5, 8000).astype(np.float64)
    left, right = audio[0], audio[1]  # mic 0 at y = +0.15, mic 1 at y = -0.15
    spec = np.fft.rfft(left, 16384) * np.conj(np.fft.rfft(right, 16384))
    cc = np.fft.irfft(spec / (np.abs(spec) + 1e-9))
    lags = np.concatenate([np.arange(0, 40), np.arange(-40, 0)])
    lag = lags[np.argmax(np.concatenate([cc[:40], cc[-40:]]))]
    expected = 0.30 / 343.0 * RIG.microphones.sample_rate_hz  # ~14 samples, right mic later
    assert abs(-lag - expected) <= 2, lag


def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(EdgeError, match="unknown scenario 'moon'"):
        generate_drive(tmp_path / "x", 0, 1.0, "moon", progress=False)
    with pytest.raises(EdgeError, match="positive"):
        generate_drive(tmp_path / "y", 0, -1.0, "glare", progress=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("user data")
    with pytest.raises(EdgeError, match="refusing to overwrite"):
        generate_drive(tmp_path / "full", 0, 0.5, "glare", progress=False)
    assert (tmp_path / "full" / "keep.txt").read_text() == "user data"


def test_generator_streams_have_real_car_rates() -> None:
    world = static_world([box_actor(0, 8.0, 0.0)], duration=1.0)
    gen = DriveGenerator(world, RIG, seed=0)
    got: list[tuple[str, int]] = []
    for k in range(10):
        gen.frame(k, lambda topic, msgtype, stamp, msg: got.append((topic, stamp)))
    gen.close()
    count = lambda topic: sum(1 for t, _ in got if t == topic)  # noqa: E731
    assert count(T.fisheye_image_topic("rear") + T.COMPRESSED_SUFFIX) == 10
    assert 18 <= count(T.ultrasonic_topic("front_left_side")) <= 20  # 20 Hz, rare dropouts
    assert count(T.AUDIO) == 25  # 40 ms chunks
    assert count(T.ODOM) == 50
    stamps = [s for _, s in got]
    assert stamps == sorted(stamps)


def test_qa_stats_command_prints_every_template_and_names_a_bad_spec(capsys: pytest.CaptureFixture[str]) -> None:
    from edge.cli import main

    rc = main(["drive", "qa-stats", "yard-night:3:5"])
    out = capsys.readouterr().out
    assert rc in (0, 1)  # 1 = some template over its limit (5 s is a small sample)
    rows = [line.split("|")[1].strip() for line in out.splitlines()[2:]]
    assert set(rows) <= set(TEMPLATES) and {"distance_front", "siren", "count_people"} <= set(rows)
    assert main(["drive", "qa-stats", "yard-night:3"]) == 2
    assert "yard-night:3" in capsys.readouterr().err
