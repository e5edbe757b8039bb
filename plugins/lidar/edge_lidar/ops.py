"""The pillar scatter as a PyTorch op: `torch.ops.edge_lidar.scatter_pillars`, its fake kernel and its reference.

points (N, 4) float32 x, y, z, intensity (metres, in the grid's frame) -> (4, nx, ny) float32 per BEV cell: the
number of points, the highest point above z_min, their mean height above z_min and their mean intensity (0 in empty
cells). A point counts when all four values are finite, it lies in the grid and z_min <= z < z_max. The cell is
floor((x - x_min) / resolution), floor((y - y_min) / resolution) in float32, as the BEV grid of the core lays cells
out (edge.kernels.grid.BevGrid: i along x, j along y).

The schema and the CPU / CUDA kernels are C++ (csrc/, registered by loading edge_lidar._C); the fake kernel
(torch.compile, torch.export) and the reference are here. The reference uses only standard ops (Scatter with add
and max reductions), so it is also the op's ONNX form (edge_lidar.onnx_form).
"""

from __future__ import annotations

import torch
from torch import Tensor

from edge.kernels.grid import BevGrid

from edge_lidar import _C  # noqa: F401  (loading the library registers the op's schema and kernels)

CHANNELS = ("count", "max_height", "mean_height", "mean_intensity")


@torch.library.register_fake("edge_lidar::scatter_pillars")
def _scatter_pillars_fake(points: Tensor, x_min: float, y_min: float, resolution: float, nx: int, ny: int,
                          z_min: float, z_max: float) -> Tensor:
    torch._check(points.dim() == 2 and points.shape[1] == 4, lambda: "points must be (N, 4)")
    torch._check(points.dtype == torch.float32, lambda: "points must be float32")
    return points.new_empty((len(CHANNELS), nx, ny))


def scatter_pillars_reference(points: Tensor, x_min: float, y_min: float, resolution: float, nx: int, ny: int,
                              z_min: float, z_max: float) -> Tensor:
    """The op from standard ops: every point is scattered, those that do not count into one extra cell that is
    cut off at the end, so the graph has no data-dependent shape (ONNX, TensorRT)."""
    n_cells = nx * ny
    x, y, z, intensity = points.unbind(1)
    fi = torch.floor((x - x_min) / resolution)
    fj = torch.floor((y - y_min) / resolution)
    ok = (torch.isfinite(points).all(1) & (z >= z_min) & (z < z_max)
          & (fi >= 0) & (fi < nx) & (fj >= 0) & (fj < ny))
    cell = torch.where(ok, fi * ny + fj, torch.full_like(fi, float(n_cells))).long()
    height = torch.where(ok, z - z_min, torch.zeros_like(z))
    intensity = torch.where(ok, intensity, torch.zeros_like(intensity))
    zeros = points.new_zeros(n_cells + 1)
    count = zeros.index_add(0, cell, torch.ones_like(z))
    sum_h = zeros.index_add(0, cell, height)
    sum_i = zeros.index_add(0, cell, intensity)
    max_h = zeros.scatter_reduce(0, cell, height, "amax", include_self=True)
    denom = torch.clamp(count, min=1.0)
    out = torch.stack([count, max_h, sum_h / denom, sum_i / denom])
    return out[:, :n_cells].reshape(len(CHANNELS), nx, ny)


def scatter_pillars(points: Tensor, grid: BevGrid, z_range: tuple[float, float]) -> Tensor:
    """The op on a BEV grid of the core: (N, 4) points in the grid's frame -> (4, nx, ny)."""
    return torch.ops.edge_lidar.scatter_pillars(points, grid.x_min, grid.y_min, grid.resolution, grid.nx, grid.ny,
                                                z_range[0], z_range[1])
