"""Ultrasonic range readings rasterised into BEV channels: `edge::ultrasonic_raster`.

Per sensor and cell (centre p, distance d from the sensor, inside the beam |bearing - yaw| <= beam/2 and
d <= max_range): a reading r gives occupied where |d - r| <= arc_thickness / 2, free where
min_range <= d < r - arc_thickness / 2, unknown beyond the echo and in the blind zone d < min_range.
Special readings (REP-117): +inf (or r > max_range) = no echo, free over [min_range, max_range];
-inf = object closer than min_range, occupied over d <= min_range; NaN = invalid, the sensor says nothing.
A finite r < min_range is clamped to min_range. Outputs are one-hot channels (occupied, free, unknown);
fused over sensors, occupied wins over free. Geometry is evaluated in float64 everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

from edge.kernels import _ext, checks
from edge.kernels.grid import BevGrid

SENSOR_FIELDS = ("x", "y", "yaw", "beam_width", "min_range", "max_range")


def sensor_table(sensors: Iterable[object]) -> Tensor:
    """(S, 6) float32 [x, y, yaw, beam_width, min_range, max_range] from rig sensor objects
    (attributes position (x, y, z), yaw, beam_width, min_range, max_range)."""
    rows = []
    for s in sensors:
        pos = getattr(s, "position")
        rows.append([float(pos[0]), float(pos[1]), float(s.yaw), float(s.beam_width), float(s.min_range),
                     float(s.max_range)])
    return torch.tensor(np.asarray(rows, dtype=np.float32).reshape(-1, 6))


def _check(sensors: Tensor, ranges: Tensor, nx: int, ny: int, resolution: float) -> None:
    checks.tensor("sensors", sensors, dtypes=(torch.float32,), ndim=2)
    checks.supported_device("sensors", sensors)
    checks.tensor("ranges", ranges, dtypes=(torch.float32,), ndim=2, device=sensors.device)
    checks.same("sensors", sensors.shape[1], 6, "columns (x, y, yaw, beam_width, min_range, max_range)")
    checks.same("ranges", ranges.shape[1], sensors.shape[0], "number of sensors (dim 1)")
    if nx < 0 or ny < 0 or not resolution > 0:
        raise ValueError(f"ultrasonic_raster: bad grid nx={nx} ny={ny} resolution={resolution}")
    if sensors.numel() and not bool(torch.isfinite(sensors).all()):
        raise ValueError("ultrasonic_raster: sensor geometry must be finite")


@torch.library.custom_op("edge::ultrasonic_raster", mutates_args=(), device_types=("cpu", "cuda"))
def ultrasonic_raster_op(sensors: Tensor, ranges: Tensor, x_min: float, y_min: float, nx: int, ny: int,
                         resolution: float, arc_thickness: float, per_sensor: bool) -> Tensor:
    """(S, 6) sensors, (B, S) ranges -> (B, 3, nx, ny), or (B, S, 3, nx, ny) with per_sensor."""
    _check(sensors, ranges, nx, ny, resolution)
    cols = sensors.t().contiguous()  # (6, S): one contiguous array per field
    ranges = ranges.contiguous()
    b, s = ranges.shape
    shape = (b, s, 3, nx, ny) if per_sensor else (b, 3, nx, ny)
    out = torch.empty(shape, dtype=torch.float32, device=ranges.device)
    ptrs = [_ext.addr(cols[i]) for i in range(6)] if s else [0] * 6
    args = (*ptrs, _ext.addr(ranges), _ext.addr(out), b, s, nx, ny, float(x_min), float(y_min), float(resolution),
            float(arc_thickness), bool(per_sensor))
    if out.numel() == 0:
        return out
    if ranges.device.type == "cuda":
        _ext.cuda().ultrasonic_raster(*args, _ext.stream_of(ranges))
    else:
        _ext.cpu.ultrasonic_raster(*args, _ext.n_threads())
    return out


@ultrasonic_raster_op.register_fake
def _fake(sensors, ranges, x_min, y_min, nx, ny, resolution, arc_thickness, per_sensor):
    b, s = ranges.shape
    shape = (b, s, 3, nx, ny) if per_sensor else (b, 3, nx, ny)
    return ranges.new_empty(shape)


def ultrasonic_raster(ranges: Tensor, sensors: Tensor, grid: BevGrid, arc_thickness: float = 0.2,
                      per_sensor: bool = False) -> Tensor:
    """Rasterise (B, S) ranges (metres; +inf no echo, -inf too close, NaN invalid) of the (S, 6) sensor table."""
    return torch.ops.edge.ultrasonic_raster(sensors, ranges, grid.x_min, grid.y_min, grid.nx, grid.ny,
                                            grid.resolution, arc_thickness, per_sensor)


def ultrasonic_raster_reference(sensors: Tensor, ranges: Tensor, x_min: float, y_min: float, nx: int, ny: int,
                                resolution: float, arc_thickness: float, per_sensor: bool,
                                dtype: torch.dtype = torch.float64) -> Tensor:
    """Pure-PyTorch form, elementwise ops only (also the ONNX form, there with dtype float32)."""
    dev = ranges.device
    sx, sy, yaw, beam, rmin, rmax = (sensors[:, i].to(dtype)[None, :, None, None] for i in range(6))
    r = ranges.to(dtype)[:, :, None, None]
    px = (x_min + (torch.arange(nx, device=dev, dtype=dtype) + 0.5) * resolution)[None, None, :, None]
    py = (y_min + (torch.arange(ny, device=dev, dtype=dtype) + 0.5) * resolution)[None, None, None, :]
    dx, dy = px - sx, py - sy
    d2 = dx * dx + dy * dy
    d = torch.sqrt(d2)
    half = torch.clamp(beam * 0.5, max=torch.pi)
    inside = (d2 <= rmax * rmax) & (dx * torch.cos(yaw) + dy * torch.sin(yaw) >= d * torch.cos(half))
    nan = torch.isnan(r)
    neg_inf = torch.isneginf(r)
    no_echo = r > rmax
    rc = torch.maximum(r, rmin)
    ht = arc_thickness * 0.5
    echo = ~nan & ~neg_inf & ~no_echo
    occ = inside & ((neg_inf & (d <= rmin)) | (echo & (torch.abs(d - rc) <= ht)))
    fre = inside & ~occ & (((no_echo & ~nan) & (d >= rmin)) | (echo & (d < rc - ht) & (d >= rmin)))
    if per_sensor:
        unk = ~occ & ~fre
        return torch.stack([occ, fre, unk], dim=2).float()
    o = occ.any(dim=1)
    f = fre.any(dim=1) & ~o
    return torch.stack([o, f, ~o & ~f], dim=1).float()
