"""Camera image synthesis from the rig's own camera models.

Geometry is exact where it matters: the ground is sampled per pixel through the camera's unprojection (a
ground point lands where the model projects it), and every box face is split into small quads whose corners
are projected with the same model and filled with OpenCV, far to near. Lighting changes with the daylight level;
at night headlights light the scene ahead, noise grows, and a low sun adds glare to the cameras that face it.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import cv2
import numpy as np

from edge.drives.world import Actor, Part, World
from edge.sensors.camera_models import CameraBase

GROUND_RES = 0.04  # metres per ground-texture pixel
GROUND_RANGE = 28.0  # ground beyond this distance fades into haze
TILE_LENGTH = 100.0
TILE_MARGIN = 35.0
TILE_HALF_WIDTH = 20.0
SUBDIV = 6  # quads per face edge
SHIFT = 4  # fixed-point bits for sub-pixel polygon filling

# Faces of a unit box: corner indices (counter-clockwise seen from outside) and outward normals.
_BOX_FACES = np.array([[1, 2, 6, 5], [3, 0, 4, 7], [0, 1, 5, 4], [2, 3, 7, 6], [4, 5, 6, 7]])
_BOX_NORMALS = np.array([[1, 0, 0], [-1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
_UNIT_CORNERS = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0], [-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]],
                         dtype=np.float64) * np.array([0.5, 0.5, 1.0])


@dataclass(frozen=True)
class Lighting:
    """Scene lighting at one instant."""

    daylight: float  # 1 day .. 0 night
    sun_base: np.ndarray  # unit vector toward the sun in base_link
    glare: bool  # low sun that can blind a camera facing it

    @property
    def ambient(self) -> float:
        return 0.06 + 0.6 * self.daylight

    @property
    def noise_sigma(self) -> float:
        return 1.5 + 9.0 * (1.0 - self.daylight) ** 1.5


def headlight_gain(points_base: np.ndarray, daylight: float) -> np.ndarray:
    """Extra illumination from the ego's headlights (and a dim red-free tail glow) at base_link points."""
    if daylight >= 0.95:
        return np.zeros(len(points_base))
    return (1.0 - daylight) * headlight_pattern(points_base)


def headlight_pattern(points_base: np.ndarray) -> np.ndarray:
    """Headlight beam (and tail glow) intensity at base_link points, at full darkness."""
    x, y = points_base[:, 0] - 3.6, points_base[:, 1]
    ang = np.abs(np.arctan2(y, np.maximum(x, 1e-3)))
    cone = np.clip(1.0 - ang / math.radians(38.0), 0.0, 1.0) * (x > 0)
    fall = 1.0 / (1.0 + (np.maximum(x, 0) / 9.0) ** 2)
    rear = 0.12 * (points_base[:, 0] < -1.0) / (1.0 + ((points_base[:, 0] + 1.0) / 2.0) ** 2)
    return 1.1 * cone * fall + rear


