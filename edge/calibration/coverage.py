"""What the views covered: the spread check that refuses one-corner view sets before solving, the field-of-view
coverage reported in the summary, and the coverage picture (PNG) a user looks at to see where to add views."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from edge.calibration.boards import Detection
from edge.calibration.errors import PoorCoverageError

REGION_NAMES = (("top-left", "top", "top-right"), ("left", "centre", "right"),
                ("bottom-left", "bottom", "bottom-right"))
MIN_REGIONS = 5  # of the nine; fewer leaves the distortion unconstrained over most of the image


def regions_hit(detections: Sequence[Detection], width: int, height: int) -> np.ndarray:
    """(3, 3) bool: which ninths of the image hold at least one detected corner."""
    hit = np.zeros((3, 3), dtype=bool)
    for d in detections:
        col = np.clip((d.corners[:, 0] * 3 // width).astype(int), 0, 2)
        row = np.clip((d.corners[:, 1] * 3 // height).astype(int), 0, 2)
        hit[row, col] = True
    return hit


def missing_regions(hit: np.ndarray) -> list[str]:
    return [REGION_NAMES[r][c] for r in range(3) for c in range(3) if not hit[r, c]]


def check_spread(detections: Sequence[Detection], width: int, height: int) -> None:
    """Refuse view sets whose corners stay in a few ninths of the image: the lens model would be extrapolated."""
    hit = regions_hit(detections, width, height)
    if hit.sum() < MIN_REGIONS:
        seen = [REGION_NAMES[r][c] for r in range(3) for c in range(3) if hit[r, c]]
        raise PoorCoverageError(
            f"the board was seen only in the {', '.join(seen) or 'no'} part(s) of the image ({int(hit.sum())} of 9 "
            f"regions; at least {MIN_REGIONS} needed); take views with the board in the "
            f"{', '.join(missing_regions(hit))} of the image, near the edges too, then run again"
        )


@dataclass(frozen=True)
class Coverage:
    """Coverage figures of the summary."""

    cell_fraction: float  # fraction of the image cells (inside the usable field) holding corners
    regions_missing: list[str]
    max_angle_deg: float  # largest off-axis angle of any detected corner under the solved model
    angle_fraction: float  # fraction of (off-axis ring x azimuth sector) bins up to `angle_limit_deg` covered
    angle_limit_deg: float


def measure(points: np.ndarray, rays: np.ndarray, width: int, height: int, usable: np.ndarray,
            angle_limit_deg: float, grid: tuple[int, int] = (10, 8)) -> Coverage:
    """`points` (N, 2) pixels of every used corner, `rays` their unit rays; `usable` (rows, cols) marks the cells
    the lens can see at all (cells outside a fisheye's image circle do not count against coverage)."""
    gx, gy = grid
    cells = np.zeros((gy, gx), dtype=bool)
    cx = np.clip((points[:, 0] * gx // width).astype(int), 0, gx - 1)
    cy = np.clip((points[:, 1] * gy // height).astype(int), 0, gy - 1)
    cells[cy, cx] = True
    cell_fraction = float((cells & usable).sum() / max(usable.sum(), 1))
    theta = np.degrees(np.arctan2(np.hypot(rays[:, 0], rays[:, 1]), rays[:, 2]))
    phi = np.arctan2(rays[:, 1], rays[:, 0])
    rings, sectors = max(1, int(math.ceil(angle_limit_deg / 15.0))), 8
    ring = np.clip((theta / angle_limit_deg * rings).astype(int), 0, rings)
    sector = ((phi + math.pi) / (2 * math.pi) * sectors).astype(int) % sectors
    bins = np.zeros((rings, sectors), dtype=bool)
    inside = ring < rings
    bins[ring[inside], sector[inside]] = True
    bins[0, :] = bins[0, :].any()  # the central ring is small: one corner anywhere in it covers it
    hit = np.zeros((3, 3), dtype=bool)
    hit[np.clip((points[:, 1] * 3 // height).astype(int), 0, 2), np.clip((points[:, 0] * 3 // width).astype(int), 0, 2)] = True
    return Coverage(cell_fraction, missing_regions(hit), float(theta.max(initial=0.0)), float(bins.mean()),
                    angle_limit_deg)


def usable_cells(unproject_ok: np.ndarray, grid: tuple[int, int] = (10, 8)) -> np.ndarray:
    """(rows, cols) cells whose centre the lens sees (from a per-cell-centre validity array)."""
    return unproject_ok.reshape(grid[1], grid[0])


def cell_centres(width: int, height: int, grid: tuple[int, int] = (10, 8)) -> np.ndarray:
    gx, gy = grid
    v, u = np.mgrid[0:gy, 0:gx].astype(np.float64)
    return np.stack([(u.ravel() + 0.5) * width / gx, (v.ravel() + 0.5) * height / gy], axis=1)


def picture(path: Path, width: int, height: int, views: Sequence[tuple[str, np.ndarray, np.ndarray, bool]],
            title: str, image_circle: np.ndarray | None = None) -> None:
    """Write the coverage picture: every corner of every view, coloured by its reprojection error (green under
    0.25 px, yellow to 1 px, red beyond), views left out as grey crosses, the 3x3 regions and a title line.
    `views`: (name, corners (N,2), errors (N,) px, used)."""
    img = np.full((height, width, 3), 30, dtype=np.uint8)
    if image_circle is not None:  # the usable field of a fisheye, shaded
        img[image_circle] = (55, 55, 55)
    for k in (1, 2):
        cv2.line(img, (k * width // 3, 0), (k * width // 3, height - 1), (90, 90, 90), 1)
        cv2.line(img, (0, k * height // 3), (width - 1, k * height // 3), (90, 90, 90), 1)
    for _, corners, errors, used in views:
        for (u, v), e in zip(corners, errors):
            p = (int(round(u)), int(round(v)))
            if not used:
                cv2.drawMarker(img, p, (140, 140, 140), cv2.MARKER_TILTED_CROSS, 5, 1)
                continue
            colour = (80, 200, 80) if e < 0.25 else (60, 210, 230) if e < 1.0 else (60, 60, 230)
            cv2.circle(img, p, 2, colour, -1, lineType=cv2.LINE_AA)
    scale = max(0.4, width / 1600)
    for i, line in enumerate(title.split("\n")):
        cv2.putText(img, line, (8, int(18 + i * 22 * scale / 0.5)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                    1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"cannot write {path}")
