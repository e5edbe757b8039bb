"""Precomputed BEV projection tables (CSR) for a fixed calibration, and their on-disk cache.

For every output row (a BEV cell, or a (height, cell) voxel) the table lists (source index, weight) pairs,
plus a depth index in depth mode; the kernel then gives each row one writer. The transposed table (rows =
sources) is stored as well: the backward pass is the same kernel run over it.

Three modes, all built by projecting 3D points of each cell into every camera with `project` only:
- "ground":  the cell centre on the ground plane z = ground_z, 4 bilinear taps in the feature map.
- "heights": the cell centre at several heights (a uniform-depth ray pulled back per cell), 4 taps each.
- "depth":   like "heights", and each tap is also weighted by the predicted depth probability of the
             bin holding the point's ray distance (LSS / BEVPoolv2 style lifting).
Each valid (camera, height) sample of a row gets weight 1 / (valid samples of that row), so overlapping
cameras are averaged; a tap outside the feature map is dropped (GridSample zeros padding); a row that no
camera sees has no pairs and comes out zero.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from edge.kernels.grid import BevGrid

FORMAT_VERSION = 1
MODES = ("ground", "heights", "depth")


class CameraModel(Protocol):
    name: str
    width: int
    height: int
    T_base_cam: np.ndarray

    def project(self, points_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class TableSpec:
    """Everything besides the cameras that decides a table's content (part of the cache key)."""

    grid: BevGrid
    feat_hw: tuple[int, int]
    mode: str = "ground"
    heights: tuple[float, ...] = (0.0,)
    per_height: bool = False
    depth_bins: tuple[float, float, int] = (1.0, 60.0, 118)  # (d_min, d_max, D) over ray distance, metres

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"TableSpec: mode must be one of {MODES}, got {self.mode!r}")
        if len(self.heights) < 1:
            raise ValueError("TableSpec: at least one height is needed")
        if self.mode == "ground" and len(self.heights) != 1:
            raise ValueError("TableSpec: ground mode uses exactly one height (the ground plane)")
        h, w = self.feat_hw
        if h < 1 or w < 1:
            raise ValueError(f"TableSpec: feature map size must be positive, got {self.feat_hw}")
        d_min, d_max, n = self.depth_bins
        if self.mode == "depth" and not (0 <= d_min < d_max and int(n) >= 1):
            raise ValueError(f"TableSpec: bad depth_bins {self.depth_bins}")

    @property
    def n_rows(self) -> int:
        return self.grid.n_cells * (len(self.heights) if self.per_height else 1)

    @property
    def n_depth_bins(self) -> int:
        return int(self.depth_bins[2]) if self.mode == "depth" else 0


@dataclass
class BevTable:
    """CSR table and its transpose; int32 indices, fp32 weights. Tensors live on one device."""

    spec: TableSpec
    n_cams: int
    offsets: torch.Tensor
    src_idx: torch.Tensor
    depth_idx: torch.Tensor
    weight: torch.Tensor
    t_offsets: torch.Tensor
    t_idx: torch.Tensor
    t_depth_idx: torch.Tensor
    t_weight: torch.Tensor
    key: str = ""
    _by_device: dict = field(default_factory=dict, repr=False, compare=False)

    TENSORS = ("offsets", "src_idx", "depth_idx", "weight", "t_offsets", "t_idx", "t_depth_idx", "t_weight")

    @property
    def n_rows(self) -> int:
        return self.offsets.numel() - 1

    @property
    def n_src(self) -> int:
        return self.t_offsets.numel() - 1

    @property
    def nnz(self) -> int:
        return self.src_idx.numel()

    @property
    def n_depth(self) -> int:
        h, w = self.spec.feat_hw
        return self.n_cams * self.spec.n_depth_bins * h * w

    @property
    def device(self) -> torch.device:
        return self.offsets.device

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, name) for name in self.TENSORS)

    def to(self, device: torch.device | str) -> BevTable:
        """The table on `device`, copied once and remembered (tables are constant)."""
        device = torch.device(device)
        if device == self.device:
            return self
        key = str(device)
        if key not in self._by_device:
            moved = {n: getattr(self, n).to(device) for n in self.TENSORS}
            self._by_device[key] = replace(self, **moved, _by_device={})
        return self._by_device[key]

    def save(self, path: str | os.PathLike) -> None:
        """Write an .npz (no pickle) atomically, so a concurrent reader never sees half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {n: getattr(self, n).cpu().numpy() for n in self.TENSORS}
        meta = json.dumps({"version": FORMAT_VERSION, "key": self.key, "n_cams": self.n_cams, "spec": _spec_dict(self.spec)})
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, meta=np.frombuffer(meta.encode(), dtype=np.uint8), **arrays)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BevTable:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            if meta.get("version") != FORMAT_VERSION:
                raise ValueError(f"{path}: BEV table format {meta.get('version')} != {FORMAT_VERSION}")
            tensors = {n: torch.from_numpy(np.ascontiguousarray(z[n])) for n in cls.TENSORS}
        table = cls(spec=_spec_from_dict(meta["spec"]), n_cams=int(meta["n_cams"]), key=meta["key"], **tensors)
        validate_table(table)
        return table


def _spec_dict(spec: TableSpec) -> dict:
    return {"grid": list(spec.grid.as_tuple()), "feat_hw": list(spec.feat_hw), "mode": spec.mode,
            "heights": list(spec.heights), "per_height": spec.per_height, "depth_bins": list(spec.depth_bins)}


def _spec_from_dict(d: dict) -> TableSpec:
    return TableSpec(grid=BevGrid(*d["grid"]), feat_hw=tuple(d["feat_hw"]), mode=d["mode"],
                     heights=tuple(d["heights"]), per_height=bool(d["per_height"]),
                     depth_bins=(float(d["depth_bins"][0]), float(d["depth_bins"][1]), int(d["depth_bins"][2])))


def validate_table(t: BevTable) -> None:
    """Full check of a table's invariants (used on load and build; the kernels also guard every index)."""
    for name in ("offsets", "src_idx", "depth_idx", "t_offsets", "t_idx", "t_depth_idx"):
        if getattr(t, name).dtype != torch.int32:
            raise ValueError(f"BEV table: {name} must be int32")
    for off, idx, n_src, label in ((t.offsets, t.src_idx, t.n_src, "table"), (t.t_offsets, t.t_idx, t.n_rows, "transpose")):
        if off.numel() < 1 or int(off[0]) != 0 or int(off[-1]) != idx.numel() or bool((off[1:] < off[:-1]).any()):
            raise ValueError(f"BEV {label}: offsets must start at 0, be non-decreasing and end at nnz")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_src):
            raise ValueError(f"BEV {label}: index out of range [0, {n_src})")
    if t.spec.mode == "depth":
        for d in (t.depth_idx, t.t_depth_idx):
            if d.numel() != t.nnz or (d.numel() and (int(d.min()) < 0 or int(d.max()) >= t.n_depth)):
                raise ValueError("BEV table: depth index out of range")