def box_faces(parts: list[Part], x: float, y: float, yaw: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World-frame faces of an actor: corners (F,4,3), outward normals (F,3), albedo (F,3)."""
    c, s = math.cos(yaw), math.sin(yaw)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    corners, normals, colors = [], [], []
    for p in parts:
        local = _UNIT_CORNERS * np.array([p.length, p.width, p.height]) + np.array([p.cx, p.cy, p.z0])
        world = local @ rot.T + np.array([x, y, 0.0])
        corners.append(world[_BOX_FACES])
        normals.append(_BOX_NORMALS @ rot.T)
        colors.append(np.tile(np.array(p.color, dtype=np.float64), (5, 1)))
    return np.concatenate(corners), np.concatenate(normals), np.concatenate(colors)


def _subdivide(faces: np.ndarray, n: int = SUBDIV) -> np.ndarray:
    """(F,4,3) quads -> (F, n*n, 4, 3) sub-quads by bilinear interpolation of the corners."""
    s = np.linspace(0.0, 1.0, n + 1)
    a, b, c, d = (faces[:, i][:, None, None, :] for i in range(4))
    u = s[None, :, None, None]
    v = s[None, None, :, None]
    grid = (1 - u) * (1 - v) * a + u * (1 - v) * b + u * v * c + (1 - u) * v * d  # (F, n+1, n+1, 3)
    q = np.stack([grid[:, :-1, :-1], grid[:, 1:, :-1], grid[:, 1:, 1:], grid[:, :-1, 1:]], axis=3)
    return q.reshape(len(faces), n * n, 4, 3)


class GroundTexture:
    """The painted ground of the world, built lazily in tiles along x (OpenCV remap needs sources < 32k px)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self._tiles: dict[int, tuple[np.ndarray, float, float]] = {}

    def tile_for(self, x: float) -> tuple[np.ndarray, float, float]:
        """(image, x0, y0) of the tile that covers the ego at x with enough margin for every camera."""
        k = int(math.floor(x / TILE_LENGTH))
        if k not in self._tiles:
            if len(self._tiles) > 2:
                self._tiles.pop(next(iter(self._tiles)))  # oldest first: the ego moves one way
            self._tiles[k] = self._build(k)
        return self._tiles[k]

    def _build(self, k: int) -> tuple[np.ndarray, float, float]:
        x0 = k * TILE_LENGTH - TILE_MARGIN
        y0 = -TILE_HALF_WIDTH
        w = int((TILE_LENGTH + 2 * TILE_MARGIN) / GROUND_RES)
        h = int(2 * TILE_HALF_WIDTH / GROUND_RES)
        rng = np.random.default_rng((self.world.seed, k + 2**20))  # tile index may be negative
        noise = rng.normal(0.0, 9.0, (h // 2, w // 2)).astype(np.float32)
        noise = cv2.resize(cv2.GaussianBlur(noise, (3, 3), 0), (w, h), interpolation=cv2.INTER_LINEAR)
        base = np.array(self.world.ground_color, dtype=np.float32)
        img = np.clip(base[None, None, :] + noise[..., None], 0, 255).astype(np.uint8)
        if self.world.scenario.layout == "street":  # sidewalks beyond the curbs
            for y_a, y_b in ((-20.0, -4.45), (5.45, 20.0)):
                r0, r1 = int((y_a - y0) / GROUND_RES), int((y_b - y0) / GROUND_RES)
                img[r0:r1] = np.clip(img[r0:r1].astype(np.int16) + 45, 0, 255).astype(np.uint8)
        scale = 1.0 / GROUND_RES
        for (ax, ay), (bx, by), width, color in self.world.markings:
            if max(ax, bx) < x0 or min(ax, bx) > x0 + w * GROUND_RES:
                continue
            p0 = (int(round((ax - x0) * scale * 16)), int(round((ay - y0) * scale * 16)))
            p1 = (int(round((bx - x0) * scale * 16)), int(round((by - y0) * scale * 16)))
            cv2.line(img, p0, p1, color, max(1, int(round(width * scale))), cv2.LINE_AA, 4)
        return img, x0, y0


class CameraRenderer:
    """Per-camera precomputation (rays, ground points, sky, the ego's own body) and per-frame drawing."""

    def __init__(self, camera: CameraBase, ego_parts: list[Part]) -> None:
        self.camera = camera
        h, w = camera.height, camera.width
        rays, valid = camera.pixel_rays()
        rays_base = rays.reshape(-1, 3) @ camera.T_base_cam[:3, :3].T
        origin = camera.position
        dz = rays_base[:, 2]
        t = np.where(dz < -1e-6, -origin[2] / np.minimum(dz, -1e-6), np.inf)
        ground = origin[None, :] + t[:, None] * rays_base
        dist = np.hypot(ground[:, 0], ground[:, 1])
        self.valid = valid.reshape(h, w)
        self.ground_mask = (valid.ravel() & (dist < GROUND_RANGE)).reshape(h, w)
        self.gx = np.where(self.ground_mask.ravel(), ground[:, 0], 0.0).reshape(h, w).astype(np.float32)
        self.gy = np.where(self.ground_mask.ravel(), ground[:, 1], 0.0).reshape(h, w).astype(np.float32)
        ground_points = np.stack([ground[:, 0], ground[:, 1], np.zeros(len(ground))], axis=1)
        # The beam pattern on the ground is fixed in this camera; only its strength follows the daylight.
        self.headlight_map = np.where(self.ground_mask, headlight_pattern(ground_points).reshape(h, w), 0.0
                                      ).astype(np.float32)
        elevation = np.arcsin(np.clip(rays_base[:, 2], -1, 1)).reshape(h, w).astype(np.float32)
        self.rays_base = rays_base.reshape(h, w, 3).astype(np.float32)
        # Background (sky above the horizon, haze on ground beyond range) at full daylight; scaled per frame.
        mix = np.clip(elevation / 0.8, 0, 1)[..., None]
        sky = (1 - mix) * np.array([225, 190, 150], np.float32) + mix * np.array([190, 140, 80], np.float32)
        haze = np.broadcast_to(np.array([150, 150, 148], np.float32), sky.shape)
        self.background = np.where((elevation > -0.02)[..., None], sky, haze).astype(np.float32)
        self.background[~self.valid | self.ground_mask] = 0.0
        self.valid3 = np.repeat(self.valid[..., None], 3, axis=2).astype(np.float32)
        # A small bank of sensor-noise fields, drawn once; each frame picks and flips one.
        rng = np.random.default_rng(zlib.crc32(camera.name.encode()))  # str hash() varies per process
        self.noise_bank = [np.repeat(rng.standard_normal((h, w), dtype=np.float32)[..., None], 3, axis=2) * self.valid3
                           for _ in range(3)]
        # The ego body is fixed in this camera: draw it once, reuse its mask and albedo every frame.
        self.ego_layer = np.zeros((h, w, 3), np.float32)
        self.ego_mask = np.zeros((h, w), np.uint8)
        corners, normals, colors = box_faces(ego_parts, 0.0, 0.0, 0.0)
        self._draw_faces(self.ego_layer, corners, normals, colors, np.ones(len(corners)), self.ego_mask)
        self._cache_key = -1.0
        self._gain3 = self._bg = self._ego = np.zeros(0)

    def _lighting_layers(self, light: Lighting) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-pixel ground gain, background and lit ego body for this daylight level (cached, it changes slowly)."""
        key = round(light.daylight, 2)
        if key != self._cache_key:
            beam = 0.0 if light.daylight >= 0.95 else 1.0 - light.daylight
            gain = self.ground_mask * np.float32(light.ambient) + self.headlight_map * np.float32(beam)
            self._gain3 = cv2.merge([gain, gain, gain])
            self._bg = self.background * np.float32(0.04 + 0.96 * light.daylight)
            self._ego = self.ego_layer * np.float32(light.ambient + 0.2 * light.daylight)
            self._cache_key = key
        return self._gain3, self._bg, self._ego

    def _draw_faces(self, img: np.ndarray, corners: np.ndarray, normals: np.ndarray, colors: np.ndarray,
                    gains: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Fill base_link faces far to near; back faces are culled, quads outside the field of view dropped."""
        cam = self.camera
        centre = corners.mean(axis=1)
        to_cam = cam.position[None, :] - centre
        front = (normals * to_cam).sum(axis=1) > 1e-9
        if not front.any():
            return
        corners, colors, gains, centre = corners[front], colors[front], gains[front], centre[front]
        distance = np.linalg.norm(centre - cam.position, axis=1)
        order = np.argsort(-distance)
        corners, colors, gains, distance = corners[order], colors[order], gains[order], distance[order]
        shaded = np.clip(colors * gains[:, None], 0, 255)
        # Fine quads only where the lens bends edges visibly: near faces; far faces are nearly straight.
        subdiv = np.where(distance < 4.0, SUBDIV, np.where(distance < 10.0, 3, 1))
        polys: list[list[np.ndarray]] = [[] for _ in range(len(corners))]
        for n in np.unique(subdiv):
            idx = np.flatnonzero(subdiv == n)
            quads = _subdivide(corners[idx], int(n))  # (F, Q, 4, 3)
            f, q = quads.shape[:2]
            uv, ok = cam.project(cam.base_to_cam(quads.reshape(-1, 3)), within_image=False)
            uv = uv.reshape(f, q, 4, 2)
            ok = ok.reshape(f, q, 4).all(axis=2) & (np.abs(uv) < 4 * max(cam.width, cam.height)).all(axis=(2, 3))
            pts = np.round(np.clip(np.nan_to_num(uv), -1e5, 1e5) * (1 << SHIFT)).astype(np.int32)
            for k, face in enumerate(idx):
                polys[face] = list(pts[k][ok[k]])
        for i, quads_i in enumerate(polys):
            if not quads_i:
                continue
            color = tuple(float(c) for c in shaded[i])
            cv2.fillPoly(img, quads_i, color, cv2.LINE_8, SHIFT)
            if mask is not None:
                cv2.fillPoly(mask, quads_i, 255, cv2.LINE_8, SHIFT)

    def render(self, ground_tile: tuple[np.ndarray, float, float], ego_pose: tuple[float, float, float],
               faces: tuple[np.ndarray, np.ndarray, np.ndarray], light: Lighting, rng: np.random.Generator) -> np.ndarray:
        ex, ey, eyaw = ego_pose
        tile, x0, y0 = ground_tile
        c, s = math.cos(eyaw), math.sin(eyaw)
        map_x = cv2.addWeighted(self.gx, c / GROUND_RES, self.gy, -s / GROUND_RES, (ex - x0) / GROUND_RES)
        map_y = cv2.addWeighted(self.gx, s / GROUND_RES, self.gy, c / GROUND_RES, (ey - y0) / GROUND_RES)
        fixed_xy, fixed_frac = cv2.convertMaps(map_x, map_y, cv2.CV_16SC2)  # fixed-point maps remap faster
        ground = cv2.remap(tile, fixed_xy, fixed_frac, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        gain3, background, ego = self._lighting_layers(light)
        img = cv2.multiply(ground, gain3, dtype=cv2.CV_32F)
        cv2.add(img, background, dst=img)
        # Actors, already in base_link, lit by the sun by day and by headlights at night.
        corners, normals, colors = faces
        if len(corners):
            centres = corners.mean(axis=1)
            sun = np.clip(normals @ light.sun_base, 0, 1) * 0.45 * light.daylight
            gains = light.ambient + sun + headlight_gain(centres, light.daylight)
            self._draw_faces(img, corners, normals, colors, gains)
        cv2.copyTo(ego, self.ego_mask, img)
        if light.glare:
            self._add_glare(img, light)
        noise = self.noise_bank[int(rng.integers(len(self.noise_bank)))]
        flip = int(rng.integers(-1, 2))
        cv2.scaleAdd(cv2.flip(noise, flip), light.noise_sigma, img, dst=img)
        cv2.multiply(img, self.valid3, dst=img)
        np.clip(img, 0, 255, out=img)
        return img.astype(np.uint8)

    def _add_glare(self, img: np.ndarray, light: Lighting) -> None:
        """Bloom around the sun, a veil over the image and a flare streak, for cameras that see the sun."""
        sun_cam = self.camera.T_cam_base[:3, :3] @ light.sun_base
        uv, ok = self.camera.project(sun_cam[None, :], within_image=False)
        if not ok[0]:
            return
        # The bloom is smooth: compute it at a quarter of the resolution and scale it up.
        cos_angle = self.rays_base[::4, ::4] @ light.sun_base.astype(np.float32)
        angle = np.arccos(np.clip(cos_angle, -1, 1))
        bloom = 255.0 * (1.6 / (1.0 + (angle / 0.06) ** 2) + 0.35 * np.exp(-angle / 0.5)) * light.daylight
        bloom = cv2.resize(bloom.astype(np.float32), (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
        img += bloom[..., None] * np.array([0.85, 0.95, 1.0], np.float32)
        centre = np.array([self.camera.width / 2, self.camera.height / 2])
        for k, r in ((-0.6, 14), (-1.2, 22), (-1.7, 9)):
            p = centre + k * (uv[0] - centre)
            if np.isfinite(p).all():
                cv2.circle(img, (int(p[0]), int(p[1])), r, (60.0, 90.0, 110.0), -1, cv2.LINE_AA)


class SceneFaces:
    """Faces of every actor in base_link at any instant: static actors are turned into faces once."""

    def __init__(self, actors: list[Actor]) -> None:
        static = [a for a in actors if not a.moving]
        self.dynamic = [a for a in actors if a.moving]
        parts = [box_faces(a.parts, *a.pose(0.0)) for a in static]
        if parts:
            self.corners = np.concatenate([p[0] for p in parts])
            self.normals = np.concatenate([p[1] for p in parts])
            self.colors = np.concatenate([p[2] for p in parts])
        else:
            self.corners, self.normals, self.colors = np.zeros((0, 4, 3)), np.zeros((0, 3)), np.zeros((0, 3))
        self.centres = self.corners[:, :, :2].mean(axis=1)

    def at(self, t: float, ego_pose: tuple[float, float, float], max_range: float = 28.0
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ex, ey, eyaw = ego_pose
        near = np.hypot(self.centres[:, 0] - ex, self.centres[:, 1] - ey) < max_range
        corners, normals, colors = [self.corners[near]], [self.normals[near]], [self.colors[near]]
        for a in self.dynamic:
            x, y, yaw = a.pose(t)
            if math.hypot(x - ex, y - ey) < max_range:
                c, n, col = box_faces(a.parts, x, y, yaw)
                corners.append(c)
                normals.append(n)
                colors.append(col)
        c, s = math.cos(-eyaw), math.sin(-eyaw)
        rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
        all_c = np.concatenate(corners)
        return (all_c - np.array([ex, ey, 0.0])) @ rot.T, np.concatenate(normals) @ rot.T, np.concatenate(colors)
