"""BEV projection as a PyTorch op: `edge::bev_pool` over a CSR table, with autograd and references.

out[b, r, :] = sum_k weight[k] * depth[b, depth_idx[k]] (depth mode) * feat[b, src_idx[k], :] over the pairs
of row r, accumulated in fp32, returned in the features' dtype (fp16 or fp32).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from edge.kernels import _ext, checks
from edge.kernels.bev_table import BevTable

_EMPTY_I32 = torch.zeros(0, dtype=torch.int32)


def _check(feat: Tensor, depth: Optional[Tensor], offsets: Tensor, src_idx: Tensor, depth_idx: Tensor,
           weight: Tensor, n_src: int) -> None:
    checks.tensor("features", feat, dtypes=checks.FLOAT_TYPES, ndim=3)
    checks.supported_device("features", feat)
    dev = feat.device
    for name, t in (("offsets", offsets), ("src_idx", src_idx), ("depth_idx", depth_idx)):
        checks.tensor(name, t, dtypes=(torch.int32,), ndim=1, device=dev)
    checks.tensor("weight", weight, dtypes=(torch.float32,), ndim=1, device=dev)
    if offsets.numel() < 1:
        raise ValueError("offsets must have length rows + 1 >= 1")
    checks.same("weight", weight.numel(), src_idx.numel(), "length")
    checks.same("features", feat.shape[1], n_src, "number of sources (dim 1)")
    if depth is not None:
        checks.tensor("depth", depth, dtypes=(feat.dtype,), ndim=2, device=dev)
        checks.same("depth", depth.shape[0], feat.shape[0], "batch size")
        checks.same("depth_idx", depth_idx.numel(), src_idx.numel(), "length")


def _launch(kernel: str, args: tuple, like: Tensor, op: str) -> None:
    """Run a table kernel on `like`'s device: CUDA on its current stream with the index-error flag read back,
    or the threaded CPU kernel (which raises on bad indices itself)."""
    if like.device.type == "cuda":
        flag = torch.zeros(1, dtype=torch.int32, device=like.device)
        getattr(_ext.cuda(), kernel)(*args, _ext.addr(flag), _ext.stream_of(like))
        _ext.raise_if_flagged(flag, op)
    else:
        getattr(_ext.cpu, kernel)(*args, _ext.n_threads())


def _run(feat: Tensor, depth: Optional[Tensor], offsets: Tensor, src_idx: Tensor, depth_idx: Tensor,
         weight: Tensor) -> Tensor:
    feat, offsets, src_idx, weight = feat.contiguous(), offsets.contiguous(), src_idx.contiguous(), weight.contiguous()
    depth = None if depth is None else depth.contiguous()
    depth_idx = depth_idx.contiguous()
    b, n_src, c = feat.shape
    n_rows, nnz = offsets.numel() - 1, src_idx.numel()
    n_depth = 0 if depth is None else depth.shape[1]
    out = torch.empty((b, n_rows, c), dtype=feat.dtype, device=feat.device)
    args = (_ext.addr(feat), _ext.addr(depth), _ext.addr(offsets), _ext.addr(src_idx),
            _ext.addr(depth_idx) if depth is not None else 0, _ext.addr(weight), _ext.addr(out),
            _ext.dtype_code(feat), b, n_rows, c, n_src, n_depth, nnz)
    _launch("bev_pool", args, feat, "bev_pool")
    return out


@torch.library.custom_op("edge::bev_pool", mutates_args=(), device_types=("cpu", "cuda"))
def bev_pool(feat: Tensor, depth: Optional[Tensor], offsets: Tensor, src_idx: Tensor, depth_idx: Tensor,
             weight: Tensor, t_offsets: Tensor, t_idx: Tensor, t_depth_idx: Tensor, t_weight: Tensor) -> Tensor:
    """CSR pooling (B, n_src, C) -> (B, rows, C). The transposed table (t_*) serves the backward pass."""
    _check(feat, depth, offsets, src_idx, depth_idx, weight, t_offsets.numel() - 1)
    return _run(feat, depth, offsets, src_idx, depth_idx, weight)


@bev_pool.register_fake
def _bev_pool_fake(feat, depth, offsets, src_idx, depth_idx, weight, t_offsets, t_idx, t_depth_idx, t_weight):
    torch._check(feat.dim() == 3, lambda: "features must be (B, n_src, C)")
    torch._check(feat.shape[1] == t_offsets.shape[0] - 1, lambda: "features dim 1 must equal the table's sources")
    return feat.new_empty((feat.shape[0], offsets.shape[0] - 1, feat.shape[2]))


@torch.library.custom_op("edge::bev_depth_pair_grad", mutates_args=(), device_types=("cpu", "cuda"))
def bev_depth_pair_grad(feat: Tensor, grad_out: Tensor, offsets: Tensor, src_idx: Tensor, weight: Tensor) -> Tensor:
    """Per pair k: weight[k] * <feat[b, src_idx[k]], grad_out[b, row(k)]>, fp32 (B, nnz)."""
    _check(feat, None, offsets, src_idx, _EMPTY_I32.to(feat.device), weight, feat.shape[1])
    checks.tensor("grad_out", grad_out, dtypes=(feat.dtype,), ndim=3, device=feat.device)
    feat, grad_out = feat.contiguous(), grad_out.contiguous()
    b, n_src, c = feat.shape
    n_rows, nnz = offsets.numel() - 1, src_idx.numel()
    checks.same("grad_out", grad_out.shape[1], n_rows, "rows")
    pair = torch.zeros((b, nnz), dtype=torch.float32, device=feat.device)
    args = (_ext.addr(feat), _ext.addr(grad_out), _ext.addr(offsets.contiguous()), _ext.addr(src_idx.contiguous()),
            _ext.addr(weight.contiguous()), _ext.addr(pair), _ext.dtype_code(feat), b, n_rows, c, n_src, nnz)
    _launch("bev_depth_grad", args, feat, "bev_depth_pair_grad")
    return pair


@bev_depth_pair_grad.register_fake
def _pair_grad_fake(feat, grad_out, offsets, src_idx, weight):
    return feat.new_empty((feat.shape[0], src_idx.shape[0]), dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*[t for t in inputs if t is not None])
    ctx.has_depth = inputs[1] is not None


def _backward(ctx, grad):
    saved = list(ctx.saved_tensors)
    feat = saved.pop(0)
    depth = saved.pop(0) if ctx.has_depth else None
    offsets, src_idx, depth_idx, weight, t_offsets, t_idx, t_depth_idx, t_weight = saved
    grad = grad.to(feat.dtype).contiguous()
    g_feat = g_depth = None
    if ctx.needs_input_grad[0]:
        # d out / d feat is the transposed table: the same kernel over (t_*), its transpose being the original.
        g_feat = bev_pool(grad, depth, t_offsets, t_idx, t_depth_idx, t_weight, offsets, src_idx, depth_idx, weight)
    if depth is not None and ctx.needs_input_grad[1]:
        pair = bev_depth_pair_grad(feat, grad, offsets, src_idx, weight)
        g = torch.zeros(depth.shape, dtype=torch.float32, device=depth.device)
        g_depth = g.index_add(1, depth_idx.long(), pair).to(depth.dtype)
    return g_feat, g_depth, None, None, None, None, None, None, None, None


bev_pool.register_autograd(_backward, setup_context=_setup_context)


def bev_pool_reference(feat: Tensor, depth: Optional[Tensor], offsets: Tensor, src_idx: Tensor, depth_idx: Tensor,
                       weight: Tensor, *_transposed: Tensor) -> Tensor:
    """Pure-PyTorch form from standard ops (Gather, Mul, ScatterND-add): the test reference and the ONNX form.

    The row of each pair is rebuilt from the offsets by a scatter of ones and a cumulative sum, which stays
    a constant subgraph when the table is a module buffer (ONNX Runtime folds it at load time).
    """
    nnz, n_rows = src_idx.shape[0], offsets.shape[0] - 1
    marks = torch.zeros(nnz + 1, dtype=torch.int64, device=feat.device)
    marks = marks.index_add(0, offsets[1:].long(), torch.ones(n_rows, dtype=torch.int64, device=feat.device))
    row = torch.cumsum(marks[:nnz], 0)
    w = weight[None, :]
    if depth is not None:
        w = w * depth.float().index_select(1, depth_idx.long())
    pairs = feat.float().index_select(1, src_idx.long()) * w[..., None]
    out = torch.zeros((feat.shape[0], n_rows, feat.shape[2]), dtype=torch.float32, device=feat.device)
    return out.index_add(1, row, pairs).to(feat.dtype)


def bev_project(features: Tensor, table: BevTable, depth: Optional[Tensor] = None) -> Tensor:
    """Project per-camera features into the BEV grid of `table`.

    features: (B, n_cams, Hf, Wf, C) channels-last (or already flat (B, n_cams*Hf*Wf, C)), fp16 or fp32.
    depth: depth mode only, (B, n_cams, D, Hf, Wf) probabilities (or flat (B, n_cams*D*Hf*Wf)).
    Returns (B, nx, ny, C), or (B, n_heights, nx, ny, C) for a per-height table; permute to (B, C, nx, ny)
    for convolutions.
    """
    spec = table.spec
    if spec.mode == "depth" and depth is None:
        raise ValueError("bev_project: this table is in depth mode and needs a depth distribution")
    if spec.mode != "depth" and depth is not None:
        raise ValueError(f"bev_project: a {spec.mode!r} table takes no depth distribution")
    checks.tensor("features", features, dtypes=checks.FLOAT_TYPES)
    b = features.shape[0]
    feat = features.reshape(b, -1, features.shape[-1]) if features.dim() == 5 else features
    if feat.dim() != 3:
        raise ValueError(f"bev_project: features must be (B, cams, H, W, C) or (B, S, C), got {tuple(features.shape)}")
    if depth is not None:
        depth = depth.reshape(b, -1)
        checks.same("depth", depth.shape[1], table.n_depth, "number of depth entries (cams * D * Hf * Wf)")
    t = table.to(feat.device)
    di = t.depth_idx if depth is not None else t.depth_idx[:0]
    tdi = t.t_depth_idx if depth is not None else t.t_depth_idx[:0]
    out = torch.ops.edge.bev_pool(feat, depth, t.offsets, t.src_idx, di, t.weight, t.t_offsets, t.t_idx, tdi, t.t_weight)
    g = spec.grid
    if spec.per_height:
        return out.reshape(b, len(spec.heights), g.nx, g.ny, feat.shape[-1])
    return out.reshape(b, g.nx, g.ny, feat.shape[-1])


class BevProjector(torch.nn.Module):
    """A module holding one table as buffers, so it moves with .to() and exports (torch.export, ONNX)."""

    def __init__(self, table: BevTable) -> None:
        super().__init__()
        self.spec = table.spec
        self.n_depth = table.n_depth
        for name in BevTable.TENSORS:
            self.register_buffer(name, getattr(table, name).clone(), persistent=False)

    def forward(self, features: Tensor, depth: Optional[Tensor] = None) -> Tensor:
        b, c = features.shape[0], features.shape[-1]
        feat = features.reshape(b, -1, c)
        if depth is not None:
            depth = depth.reshape(b, -1)
        di = self.depth_idx if depth is not None else self.depth_idx[:0]
        tdi = self.t_depth_idx if depth is not None else self.t_depth_idx[:0]
        out = torch.ops.edge.bev_pool(feat, depth, self.offsets, self.src_idx, di, self.weight, self.t_offsets,
                                      self.t_idx, tdi, self.t_weight)
        g = self.spec.grid
        if self.spec.per_height:
            return out.reshape(b, len(self.spec.heights), g.nx, g.ny, c)
        return out.reshape(b, g.nx, g.ny, c)