def table_from_pairs(spec: TableSpec, n_cams: int, rows: np.ndarray, src: np.ndarray, weight: np.ndarray,
                     depth: np.ndarray | None, key: str = "") -> BevTable:
    """Sort (row, src, weight[, depth]) pairs into a CSR table and its transpose."""
    h, w = spec.feat_hw
    n_src = n_cams * h * w
    n_rows = spec.n_rows
    rows, src = rows.astype(np.int64), src.astype(np.int64)
    depth = np.full(rows.shape, -1, np.int64) if depth is None else depth.astype(np.int64)

    def csr(major: np.ndarray, minor: np.ndarray, n_major: int) -> tuple[np.ndarray, ...]:
        order = np.lexsort((minor, major))  # deterministic: by major then minor
        counts = np.bincount(major, minlength=n_major)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        return offsets, minor[order].astype(np.int32), depth[order].astype(np.int32), weight[order].astype(np.float32)

    offsets, s_idx, d_idx, wts = csr(rows, src, n_rows)
    t_offsets, t_idx, t_d_idx, t_wts = csr(src, rows, n_src)
    if spec.mode != "depth":
        d_idx, t_d_idx = np.zeros(0, np.int32), np.zeros(0, np.int32)
    as_t = torch.from_numpy
    table = BevTable(spec, n_cams, as_t(offsets), as_t(s_idx), as_t(d_idx), as_t(wts), as_t(t_offsets), as_t(t_idx),
                     as_t(t_d_idx), as_t(t_wts), key=key)
    validate_table(table)
    return table


def _camera_list(cameras: Sequence[CameraModel] | Mapping[str, CameraModel]) -> list[CameraModel]:
    cams = list(cameras.values()) if isinstance(cameras, Mapping) else list(cameras)
    if not cams:
        raise ValueError("BEV table: at least one camera is needed")
    return cams


