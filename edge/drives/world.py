"""Procedural near-field worlds (parking lots, streets) with actors and an ego trajectory that avoids them.

The world frame is `odom`: the ego starts at the origin heading +x. Every actor is a set of boxes (parts) in its
own frame, so that rendering, ultrasonic echoes and ground truth all use the same geometry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from edge.drives.scenarios import Scenario

# Semantic classes of the BEV ground truth (see edge.drives.groundtruth for the grid values).
STATIC, VEHICLE, VRU = "static", "vehicle", "vru"


@dataclass(frozen=True)
class Part:
    """A box in the actor's frame: centre (x, y), bottom z, size (length along x, width along y, height)."""

    cx: float
    cy: float
    z0: float
    length: float
    width: float
    height: float
    color: tuple[int, int, int]  # BGR albedo


@dataclass
class Actor:
    id: int
    kind: str  # car, pedestrian, cyclist, pillar, curb, wall, pole
    cls: str  # STATIC, VEHICLE or VRU
    parts: list[Part]
    times: np.ndarray  # (K,) seconds; a single entry for static actors
    poses: np.ndarray  # (K, 3) x, y, yaw in odom
    siren: bool = False

    def __post_init__(self) -> None:
        self.poses = self.poses.copy()
        self.poses[:, 2] = np.unwrap(self.poses[:, 2])
        self._half = (max(abs(p.cx) + p.length / 2 for p in self.parts), max(abs(p.cy) + p.width / 2 for p in self.parts))

    def pose(self, t: float) -> tuple[float, float, float]:
        if len(self.times) == 1:
            x, y, yaw = self.poses[0]
            return float(x), float(y), float(yaw)
        x = np.interp(t, self.times, self.poses[:, 0])
        y = np.interp(t, self.times, self.poses[:, 1])
        yaw = np.interp(t, self.times, self.poses[:, 2])
        return float(x), float(y), float(yaw)

    def positions(self, times: np.ndarray) -> np.ndarray:
        """(T, 2) positions at many times at once."""
        return np.stack([np.interp(times, self.times, self.poses[:, 0]), np.interp(times, self.times, self.poses[:, 1])], axis=1)

    def velocity(self, t: float, dt: float = 0.05) -> tuple[float, float]:
        x0, y0, _ = self.pose(t - dt)
        x1, y1, _ = self.pose(t + dt)
        return (x1 - x0) / (2 * dt), (y1 - y0) / (2 * dt)

    @property
    def footprint_half(self) -> tuple[float, float]:
        """Half length and half width of the union of the parts' footprints, in the actor frame."""
        return self._half

    @property
    def moving(self) -> bool:
        return len(self.times) > 1


@dataclass
class EgoTrajectory:
    times: np.ndarray
    x: np.ndarray
    y: np.ndarray
    yaw: np.ndarray
    v: np.ndarray  # signed longitudinal speed, m/s

    def pose(self, t: float) -> tuple[float, float, float]:
        return (float(np.interp(t, self.times, self.x)), float(np.interp(t, self.times, self.y)),
                float(np.interp(t, self.times, self.yaw)))

    def twist(self, t: float) -> tuple[float, float]:
        """(signed speed, yaw rate)."""
        v = float(np.interp(t, self.times, self.v))
        yaw_rate = float(np.interp(t, self.times[1:], np.diff(self.yaw) / np.diff(self.times)))
        return v, yaw_rate


@dataclass
class World:
    scenario: Scenario
    seed: int
    duration: float
    actors: list[Actor]
    ego: EgoTrajectory
    # Painted markings in odom: list of ((x0, y0), (x1, y1), width_m, BGR) line segments.
    markings: list[tuple[tuple[float, float], tuple[float, float], float, tuple[int, int, int]]]
    ground_color: tuple[int, int, int]
    x_extent: tuple[float, float]
    # Audio events: (kind, start s, end s, actor id of the source)
    audio_events: list[tuple[str, float, float, int]] = field(default_factory=list)

    def actor(self, actor_id: int) -> Actor:
        return next(a for a in self.actors if a.id == actor_id)


