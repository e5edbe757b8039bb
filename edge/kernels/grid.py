"""The BEV grid: a square-celled grid centred on base_link (REP-103: x forward, y left, metres).

Cell (i, j) has i along x (i = 0 at x_min, the rear) and j along y (j = 0 at y_min, the right side); its
centre is (x_min + (i + 0.5) * resolution, y_min + (j + 0.5) * resolution). Tensors laid out over the
grid are (..., nx, ny) with the flat cell index i * ny + j.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BevGrid:
    x_min: float = -10.0
    x_max: float = 10.0
    y_min: float = -10.0
    y_max: float = 10.0
    resolution: float = 0.1

    def __post_init__(self) -> None:
        if not self.resolution > 0:
            raise ValueError(f"BevGrid: resolution must be > 0, got {self.resolution}")
        if not (self.x_max > self.x_min and self.y_max > self.y_min):
            raise ValueError(f"BevGrid: empty extent x [{self.x_min}, {self.x_max}] y [{self.y_min}, {self.y_max}]")
        for extent, name in ((self.x_max - self.x_min, "x"), (self.y_max - self.y_min, "y")):
            n = extent / self.resolution
            if abs(n - round(n)) > 1e-6 * max(1.0, n):
                raise ValueError(f"BevGrid: {name} extent {extent} is not a multiple of resolution {self.resolution}")

    @classmethod
    def square(cls, size_m: float, cells: int) -> BevGrid:
        """A size_m x size_m grid of cells x cells centred on base_link (e.g. 20 m, 200 -> 0.1 m cells)."""
        half = size_m / 2.0
        return cls(-half, half, -half, half, size_m / cells)

    @property
    def nx(self) -> int:
        return int(round((self.x_max - self.x_min) / self.resolution))

    @property
    def ny(self) -> int:
        return int(round((self.y_max - self.y_min) / self.resolution))

    @property
    def n_cells(self) -> int:
        return self.nx * self.ny

    def cell_centres(self) -> np.ndarray:
        """(nx, ny, 2) float64 x, y of every cell centre."""
        xs = self.x_min + (np.arange(self.nx) + 0.5) * self.resolution
        ys = self.y_min + (np.arange(self.ny) + 0.5) * self.resolution
        gx, gy = np.meshgrid(xs, ys, indexing="ij")
        return np.stack([gx, gy], axis=-1)

    def as_tuple(self) -> tuple[float, float, float, float, float]:
        return (self.x_min, self.x_max, self.y_min, self.y_max, self.resolution)
