"""Ultrasonic echoes: the nearest surface inside each sensor's beam, with noise, cross-talk and dropouts.

Reported as REP-117 ranges: the measured distance in metres, +inf when nothing echoes within max_range, and no
message at all when the sensor drops a cycle (as real parking sensors do under interference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge.drives.world import Actor
from edge.sensors.rig import UltrasonicSensor

N_RAYS = 15
DROPOUT_PROB = 0.02
CROSSTALK_PROB = 0.01


@dataclass(frozen=True)
class Footprints:
    """Oriented rectangles in base_link: centre (N,2), yaw (N,), half length/width (N,2)."""

    centre: np.ndarray
    yaw: np.ndarray
    half: np.ndarray

    @staticmethod
    def of(actors: list[Actor], t: float, ego_pose: tuple[float, float, float], max_range: float) -> "Footprints":
        ex, ey, eyaw = ego_pose
        c, s = math.cos(eyaw), math.sin(eyaw)
        centre, yaw, half = [], [], []
        for a in actors:
            x, y, ayaw = a.pose(t)
            dx, dy = x - ex, y - ey
            if math.hypot(dx, dy) > max_range:
                continue
            for p in a.parts:
                if p.z0 > 1.2:  # above the beams of bumper-height sensors
                    continue
                pc = (x + math.cos(ayaw) * p.cx - math.sin(ayaw) * p.cy - ex, y + math.sin(ayaw) * p.cx + math.cos(ayaw) * p.cy - ey)
                centre.append((c * pc[0] + s * pc[1], -s * pc[0] + c * pc[1]))
                yaw.append(ayaw - eyaw)
                half.append((p.length / 2, p.width / 2))
        return Footprints(np.array(centre).reshape(-1, 2), np.array(yaw), np.array(half).reshape(-1, 2))


def ray_box_distance(origin: np.ndarray, dirs: np.ndarray, fp: Footprints) -> np.ndarray:
    """Distance along each 2D ray (R,) to the nearest rectangle (slab test in each box frame); inf if none."""
    if len(fp.yaw) == 0:
        return np.full(len(dirs), np.inf)
    c, s = np.cos(fp.yaw), np.sin(fp.yaw)  # (B,)
    rel = origin[None, :] - fp.centre  # (B,2)
    o_x = c * rel[:, 0] + s * rel[:, 1]
    o_y = -s * rel[:, 0] + c * rel[:, 1]
    d_x = c[None, :] * dirs[:, :1] + s[None, :] * dirs[:, 1:2]  # (R,B)
    d_y = -s[None, :] * dirs[:, :1] + c[None, :] * dirs[:, 1:2]
    with np.errstate(divide="ignore", invalid="ignore"):
        tx1 = (-fp.half[:, 0] - o_x) / d_x
        tx2 = (fp.half[:, 0] - o_x) / d_x
        ty1 = (-fp.half[:, 1] - o_y) / d_y
        ty2 = (fp.half[:, 1] - o_y) / d_y
    t_near = np.maximum(np.minimum(tx1, tx2), np.minimum(ty1, ty2))
    t_far = np.minimum(np.maximum(tx1, tx2), np.maximum(ty1, ty2))
    hit = (t_far >= np.maximum(t_near, 0.0)) & np.isfinite(t_near)
    dist = np.where(hit, np.maximum(t_near, 0.0), np.inf)
    return dist.min(axis=1)


class UltrasonicSimulator:
    """One reading per sensor per cycle; `None` means the cycle was dropped."""

    def __init__(self, sensors: list[UltrasonicSensor], rng: np.random.Generator) -> None:
        self.sensors = sensors
        self.rng = rng
        self._offsets = np.linspace(-0.5, 0.5, N_RAYS)

    def true_range(self, sensor: UltrasonicSensor, fp: Footprints) -> float:
        angles = sensor.yaw + self._offsets * sensor.beam_width
        dirs = np.stack([np.cos(angles), np.sin(angles)], axis=1)
        d = float(ray_box_distance(sensor.position[:2], dirs, fp).min())
        return d if sensor.min_range <= d <= sensor.max_range else (math.inf if d > sensor.max_range else sensor.min_range)

    def read(self, fp: Footprints) -> list[float | None]:
        truth = [self.true_range(s, fp) for s in self.sensors]
        out: list[float | None] = []
        for i, (sensor, r) in enumerate(zip(self.sensors, truth)):
            u = self.rng.random()
            if u < DROPOUT_PROB:
                out.append(None)
                continue
            if u < DROPOUT_PROB + CROSSTALK_PROB:  # a neighbour's pulse heard as an early echo
                neighbour = truth[(i + (1 if self.rng.random() < 0.5 else -1)) % len(truth)]
                base = neighbour if math.isfinite(neighbour) else sensor.max_range
                r = max(sensor.min_range, base * self.rng.uniform(0.4, 0.9))
            if math.isfinite(r):
                r = r + self.rng.normal(0.0, 0.01 + 0.008 * r)
                r = float(np.clip(round(r, 2), sensor.min_range, sensor.max_range))
            out.append(r)
        return out