CAR_COLORS = [(40, 40, 40), (200, 200, 205), (30, 30, 150), (140, 80, 20), (90, 90, 95), (230, 230, 230),
              (30, 90, 30), (20, 120, 200), (60, 40, 110)]
CLOTHES = [(40, 40, 140), (140, 60, 30), (30, 30, 30), (180, 180, 60), (60, 130, 200), (100, 50, 120)]


def car_parts(rng: np.random.Generator) -> tuple[list[Part], float, float]:
    length, width = rng.uniform(4.1, 4.9), rng.uniform(1.75, 1.95)
    color = CAR_COLORS[int(rng.integers(len(CAR_COLORS)))]
    body = Part(0.0, 0.0, 0.22, length, width, 0.78, color)
    cabin = Part(-0.15 * length, 0.0, 1.0, 0.55 * length, width * 0.88, rng.uniform(0.4, 0.5), (55, 50, 45))
    return [body, cabin], length, width


def pedestrian_parts(rng: np.random.Generator) -> list[Part]:
    height = rng.uniform(1.55, 1.9)
    clothes = CLOTHES[int(rng.integers(len(CLOTHES)))]
    return [Part(0.0, 0.0, 0.0, 0.32, 0.48, height - 0.25, clothes), Part(0.0, 0.0, height - 0.25, 0.22, 0.2, 0.25, (120, 150, 190))]


def cyclist_parts(rng: np.random.Generator) -> list[Part]:
    clothes = CLOTHES[int(rng.integers(len(CLOTHES)))]
    return [Part(0.0, 0.0, 0.05, 1.75, 0.12, 0.95, (30, 30, 30)), Part(-0.1, 0.0, 0.95, 0.45, 0.45, 0.8, clothes)]


class _Builder:
    def __init__(self, scenario: Scenario, seed: int, duration: float) -> None:
        self.scenario, self.seed, self.duration = scenario, seed, duration
        self.rng = np.random.default_rng(seed)
        self.actors: list[Actor] = []
        self.markings: list = []
        self.length = scenario.cruise_speed * duration + 80.0

    def add(self, kind: str, cls: str, parts: list[Part], times, poses, siren: bool = False) -> Actor:
        actor = Actor(len(self.actors), kind, cls, parts, np.atleast_1d(np.asarray(times, dtype=np.float64)),
                      np.atleast_2d(np.asarray(poses, dtype=np.float64)), siren)
        self.actors.append(actor)
        return actor

    def static(self, kind: str, parts: list[Part], x: float, y: float, yaw: float = 0.0, cls: str = STATIC) -> Actor:
        return self.add(kind, cls, parts, [0.0], [[x, y, yaw]])

    def walker(self, kind: str, parts: list[Part], cls: str, start: tuple[float, float], heading: float,
               speed: float, t0: float, t1: float) -> Actor:
        ts = np.array([t0, t1])
        xs = start[0] + np.cos(heading) * speed * (ts - t0)
        ys = start[1] + np.sin(heading) * speed * (ts - t0)
        return self.add(kind, cls, parts, ts, np.stack([xs, ys, np.full(2, heading)], axis=1))

    def line(self, a: tuple[float, float], b: tuple[float, float], width: float = 0.12,
             color: tuple[int, int, int] = (225, 225, 225)) -> None:
        self.markings.append((a, b, width, color))


