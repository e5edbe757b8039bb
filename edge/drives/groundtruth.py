"""Exact ground truth of a drive: BEV semantic occupancy around base_link, the object list, audio events.

BEV grid (nav_msgs/OccupancyGrid on /ground_truth/bev_occupancy, frame base_link): x from -8 to 12 m, y from
-10 to 10 m, 0.1 m cells, 200 x 200; row = y index, column = x index (the OccupancyGrid convention). Cell values,
chosen so that occupancy-aware tools (costmaps, RViz) still read every obstacle as occupied:

    0 free | 100 static obstacle | 90 vehicle | 80 pedestrian or cyclist | -1 unknown

Unknown = the ego's own footprint and free cells no fisheye camera can see (occluded or beyond 12 m);
obstacle cells keep their class even where hidden (the simulator knows they are there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from edge.drives.world import STATIC, VEHICLE, VRU, Actor, World
from edge.kernels.grid import BevGrid

FREE, STATIC_VALUE, VEHICLE_VALUE, VRU_VALUE, UNKNOWN = 0, 100, 90, 80, -1
CLASS_VALUES = {STATIC: STATIC_VALUE, VEHICLE: VEHICLE_VALUE, VRU: VRU_VALUE}
CLASS_NAMES = {FREE: "free", STATIC_VALUE: "static", VEHICLE_VALUE: "vehicle", VRU_VALUE: "vru", UNKNOWN: "unknown"}
VISIBLE_RANGE = 12.0
_SHIFT = 4


# The ground-truth extent; the grid type is the kernels' one, so perception and ground truth share geometry.
GT_GRID = BevGrid(x_min=-8.0, x_max=12.0, y_min=-10.0, y_max=10.0, resolution=0.1)


def occupancy_shape(grid: BevGrid) -> tuple[int, int]:
    """OccupancyGrid layout: (rows along y, columns along x) — the transpose of the kernels' (nx, ny) layout."""
    return grid.ny, grid.nx


@dataclass(frozen=True)
class ActorState:
    """An actor at one instant, in base_link."""

    actor: Actor
    x: float
    y: float
    yaw: float
    corners: np.ndarray  # (4,2) footprint corners in base_link

    @property
    def cls(self) -> str:
        return self.actor.cls

    @property
    def kind(self) -> str:
        return self.actor.kind


def actor_states(actors: list[Actor], t: float, ego_pose: tuple[float, float, float], max_range: float) -> list[ActorState]:
    ex, ey, eyaw = ego_pose
    c, s = math.cos(eyaw), math.sin(eyaw)
    out = []
    for a in actors:
        x, y, yaw = a.pose(t)
        dx, dy = x - ex, y - ey
        if math.hypot(dx, dy) > max_range:
            continue
        bx, by, byaw = c * dx + s * dy, -s * dx + c * dy, yaw - eyaw
        hl, hw = a.footprint_half
        cb, sb = math.cos(byaw), math.sin(byaw)
        local = np.array([[hl, hw], [hl, -hw], [-hl, -hw], [-hl, hw]])
        corners = local @ np.array([[cb, sb], [-sb, cb]]) + np.array([bx, by])
        out.append(ActorState(a, bx, by, byaw, corners))
    return out


