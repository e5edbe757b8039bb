"""The spinning-LiDAR simulator: returns off an actor at its range, nothing beyond max_range, the ground, the
scan times, determinism per seed and per window, darkness playing no part; the shipped rig's section."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import pytest

from edge.drives.scenarios import get_scenario
from edge.drives.sim_hooks import SimSetup, to_ns
from edge.drives.world import STATIC, Actor, EgoTrajectory, Part, World, build_world
from edge.errors import ConfigError
from edge.sensors.rig import load_rig

import edge_lidar
from edge_lidar.messages import POINTCLOUD2, decode_points
from edge_lidar.plugin import LIDAR
from edge_lidar.rig import lidars
from edge_lidar.simulator import build

RIG_FILE = Path(edge_lidar.__file__).parent / "rigs" / "lidar_rig.yaml"


@pytest.fixture(scope="module")
def rig():
    return load_rig(RIG_FILE)


class SectionRig:
    """The shipped rig with its LiDAR section changed (what the simulator reads of a rig)."""

    def __init__(self, rig, **changes):
        self.rig, self.source = rig, "test rig"
        self.section = {"roof": {**rig.plugin_section("lidar")["roof"], **changes}}

    def plugin_section(self, name):
        return self.section if name == "lidar" else {}

    def __getattr__(self, name):
        return getattr(self.rig, name)


def box_world(x: float, y: float, size: float = 2.0, height: float = 2.0, duration: float = 2.0) -> World:
    """The ego parked at the origin, one box of size x size x height centred at (x, y) in odom."""
    box = Actor(1, "pillar", STATIC, [Part(0.0, 0.0, 0.0, size, size, height, (200, 200, 200))], np.zeros(1),
                np.array([[x, y, 0.0]]))
    times = np.array([0.0, duration])
    ego = EgoTrajectory(times, np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(2))
    return World(get_scenario("parking-day"), 0, duration, [box], ego, [], (80, 80, 80), (-50.0, 50.0))


def scan(world: World, rig, seed: int = 0, t0: float = 0.0, t1: float = 0.1) -> list[np.ndarray]:
    sim = build(SimSetup(world, rig, seed, ("roof",)))
    try:
        return [decode_points(m[3]) for m in sim.messages(t0, t1)]
    finally:
        sim.close()


def to_base(rig, points: np.ndarray) -> np.ndarray:
    return lidars(rig)[0].to_base(points)


def test_returns_off_a_box_at_its_range(rig):
    world = box_world(10.0, 0.0)  # near face at x = 9.0 in base_link; the LiDAR is at x = 1.10, z = 1.90
    (points,) = scan(world, rig)
    base = to_base(rig, points)
    az = np.degrees(np.arctan2(points[:, 1], points[:, 0]))
    ahead = base[(np.abs(az) < 3.0) & (base[:, 2] > 0.2) & (base[:, 0] > 3.8)]  # beyond the car's own bonnet
    assert len(ahead) > 20  # several beams hit its face
    assert np.median(ahead[:, 0]) == pytest.approx(9.0, abs=0.05) and np.all(np.abs(ahead[:, 0] - 9.0) < 0.15)
    assert ahead[:, 3].mean() > 50  # a light surface, brighter than the ground
    behind = base[(np.abs(az) > 170)]
    on_ground = np.abs(behind[:, 2]) < 0.15
    on_roof = (np.abs(behind[:, 2] - 1.45) < 0.15) & (behind[:, 0] > -1.05)  # the car's own body, 1.45 m high
    assert on_ground.sum() > 100 and on_roof.sum() > 10 and np.all(on_ground | on_roof)


def test_nothing_beyond_max_range(rig):
    near = SectionRig(rig, max_range=7.0)
    world = box_world(10.0, 0.0)
    (points,) = scan(world, near)
    ranges = np.linalg.norm(points[:, :3], axis=1)
    assert len(points) > 1000 and ranges.max() <= 7.0 and ranges.min() >= 0.5
    base = to_base(near, points)
    assert not np.any((base[:, 0] > 8.5) & (base[:, 2] > 0.2))  # the box (7.9 m away) is out of reach
    (far,) = scan(world, rig)
    assert np.linalg.norm(far[:, :3], axis=1).max() > 7.0


def test_ground_returns_lie_on_the_ground(rig):
    (points,) = scan(box_world(40.0, 30.0), rig)  # the box far off to the side
    base = to_base(rig, points)
    reach = np.hypot(base[:, 0] - 1.1, base[:, 1])
    ground = base[(reach > 4.0) & (reach < 30.0)]  # off the car, short of the box
    assert len(ground) > 1000 and np.abs(ground[:, 2]).max() < 0.15  # noise only (0.02 m sigma along the ray)
    assert np.all(points[:, 2] < 0.0) or np.any(base[:, 2] > 0.5)  # beams above the horizon return only off boxes


def test_scan_times_and_topic(rig):
    sim = build(SimSetup(box_world(10.0, 0.0), rig, 0, ("roof",)))
    msgs = sim.messages(0.0, 1.0)
    assert [m[0] for m in msgs] == [to_ns(k / 10) for k in range(10)]
    assert {(m[1], m[2]) for m in msgs} == {("/lidar/roof/points", POINTCLOUD2)}
    assert msgs[3][3].header.frame_id == "lidar_roof" and msgs[3][0] == to_ns(0.3)
    assert sim.messages(0.95, 1.0) == [] and len(sim.messages(1.0, 1.05)) == 1
    assert build(SimSetup(box_world(10.0, 0.0), rig, 0, ())).messages(0.0, 1.0) == []  # sensors not asked for


def test_deterministic_per_seed_and_window(rig):
    world = box_world(8.0, 3.0)
    a = scan(world, rig, seed=5, t1=0.3)
    b = scan(world, rig, seed=5, t1=0.15) + scan(world, rig, seed=5, t0=0.15, t1=0.3)
    assert len(a) == 3 and all(np.array_equal(x, y) for x, y in zip(a, b))
    c = scan(world, rig, seed=6, t1=0.3)
    assert not np.array_equal(a[0], c[0])  # noise and dropout differ with the seed


def test_darkness_plays_no_part(rig):
    day = build_world(get_scenario("parking-day"), 4, 3.0, rig.footprint())
    night = dataclasses.replace(day, scenario=get_scenario("parking-night"))
    assert all(np.array_equal(x, y) for x, y in zip(scan(day, rig, 4, 1.0, 1.2), scan(night, rig, 4, 1.0, 1.2)))


def test_a_generated_world_scans_fast_enough(rig):
    world = build_world(get_scenario("street-day"), 2, 10.0, rig.footprint())
    start = time.perf_counter()
    scans = scan(world, rig, 2, 2.0, 2.5)
    per_scan = (time.perf_counter() - start) / len(scans)
    assert len(scans) == 5 and all(len(s) > 10000 for s in scans)
    assert per_scan < 2.0, per_scan  # ~0.15 s on a busy 2-core machine


def test_rig_section(rig):
    assert LIDAR.sensors(rig) == ("roof",)
    assert LIDAR.sensors(load_rig()) == ()  # the core's default rig has no LiDAR: its drives do not change
    (roof,) = lidars(rig)
    assert roof.spec.beams == 32 and roof.topic == "/lidar/roof/points"
    assert np.allclose(roof.elevations()[[0, -1]], np.radians([-25.0, 15.0])) and len(roof.azimuths()) == 900
    with pytest.raises(ConfigError, match="beams"):
        lidars(SectionRig(rig, beams=0))
    with pytest.raises(ConfigError, match="min_range"):
        lidars(SectionRig(rig, min_range=80.0))


def test_tilted_mount_still_hits_the_box(rig):
    tilted = SectionRig(rig, rpy_deg=[0.0, 5.0, 90.0])  # pitched down 5 deg, turned to the left
    (points,) = scan(box_world(10.0, 0.0), tilted)
    base = to_base(tilted, points)
    face = base[(np.abs(base[:, 1]) < 0.5) & (base[:, 2] > 0.3) & (base[:, 0] > 5.0)]
    assert len(face) > 10 and np.all(np.abs(face[:, 0] - 9.0) < 0.15)
    assert math.isclose(float(np.median(face[:, 0])), 9.0, abs_tol=0.05)