def _parking(b: _Builder) -> None:
    rng, L = b.rng, b.length
    aisle, depth, stall = 3.0, 5.0, 2.5
    x = -20.0
    wall_parts = [Part(0.0, 0.0, 0.0, 2.5, 0.25, 2.6, (150, 150, 150))]
    for wx in np.arange(-20.0, L, 2.5):
        for side in (-1, 1):
            b.static("wall", wall_parts, wx + 1.25, side * (aisle + depth + 0.6))
    stall_index = 0
    while x < L:
        for side in (-1, 1):
            b.line((x, side * aisle), (x, side * (aisle + depth)))
            if rng.random() < 0.68:
                parts, length, _ = car_parts(rng)
                offset = aisle + depth - length / 2 - rng.uniform(0.15, 0.5)
                yaw = side * math.pi / 2 + (math.pi if rng.random() < 0.5 else 0.0) + rng.normal(0, 0.03)
                b.static("car", parts, x + stall / 2 + rng.normal(0, 0.12), side * offset, yaw, cls=VEHICLE)
        if stall_index % 4 == 3:
            side = 1 if (stall_index // 4) % 2 else -1
            b.static("pillar", [Part(0, 0, 0, 0.6, 0.6, 2.6, (175, 175, 170))], x, side * (aisle + 0.45))
        stall_index += 1
        x += stall
    # Aisle edge lines and a few pedestrians walking along or across the aisle.
    b.line((-20.0, aisle), (L, aisle), 0.1, (60, 200, 230))
    b.line((-20.0, -aisle), (L, -aisle), 0.1, (60, 200, 230))
    for _ in range(int(b.duration / 6) + 2):
        t0 = rng.uniform(0, b.duration)
        x_meet = b.scenario.cruise_speed * t0 + rng.uniform(5, 25)
        if rng.random() < 0.5:  # crossing the aisle between parked cars
            side = rng.choice([-1, 1])
            b.walker("pedestrian", pedestrian_parts(rng), VRU, (x_meet, side * 7.0), -side * math.pi / 2,
                     rng.uniform(0.9, 1.4), t0, t0 + 16.0)
        else:  # walking along the aisle edge toward the car
            b.walker("pedestrian", pedestrian_parts(rng), VRU, (x_meet + 10, rng.choice([-1, 1]) * rng.uniform(2.2, 2.7)),
                     math.pi, rng.uniform(0.8, 1.3), t0, t0 + 25.0)


def _street(b: _Builder) -> None:
    rng, L = b.rng, b.length
    # Lanes: ego lane |y| < 1.75, oncoming lane up to 5.25, parking lane down to -4.25, curbs, sidewalks.
    b.line((-40.0, 1.75), (L, 1.75), 0.12, (40, 200, 230))
    b.line((-40.0, -1.75), (L, -1.75), 0.15)
    b.line((-40.0, 5.25), (L, 5.25), 0.15)
    for cx in np.arange(-40.0, L, 4.0):
        for y in (-4.35, 5.35):
            b.static("curb", [Part(0, 0, 0, 4.0, 0.2, 0.15, (165, 165, 160))], cx + 2.0, y)
    x = -30.0
    while x < L:
        gap = rng.uniform(0.8, 5.0)
        if rng.random() < 0.7:
            parts, length, _ = car_parts(rng)
            b.static("car", parts, x + length / 2, -3.0 + rng.normal(0, 0.1), rng.normal(0, 0.02), cls=VEHICLE)
            x += length + gap
        else:
            x += 6.0
    for px in np.arange(-20.0, L, 25.0):
        b.static("pole", [Part(0, 0, 0, 0.2, 0.2, 4.5, (90, 90, 90))], px + rng.uniform(0, 5), -6.6)
        b.static("pole", [Part(0, 0, 0, 0.2, 0.2, 4.5, (90, 90, 90))], px + rng.uniform(0, 5), 7.2)
    # Zebra crossings with pedestrians crossing in front of the ego.
    n_cross = max(1, int(b.duration / 20))
    for k in range(n_cross):
        t_arrive = (k + 0.6) * b.duration / n_cross
        xc = b.scenario.cruise_speed * t_arrive + 12.0
        for s in np.arange(-1.5, 5.0, 0.8):
            b.line((xc - 1.5, s), (xc + 1.5, s), 0.4)
        side = rng.choice([-1, 1])
        b.walker("pedestrian", pedestrian_parts(rng), VRU, (xc + rng.normal(0, 0.5), side * 7.0), -side * math.pi / 2,
                 rng.uniform(1.0, 1.4), t_arrive - 8.0, t_arrive + 8.0)
    for _ in range(int(b.duration / 4) + 2):  # sidewalk pedestrians
        t0 = rng.uniform(-10, b.duration)
        y = rng.choice([-5.5, 6.3]) + rng.normal(0, 0.3)
        heading = 0.0 if rng.random() < 0.5 else math.pi
        b.walker("pedestrian", pedestrian_parts(rng), VRU, (b.scenario.cruise_speed * max(t0, 0) + rng.uniform(-10, 40), y),
                 heading, rng.uniform(0.9, 1.5), t0, t0 + 40.0)
    for _ in range(int(b.duration / 10) + 1):  # cyclists on the right, riding with traffic
        t0 = rng.uniform(-5, b.duration)
        b.walker("cyclist", cyclist_parts(rng), VRU, (b.scenario.cruise_speed * max(t0, 0) + rng.uniform(10, 30), -5.0),
                 0.0, rng.uniform(3.0, 4.5), t0, t0 + 40.0)
    for _ in range(int(b.duration / 5) + 1):  # oncoming traffic
        t0 = rng.uniform(-5, b.duration)
        parts, _, _ = car_parts(rng)
        b.walker("car", parts, VEHICLE, (b.scenario.cruise_speed * max(t0, 0) + rng.uniform(50, 90), 3.5), math.pi,
                 rng.uniform(6.0, 10.0), t0, t0 + 30.0)


def _audio_sources(b: _Builder) -> list[tuple[str, float, float, int]]:
    rng, events = b.rng, []
    for frac, length in b.scenario.sirens:
        t0 = frac * b.duration
        t1 = min(t0 + length, b.duration)
        # The emergency vehicle passes in the oncoming lane, or comes up from behind on the left.
        from_front = rng.random() < 0.5
        ego_x = b.scenario.cruise_speed * t0
        speed = rng.uniform(9.0, 13.0)
        start = (ego_x + 70.0, 3.5) if from_front else (ego_x - 60.0, 3.5)
        heading = math.pi if from_front else 0.0
        parts, _, _ = car_parts(rng)
        parts = [Part(p.cx, p.cy, p.z0, p.length, p.width, p.height, (230, 230, 235) if i == 0 else p.color)
                 for i, p in enumerate(parts)] + [Part(0.0, 0.0, 1.45, 0.4, 1.2, 0.15, (200, 60, 20))]
        actor = b.walker("car", parts, VEHICLE, start, heading, speed, t0 - 2.0, t1 + 2.0)
        actor.siren = True
        events.append(("siren", t0, t1, actor.id))
    for frac in b.scenario.horns:
        t0 = frac * b.duration
        horn_car = min((a for a in b.actors if a.kind == "car"),
                       key=lambda a: abs(a.pose(t0)[0] - b.scenario.cruise_speed * t0 - 6.0) + abs(a.pose(t0)[1]))
        events.append(("horn", t0, min(t0 + 0.8, b.duration), horn_car.id))
    return events


def _footprint_corners(actor: Actor, t: float, margin: float = 0.0) -> np.ndarray:
    x, y, yaw = actor.pose(t)
    hl, hw = actor.footprint_half
    hl, hw = hl + margin, hw + margin
    c, s = math.cos(yaw), math.sin(yaw)
    local = np.array([[hl, hw], [hl, -hw], [-hl, -hw], [-hl, hw]])
    return local @ np.array([[c, s], [-s, c]]) + np.array([x, y])


def _simulate_ego(b: _Builder, body_front: float, body_rear: float, half_width: float) -> EgoTrajectory:
    """Speed control along the lane with braking for anything in the corridor ahead (or behind when reversing)."""
    sc, rng = b.scenario, b.rng
    dt = 0.02
    n = int(round(b.duration / dt)) + 1
    times = np.arange(n) * dt
    x = np.zeros(n)
    v = np.zeros(n)
    reversals = sorted(f * b.duration for f in sc.reversals)
    amp, wavelength = (0.15, 70.0) if sc.layout == "street" else (0.25, 25.0)
    phase = rng.uniform(0, 2 * math.pi)

    def lateral(xs: np.ndarray | float) -> np.ndarray | float:
        # The ego weaves gently within its lane as a function of distance travelled (not time).
        return amp * (np.sin(2 * math.pi * np.asarray(xs) / wavelength + phase) - math.sin(phase))

    obstacles = [a for a in b.actors if a.kind not in ("curb", "wall")]
    # Obstacle positions on the whole time grid at once; the loop below is then a few vector operations a step.
    pos = np.stack([a.positions(times) for a in obstacles], axis=1)  # (n, A, 2)
    half = np.array([a.footprint_half for a in obstacles])  # (A, 2)
    rev_until = -1.0
    for i in range(1, n):
        t = times[i]
        target = sc.cruise_speed * min(1.0, t / 4.0)
        if reversals and t >= reversals[0]:
            rev_until = reversals.pop(0) + 6.0
        if t < rev_until:
            target = -1.2
        # Corridor check: anything within the stopping distance ahead (or behind) in the ego's lane stops it.
        reach = 2.0 + v[i - 1] ** 2 / (2 * 2.5)
        ax, ay = pos[i, :, 0], pos[i, :, 1]
        in_lane = np.abs(ay - float(lateral(x[i - 1]))) - half[:, 1] <= half_width + 0.4
        ahead = ax - half[:, 0] - (x[i - 1] + body_front)
        behind = (x[i - 1] - body_rear) - (ax + half[:, 0])
        if target > 0 and (in_lane & (ahead >= -half[:, 0]) & (ahead < reach)).any():
            target = 0.0
        if target < 0 and (in_lane & (behind >= -half[:, 0]) & (behind < 2.5)).any():
            target = 0.0
        accel = np.clip((target - v[i - 1]) / dt, -3.0, 1.5)
        v[i] = v[i - 1] + accel * dt
        x[i] = x[i - 1] + v[i] * dt
    y = lateral(x)
    # Heading follows the path tangent dy/dx (the car faces forward also while reversing).
    yaw = np.arctan(2 * math.pi * amp / wavelength * np.cos(2 * math.pi * x / wavelength + phase))
    return EgoTrajectory(times, x, y, yaw, v)


# ---------------------------------------------------------------------------------------------------- yard
# The yard is built for questions only the sensors can answer: the ego shuttles forward, stops and reverses, and
# what surrounds it is drawn so that each question's answers are spread (docs/drives.md gives the measured shares):
# a lead and a following road user at gaps that wander over the whole ultrasonic range, roadside objects of every
# class at random lateral gaps, sirens and horns from every side for about half of the drive each.
FAR = 80.0  # where an actor waits before and after its episode: beyond the 30 m ground-truth range


def _scripted_ego(b: _Builder) -> EgoTrajectory:
    """Forward, stop and reverse segments with limited acceleration along a straight aisle."""
    rng, dt = b.rng, 0.02
    n = int(round(b.duration / dt)) + 1
    times = np.arange(n) * dt
    target = np.zeros(n)
    t = 0.0
    while t < b.duration:
        mode = rng.choice(3, p=[0.5, 0.2, 0.3])
        length = rng.uniform(2.0, 5.0)
        speed = (rng.uniform(1.0, b.scenario.cruise_speed), 0.0, -rng.uniform(0.6, 1.3))[int(mode)]
        target[(times >= t) & (times < t + length)] = speed
        t += length
    v = np.zeros(n)
    for i in range(1, n):
        v[i] = v[i - 1] + np.clip((target[i] - v[i - 1]) / dt, -2.5, 1.5) * dt
    x = np.concatenate([[0.0], np.cumsum(v[1:] * dt)])
    return EgoTrajectory(times, x, np.zeros(n), np.zeros(n), v)


def _knots(rng: np.random.Generator, t0: float, t1: float, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """A value that holds uniform random levels in [lo, hi] for 1-2.5 s each and moves between them in 0.5 s
    (holding, not drifting, so the time spent at each level stays uniform: a linear drift between random
    knots would pile up in the middle of the range)."""
    ts, vs = [t0], [rng.uniform(lo, hi)]
    while ts[-1] < t1:
        ts.append(ts[-1] + rng.uniform(1.0, 2.5))
        vs.append(vs[-1])
        ts.append(ts[-1] + 0.5)
        vs.append(rng.uniform(lo, hi))
    return np.array(ts), np.array(vs)


def _road_user(rng: np.random.Generator) -> tuple[str, str, list[Part]]:
    """A car, a pedestrian, a cyclist or a mobile barrier (a static-class obstacle, as a pushed trolley or a
    placed barrier would be seen)."""
    kind = str(rng.choice(["car", "pedestrian", "cyclist", "barrier"], p=[0.3, 0.27, 0.23, 0.2]))
    if kind == "car":
        return kind, VEHICLE, car_parts(rng)[0]
    if kind == "barrier":
        return kind, STATIC, [Part(0.0, 0.0, 0.0, rng.uniform(0.4, 1.0), rng.uniform(0.8, 1.6), 1.1, (40, 120, 220))]
    return kind, VRU, pedestrian_parts(rng) if kind == "pedestrian" else cyclist_parts(rng)


def _escorts(b: _Builder, ego: EgoTrajectory, body: tuple[float, float, float, float]) -> None:
    """Road users ahead, behind, left and right of the body, one episode after another, at wandering gaps."""
    rng = b.rng
    x_min, x_max, y_min, y_max = body
    for axis, sign in ((0, 1.0), (0, -1.0), (1, 1.0), (1, -1.0)):
        t = rng.uniform(-1.0, 1.0)
        while t < b.duration:
            length = rng.uniform(3.0, 8.0)
            t0, t1 = max(t, 0.0), min(t + length, b.duration + 1.0)
            t = t + length + rng.uniform(0.0, 0.6)
            if t1 - t0 < 1.0 or rng.random() < (0.05 if axis == 0 else 0.2):  # now and then nobody there
                continue
            kind, cls, parts = _road_user(rng)
            hl = max(abs(p.cx) + p.length / 2 for p in parts)
            hw = max(abs(p.cy) + p.width / 2 for p in parts)
            ts = np.arange(t0, t1 + 1e-9, 0.1)
            gap = np.interp(ts, *_knots(rng, t0, t1, 0.3, 6.1 if axis == 0 else 6.0))
            ex = np.interp(ts, ego.times, ego.x)
            if axis == 0:  # ahead or behind, in the lane
                xs = ex + (x_max if sign > 0 else x_min) + sign * (gap + hl)
                ys = np.full_like(ts, rng.uniform(-0.4, 0.4) if kind != "car" else rng.normal(0, 0.1))
            else:  # alongside, drifting along the body
                xs = ex + (x_min + x_max) / 2 + np.interp(ts, *_knots(rng, t0, t1, -2.0, 2.0))
                ys = sign * ((y_max - y_min) / 2 + gap + hw)
            yaw = rng.uniform(-math.pi, math.pi) if kind == "pedestrian" else 0.0
            poses = np.stack([xs, ys, np.full_like(ts, yaw)], 1)
            away = [[xs[0], FAR, yaw]], [[xs[-1], FAR, yaw]]
            b.add(kind, cls, parts, np.concatenate([[t0 - 0.01], ts, [ts[-1] + 0.01]]),
                  np.concatenate([away[0], poses, away[1]]))


def _roadside(b: _Builder, ego: EgoTrajectory, body: tuple[float, float, float, float]) -> None:
    """Parked cars and static obstacles along both sides at random lateral gaps from the body."""
    rng = b.rng
    half_w = body[3]
    x_lo, x_hi = float(ego.x.min()) - 15.0, float(ego.x.max()) + 15.0
    for side in (-1.0, 1.0):
        x = x_lo
        while x < x_hi:
            kind = str(rng.choice(["car", "pillar", "wall", "pole", "gap"], p=[0.2, 0.14, 0.1, 0.08, 0.48]))
            gap = rng.uniform(0.3, 8.0)
            if kind == "gap":
                x += rng.uniform(2.0, 5.0)
                continue
            if kind == "car":
                parts, length, width = car_parts(rng)
                yaw, hl, hw, cls = rng.normal(0, 0.03), length / 2, width / 2, VEHICLE
            else:
                size = {"pillar": (0.6, 0.6, 2.6), "wall": (rng.uniform(1.5, 4.0), 0.25, 2.2), "pole": (0.2, 0.2, 4.0)}[kind]
                parts = [Part(0.0, 0.0, 0.0, size[0], size[1], size[2], (165, 165, 160))]
                yaw, hl, hw, cls = 0.0, size[0] / 2, size[1] / 2, STATIC
            b.add(kind, cls, parts, [0.0], [[x + hl, side * (half_w + gap + hw), yaw]])
            x += 2 * hl + rng.uniform(0.5, 3.5)
    for k in range(int(x_lo), int(x_hi), 3):  # painted bays give the cameras texture
        b.line((float(k), 2.6), (float(k), 7.5))
        b.line((float(k), -2.6), (float(k), -7.5))


def _yard_audio(b: _Builder, ego: EgoTrajectory) -> list[tuple[str, float, float, int]]:
    """Back-to-back segments of siren, horn or quiet; each source keeps a bearing from one of the four sides."""
    rng, events = b.rng, []
    sides: dict[str, list[int]] = {"siren": [], "horn": []}  # each sound visits the four sides in a shuffled cycle
    kinds: list[str] = []  # shuffled cycles of three sirens, three horns and one quiet spell
    t = 0.0
    while t < b.duration:
        length = rng.uniform(2.5, 6.0)
        if not kinds:
            kinds = [str(k) for k in rng.permutation(["siren", "horn"] * 3 + ["quiet"])]
        kind = kinds.pop()
        t0, t1 = t, min(t + length, b.duration)
        t += length
        if kind == "quiet" or t1 - t0 < 1.0:
            continue
        if not sides[kind]:
            sides[kind] = [int(k) for k in rng.permutation(4)]
        bearing = sides[kind].pop() * math.pi / 2 + rng.uniform(-0.45, 0.45)
        dist = rng.uniform(15.0, 28.0) if kind == "siren" else rng.uniform(7.0, 12.0)
        parts, _, _ = car_parts(rng)
        if kind == "siren":
            parts = parts + [Part(0.0, 0.0, 1.45, 0.4, 1.2, 0.15, (200, 60, 20))]
        ts = np.arange(t0 - 0.5, t1 + 0.5 + 1e-9, 0.1)
        cx = 1.35  # body centre: bearings are as the questions measure them
        xs = np.interp(ts, ego.times, ego.x) + cx + dist * math.cos(bearing)
        ys = np.full_like(ts, dist * math.sin(bearing))
        poses = np.stack([xs, ys, np.full_like(ts, bearing + math.pi / 2)], 1)
        away = [[xs[0], FAR, 0.0]], [[xs[-1], FAR, 0.0]]
        actor = b.add("car", VEHICLE, parts, np.concatenate([[ts[0] - 0.01], ts, [ts[-1] + 0.01]]),
                      np.concatenate([away[0], poses, away[1]]), siren=kind == "siren")
        events.append((kind, t0, t1, actor.id))
    return events


def build_world(scenario: Scenario, seed: int, duration: float, body: tuple[float, float, float, float]) -> World:
    """Make the scene for (scenario, seed): same inputs, same world."""
    b = _Builder(scenario, seed, duration)
    x_min, x_max, y_min, y_max = body
    if scenario.layout == "yard":
        ego = _scripted_ego(b)
        _roadside(b, ego, body)
        _escorts(b, ego, body)
        events = _yard_audio(b, ego)
        return World(scenario, seed, duration, b.actors, ego, b.markings, (84, 88, 92),
                     (float(ego.x.min()) - 45.0, float(ego.x.max()) + 80.0), events)
    (_parking if scenario.layout == "parking" else _street)(b)
    events = _audio_sources(b)
    ego = _simulate_ego(b, x_max, -x_min, (y_max - y_min) / 2)
    ground = (88, 92, 96) if scenario.layout == "parking" else (70, 72, 75)
    return World(scenario, seed, duration, b.actors, ego, b.markings, ground, (-45.0, b.length), events)
