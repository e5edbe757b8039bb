"""A roof-mounted spinning LiDAR in the drives `edge drive generate` writes: the plugin's simulator hook
(edge.drives.sim_hooks; the plugin names `edge_lidar.simulator:build`).

Each scan is cast at its stamp from the ego pose then (the motion during one revolution is not modelled) against
the world's actors (every part of every actor, static obstacles included: boxes), the ego's own body (a real roof
LiDAR sees its roof with its lowest beams) and the ground plane. Light plays no part: the drive's darkness, glare and
weather do not change a scan. Each return gets Gaussian range noise, a share of returns is lost (dropout), nothing
beyond max_range or inside min_range is returned, and the intensity is the surface's reflectivity (0-100) with noise.
Random streams are per sensor and per scan (SimSetup.rng), so a scan is the same whatever windows it is asked in.
"""

from __future__ import annotations

import math

import numpy as np

from edge.drives.sim_hooks import SimMessage, SimSetup, to_ns
from edge.drives.world import Actor, World

from edge_lidar.messages import POINTCLOUD2, point_cloud
from edge_lidar.raycast import Boxes, cast
from edge_lidar.rig import Lidar, lidars

INTENSITY_NOISE = 2.0  # intensity units (0-100), 1 sigma
GROUND_Z = 0.0  # base_link is on the ground (REP-105, the core's rig)


def reflectivity(color: tuple[int, int, int]) -> float:
    """A part's LiDAR reflectivity from its albedo: light paint returns more than dark (0.05-0.85)."""
    return 0.05 + 0.8 * float(np.mean(color)) / 255.0


def actor_boxes(actors: list[Actor], t: float, ego_pose: tuple[float, float, float], reach: float,
                body: tuple[float, float, float, float], body_height: float) -> Boxes:
    """The parts of the actors within `reach` of the ego at time t, and the ego's body, as boxes in base_link."""
    ex, ey, eyaw = ego_pose
    c, s = math.cos(eyaw), math.sin(eyaw)
    x0, x1, y0, y1 = body
    rows = [((x0 + x1) / 2, (y0 + y1) / 2, 0.0, (x1 - x0) / 2, (y1 - y0) / 2, 0.0, body_height, 0.3)]
    for a in actors:
        ax, ay, ayaw = a.pose(t)
        if math.hypot(ax - ex, ay - ey) > reach + math.hypot(*a.footprint_half):
            continue
        ca, sa = math.cos(ayaw), math.sin(ayaw)
        for p in a.parts:
            px, py = ax + ca * p.cx - sa * p.cy - ex, ay + sa * p.cx + ca * p.cy - ey
            rows.append((c * px + s * py, -s * px + c * py, ayaw - eyaw, p.length / 2, p.width / 2, p.z0,
                         p.z0 + p.height, reflectivity(p.color)))
    r = np.array(rows, dtype=np.float64)
    return Boxes(r[:, :2], r[:, 2], r[:, 3:5], r[:, 5], r[:, 6], r[:, 7])


class LidarSimulator:
    """The scans of a rig's LiDARs over one drive (edge.drives.sim_hooks.SensorSimulator)."""

    def __init__(self, world: World, sensors: tuple[Lidar, ...], setup: SimSetup,
                 body: tuple[float, float, float, float], body_height: float) -> None:
        self.world = world
        self.lidars = sensors
        self.setup = setup
        self.body = body
        self.body_height = body_height
        self._dirs = {lidar.name: sensor_directions(lidar) for lidar in sensors}

    def messages(self, t0: float, t1: float) -> list[SimMessage]:
        """A PointCloud2 per LiDAR per revolution stamped in [t0, t1) (scan k at k / rate_hz seconds)."""
        out: list[SimMessage] = []
        for lidar in self.lidars:
            rate = lidar.spec.rate_hz
            k = max(0, math.ceil(t0 * rate - 1e-9))
            while k / rate < t1:
                if k / rate >= t0:
                    stamp = to_ns(k / rate)
                    cloud = point_cloud(stamp, lidar.spec.frame_id, self.scan(lidar, k))
                    out.append((stamp, lidar.topic, POINTCLOUD2, cloud))
                k += 1
        return out

    def scan(self, lidar: Lidar, k: int) -> np.ndarray:
        """Scan k of a LiDAR: (N, 4) float32 x, y, z, intensity in its own frame."""
        t = k / lidar.spec.rate_hz
        spec = lidar.spec
        rng = self.setup.rng(f"lidar/{lidar.name}/{k}")
        sensor_dirs = self._dirs[lidar.name]
        base_dirs = sensor_dirs @ lidar.rotation.T
        boxes = actor_boxes(self.world.actors, t, self.world.ego.pose(t), spec.max_range, self.body,
                            self.body_height)
        dist, refl = cast(lidar.translation, base_dirs, boxes, GROUND_Z)
        dist = dist + rng.normal(0.0, spec.range_noise, dist.shape)
        keep = (dist >= spec.min_range) & (dist <= spec.max_range) & (rng.random(dist.shape) >= spec.dropout)
        d = dist[keep]
        xyz = sensor_dirs[keep] * d[:, None]
        intensity = np.clip(100.0 * refl[keep] + rng.normal(0.0, INTENSITY_NOISE, d.shape), 0.0, 255.0)
        return np.column_stack([xyz, intensity]).astype(np.float32)

    def close(self) -> None:
        """Nothing held between windows."""


def sensor_directions(lidar: Lidar) -> np.ndarray:
    """(beams, A, 3) unit ray directions in the sensor's frame: each beam's elevation at every azimuth."""
    el = lidar.elevations()[:, None]
    az = lidar.azimuths()[None, :]
    return np.stack(np.broadcast_arrays(np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)), axis=-1)


def build(setup: SimSetup) -> LidarSimulator:
    """The plugin's simulator factory (ModalityPlugin.simulator): the rig's LiDARs named in `setup.sensors`."""
    chosen = tuple(lidar for lidar in lidars(setup.rig) if lidar.name in setup.sensors)
    return LidarSimulator(setup.world, chosen, setup, setup.rig.footprint(), setup.rig.vehicle.height)