class BevRasterizer:
    """Ground-truth grid for one instant, with the visibility of the rig's fisheye cameras."""

    def __init__(self, grid: BevGrid, footprint: tuple[float, float, float, float], camera_xy: list[np.ndarray]) -> None:
        self.grid = grid
        self.footprint = footprint
        centres = grid.cell_centres().transpose(1, 0, 2)  # (ny, nx, 2): OccupancyGrid rows are y
        self.cx, self.cy = centres[..., 0], centres[..., 1]
        self.camera_xy = camera_xy
        self.n_bins = 720
        x0, x1, y0, y1 = footprint
        self.ego_cells = (self.cx >= x0) & (self.cx <= x1) & (self.cy >= y0) & (self.cy <= y1)
        self._polar = []
        for cxy in camera_xy:
            dx, dy = self.cx - cxy[0], self.cy - cxy[1]
            ang = ((np.arctan2(dy, dx) + math.pi) / (2 * math.pi) * self.n_bins).astype(np.int64) % self.n_bins
            self._polar.append((ang.ravel(), np.hypot(dx, dy).ravel()))

    def _to_px(self, pts: np.ndarray) -> np.ndarray:
        g = self.grid
        px = np.stack([(pts[:, 0] - g.x_min) / g.resolution - 0.5, (pts[:, 1] - g.y_min) / g.resolution - 0.5], axis=1)
        return np.round(px * (1 << _SHIFT)).astype(np.int32)

    def rasterize(self, states: list[ActorState]) -> np.ndarray:
        grid = np.zeros(occupancy_shape(self.grid), np.int8)
        for cls in (STATIC, VEHICLE, VRU):  # later classes drawn over earlier ones
            polys = [self._to_px(s.corners) for s in states if s.cls == cls]
            if polys:
                cv2.fillPoly(grid, polys, CLASS_VALUES[cls], cv2.LINE_8, _SHIFT)
        tall = grid != FREE  # obstacles hide the ground behind them...
        for s in states:  # ...except curbs, too low to hide anything
            if s.kind == "curb":
                mask = np.zeros(occupancy_shape(self.grid), np.uint8)
                cv2.fillPoly(mask, [self._to_px(s.corners)], 1, cv2.LINE_8, _SHIFT)
                tall &= mask == 0
        visible = np.zeros(grid.size, bool)
        tall_flat = tall.ravel()
        bin_width = 2 * math.pi / self.n_bins
        for ang, dist in self._polar:
            # Each occluding cell shadows every angular bin its width subtends, so no ray leaks between cells.
            occ_ang, occ_dist = ang[tall_flat], dist[tall_flat]
            spread = np.ceil(self.grid.resolution / np.maximum(occ_dist, 0.05) / bin_width / 2).astype(np.int64)
            nearest = np.full(self.n_bins, np.inf)
            for off in range(-int(spread.max(initial=0)), int(spread.max(initial=0)) + 1):
                sel = np.abs(off) <= spread
                np.minimum.at(nearest, (occ_ang[sel] + off) % self.n_bins, occ_dist[sel])
            visible |= (dist <= nearest[ang] + self.grid.resolution) & (dist <= VISIBLE_RANGE)
        # Obstacles are known where they are; only free space that no camera sees becomes unknown.
        visible |= grid.ravel() != FREE
        out = np.where(visible.reshape(grid.shape), grid, UNKNOWN).astype(np.int8)
        out[self.ego_cells] = UNKNOWN
        return out


def distance_to_ego(points: np.ndarray, footprint: tuple[float, float, float, float]) -> np.ndarray:
    """Distance from base_link points (N,2) to the ego body rectangle (0 inside)."""
    x0, x1, y0, y1 = footprint
    dx = np.maximum.reduce([x0 - points[:, 0], np.zeros(len(points)), points[:, 0] - x1])
    dy = np.maximum.reduce([y0 - points[:, 1], np.zeros(len(points)), points[:, 1] - y1])
    return np.hypot(dx, dy)


def footprint_samples(corners: np.ndarray, per_edge: int = 4) -> np.ndarray:
    """Points along a footprint's outline, for distances between bodies."""
    pts = [corners[i] + (corners[(i + 1) % 4] - corners[i]) * k / per_edge for i in range(4) for k in range(per_edge)]
    return np.array(pts)


def object_distance(state: ActorState, footprint: tuple[float, float, float, float]) -> float:
    return float(distance_to_ego(footprint_samples(state.corners), footprint).min())


def object_list(states: list[ActorState], grid: BevGrid) -> list[dict]:
    """Objects whose centre lies in the BEV grid, as /ground_truth/objects markers expect."""
    out = []
    for s in states:
        if not (grid.x_min <= s.x <= grid.x_max and grid.y_min <= s.y <= grid.y_max):
            continue
        top = max(p.z0 + p.height for p in s.actor.parts)
        hl, hw = s.actor.footprint_half
        out.append({"class": s.kind, "id": s.actor.id, "x": s.x, "y": s.y, "z": top / 2, "yaw": s.yaw,
                    "length": 2 * hl, "width": 2 * hw, "height": top})
    return out


def audio_sources(world: World, t: float, ego_pose: tuple[float, float, float]) -> list[dict]:
    """Sound events active at `t`: class, source actor id and the source position in base_link."""
    ex, ey, eyaw = ego_pose
    c, s = math.cos(eyaw), math.sin(eyaw)
    out = []
    for kind, start, end, actor_id in world.audio_events:
        if start <= t <= end:
            ax, ay, _ = world.actor(actor_id).pose(t)
            dx, dy = ax - ex, ay - ey
            out.append({"class": kind, "id": actor_id, "x": c * dx + s * dy, "y": -s * dx + c * dy, "z": 1.0})
    return out