def build_table(cameras: Sequence[CameraModel] | Mapping[str, CameraModel], spec: TableSpec, key: str = "") -> BevTable:
    """Project every (cell, height) into every camera and collect bilinear taps (see the module docstring).

    Feature index of camera c, feature pixel (v, u): (c * Hf + v) * Wf + u; depth index in depth mode:
    ((c * D + bin) * Hf + v) * Wf + u, bin = floor((|p_cam| - d_min) / (d_max - d_min) * D).
    """
    cams = _camera_list(cameras)
    grid = spec.grid
    hf, wf = spec.feat_hw
    centres = grid.cell_centres().reshape(-1, 2)
    n_cells = centres.shape[0]
    heights = np.asarray(spec.heights, dtype=np.float64)
    d_min, d_max, n_bins = float(spec.depth_bins[0]), float(spec.depth_bins[1]), int(spec.depth_bins[2])
    rows_l, src_l, w_l, dep_l, sample_row_l = [], [], [], [], []
    for zi, z in enumerate(heights):
        pts = np.concatenate([centres, np.full((n_cells, 1), z), np.ones((n_cells, 1))], axis=1)  # (n, 4)
        row_of_cell = np.arange(n_cells) + (zi * n_cells if spec.per_height else 0)
        for c, cam in enumerate(cams):
            T = np.asarray(cam.T_base_cam, dtype=np.float64)
            p_cam = (np.linalg.inv(T) @ pts.T).T[:, :3]
            uv, valid = cam.project(p_cam)
            uv = np.asarray(uv, dtype=np.float64)
            valid = np.asarray(valid, dtype=bool) & np.isfinite(uv).all(axis=1)
            bins = None
            if spec.mode == "depth":
                dist = np.linalg.norm(p_cam, axis=1)
                bins = np.floor((dist - d_min) / (d_max - d_min) * n_bins)
                valid &= (bins >= 0) & (bins < n_bins)
            sel = np.nonzero(valid)[0]
            # Image pixel (centre-at-integer) to feature-map pixel, same convention as GridSample(align_corners=False).
            fu = (uv[sel, 0] + 0.5) * (wf / cam.width) - 0.5
            fv = (uv[sel, 1] + 0.5) * (hf / cam.height) - 0.5
            u0, v0 = np.floor(fu), np.floor(fv)
            au, av = fu - u0, fv - v0
            sample_row_l.append(row_of_cell[sel])
            for du, dv, wt in ((0, 0, (1 - au) * (1 - av)), (1, 0, au * (1 - av)), (0, 1, (1 - au) * av), (1, 1, au * av)):
                uu, vv = (u0 + du).astype(np.int64), (v0 + dv).astype(np.int64)
                ok = (uu >= 0) & (uu < wf) & (vv >= 0) & (vv < hf) & (wt > 0)
                rows_l.append(row_of_cell[sel][ok])
                src_l.append((c * hf + vv[ok]) * wf + uu[ok])
                w_l.append(wt[ok])
                if bins is not None:
                    dep_l.append(((c * n_bins + bins[sel][ok].astype(np.int64)) * hf + vv[ok]) * wf + uu[ok])
    rows = np.concatenate(rows_l) if rows_l else np.zeros(0, np.int64)
    src = np.concatenate(src_l) if src_l else np.zeros(0, np.int64)
    weight = np.concatenate(w_l) if w_l else np.zeros(0)
    # Average over the valid (camera, height) samples of each row.
    n_samples = np.bincount(np.concatenate(sample_row_l), minlength=spec.n_rows).astype(np.float64)
    weight = weight / np.maximum(n_samples[rows], 1.0)
    depth = np.concatenate(dep_l) if spec.mode == "depth" and dep_l else (np.zeros(0, np.int64) if spec.mode == "depth" else None)
    return table_from_pairs(spec, len(cams), rows, src, weight, depth, key=key)


def rig_key(cameras: Sequence[CameraModel] | Mapping[str, CameraModel], spec: TableSpec) -> str:
    """sha256 over the cameras (name, size, extrinsics, and the projection of fixed probe points, so any
    change of intrinsics or model changes the key) and the table spec."""
    h = hashlib.sha256()
    h.update(json.dumps({"version": FORMAT_VERSION, "spec": _spec_dict(spec)}, sort_keys=True).encode())
    rng = np.random.default_rng(12345)
    dirs = rng.normal(size=(256, 3))
    probe = dirs / np.linalg.norm(dirs, axis=1, keepdims=True) * rng.uniform(0.5, 30.0, size=(256, 1))
    for cam in _camera_list(cameras):
        h.update(json.dumps([str(cam.name), int(cam.width), int(cam.height)]).encode())
        h.update(np.round(np.asarray(cam.T_base_cam, dtype=np.float64), 9).tobytes())
        uv, valid = cam.project(probe)
        valid = np.asarray(valid, dtype=bool)
        h.update(valid.tobytes())
        h.update(np.round(np.where(valid[:, None], np.asarray(uv, dtype=np.float64), 0.0), 4).tobytes())
    return h.hexdigest()


def default_cache_dir() -> Path:
    env = os.environ.get("EDGE_CACHE_DIR")
    return Path(env) / "bev" if env else Path.home() / ".cache" / "mpnp-edge" / "bev"


def load_or_build_table(cameras: Sequence[CameraModel] | Mapping[str, CameraModel], spec: TableSpec,
                        cache_dir: str | os.PathLike | None = None) -> BevTable:
    """The table for this rig and spec from the cache, built and stored on a miss (or a corrupt entry)."""
    key = rig_key(cameras, spec)
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = path / f"{key[:32]}.npz"
    if path.exists():
        try:
            table = BevTable.load(path)
            if table.key == key:
                return table
        except (OSError, ValueError, KeyError):
            pass  # stale or damaged entry: rebuild and overwrite
    table = build_table(cameras, spec, key=key)
    table.save(path)
    return table
