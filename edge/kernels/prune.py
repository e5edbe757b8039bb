"""EViT-style token pruning as a PyTorch op: `edge::prune_tokens`.

Scores are given (B, N) or recomputed as the CLS attention row mean_h softmax(q_cls K^T / sqrt(Dh)), so the
encoder can keep its fused attention. The k kept tokens (CLS at index 0 always, when has_cls) keep their
original order; ties go to the lower index and NaN scores rank below every number. With fuse, one more token
is appended: the dropped tokens averaged with weights max(score, 0) (NaN -> 0), zeros if no weight is left
(k = N, or all dropped scores <= 0). Returns (tokens (B, k [+1], C), kept_idx (B, k) int64, scores (B, N) fp32).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from edge.kernels import _ext, checks


class PruneResult(NamedTuple):
    tokens: Tensor
    kept_idx: Tensor
    scores: Tensor


def _check(x: Tensor, scores: Optional[Tensor], q: Optional[Tensor], keys: Optional[Tensor], k: int,
           has_cls: bool) -> None:
    checks.tensor("x", x, dtypes=checks.FLOAT_TYPES, ndim=3)
    checks.supported_device("x", x)
    b, n, _ = x.shape
    if n < 1:
        raise ValueError("prune_tokens: x has no tokens")
    lo = 1
    if not lo <= k <= n:
        raise ValueError(f"prune_tokens: k must be in [1, N={n}], got {k}")
    if scores is not None:
        if q is not None or keys is not None:
            raise ValueError("prune_tokens: pass either scores or (q_cls, keys), not both")
        checks.tensor("scores", scores, dtypes=(torch.float32,), ndim=2, device=x.device)
        if tuple(scores.shape) != (b, n):
            raise ValueError(f"prune_tokens: scores must be (B, N) = {(b, n)}, got {tuple(scores.shape)}")
    else:
        if q is None or keys is None:
            raise ValueError("prune_tokens: pass scores, or both q_cls (B, H, Dh) and keys (B, H, N, Dh)")
        checks.tensor("q_cls", q, dtypes=(x.dtype,), ndim=3, device=x.device)
        checks.tensor("keys", keys, dtypes=(x.dtype,), ndim=4, device=x.device)
        if keys.shape[0] != b or keys.shape[2] != n or tuple(q.shape) != (b, keys.shape[1], keys.shape[3]):
            raise ValueError(f"prune_tokens: q_cls {tuple(q.shape)} and keys {tuple(keys.shape)} do not match "
                             f"x {tuple(x.shape)} as (B, H, Dh) and (B, H, N, Dh)")
        if keys.shape[3] < 1 or keys.shape[1] < 1:
            raise ValueError("prune_tokens: keys need at least one head and one channel")


@torch.library.custom_op("edge::prune_tokens", mutates_args=(), device_types=("cpu", "cuda"))
def prune_tokens_op(x: Tensor, scores: Optional[Tensor], q: Optional[Tensor], keys: Optional[Tensor], k: int,
                    has_cls: bool, fuse: bool) -> tuple[Tensor, Tensor, Tensor]:
    _check(x, scores, q, keys, k, has_cls)
    x = x.contiguous()
    b, n, c = x.shape
    h, dh = (keys.shape[1], keys.shape[3]) if keys is not None else (0, 0)
    scores = None if scores is None else scores.contiguous()
    q = None if q is None else q.contiguous()
    keys = None if keys is None else keys.contiguous()
    out = torch.empty((b, k + int(fuse), c), dtype=x.dtype, device=x.device)
    kept = torch.empty((b, k), dtype=torch.int64, device=x.device)
    s_out = torch.empty((b, n), dtype=torch.float32, device=x.device)
    ptrs = (_ext.addr(x), _ext.addr(scores), _ext.addr(q), _ext.addr(keys), _ext.addr(out), _ext.addr(kept),
            _ext.addr(s_out))
    sizes = (_ext.dtype_code(x), b, n, c, h, dh, k, bool(has_cls), bool(fuse))
    if b == 0:
        return out, kept, s_out
    if x.device.type == "cuda":
        work = torch.empty((b, h * n + n), dtype=torch.float32, device=x.device)
        _ext.cuda().prune_tokens(*ptrs, _ext.addr(work), *sizes, _ext.stream_of(x))
    else:
        _ext.cpu.prune_tokens(*ptrs, *sizes, _ext.n_threads())
    return out, kept, s_out


@prune_tokens_op.register_fake
def _fake(x, scores, q, keys, k, has_cls, fuse):
    b, n, c = x.shape
    return (x.new_empty((b, k + int(fuse), c)), x.new_empty((b, k), dtype=torch.int64),
            x.new_empty((b, n), dtype=torch.float32))


def fuse_weights(scores: Tensor, kept_idx: Tensor) -> Tensor:
    """(B, N) normalised fusion weights: max(score, 0) over dropped tokens (NaN -> 0), zero rows stay zero."""
    w = torch.nan_to_num(scores.float(), nan=0.0).clamp(min=0)
    w = w.scatter(1, kept_idx, torch.zeros_like(kept_idx, dtype=w.dtype))
    total = w.sum(dim=1, keepdim=True)
    return torch.where(total > 0, w / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(w))


def _setup_context(ctx, inputs, output):
    x, _, _, _, k, _, fuse = inputs
    _, kept, scores = output
    ctx.save_for_backward(kept, scores)
    ctx.x_shape, ctx.x_dtype, ctx.k, ctx.fuse = x.shape, x.dtype, k, fuse


def _backward(ctx, g_tokens, _g_kept, _g_scores):
    """Gradient with respect to x only: kept rows get theirs back, dropped rows their share of the fused row."""
    kept, scores = ctx.saved_tensors
    b, n, c = ctx.x_shape
    g = g_tokens.float()
    gx = torch.zeros((b, n, c), dtype=torch.float32, device=g.device)
    gx = gx.scatter_add(1, kept[..., None].expand(b, ctx.k, c), g[:, : ctx.k])
    if ctx.fuse:
        gx = gx + fuse_weights(scores, kept)[..., None] * g[:, ctx.k][:, None, :]
    return gx.to(ctx.x_dtype), None, None, None, None, None, None


prune_tokens_op.register_autograd(_backward, setup_context=_setup_context)


def prune_tokens(x: Tensor, k: int, scores: Optional[Tensor] = None, q_cls: Optional[Tensor] = None,
                 keys: Optional[Tensor] = None, has_cls: bool = True, fuse: bool = True) -> PruneResult:
    """Keep k of the N tokens of x (B, N, C) by score (see the module docstring)."""
    return PruneResult(*torch.ops.edge.prune_tokens(x, scores, q_cls, keys, int(k), bool(has_cls), bool(fuse)))


def cls_attention_scores(q: Tensor, keys: Tensor) -> Tensor:
    """mean_h softmax(q K^T / sqrt(Dh)): (B, H, Dh), (B, H, N, Dh) -> (B, N) fp32."""
    logits = torch.einsum("bhd,bhnd->bhn", q.float(), keys.float()) / (keys.shape[-1] ** 0.5)
    return torch.softmax(logits, dim=-1).mean(dim=1)


def _fuse_row(x: Tensor, w: Tensor) -> Tensor:
    # Zero-weight rows are skipped, not multiplied, so a NaN in a token nobody weighs does not spread.
    xm = torch.where(w[..., None] > 0, x.float(), torch.zeros((), dtype=torch.float32, device=x.device))
    return torch.einsum("bn,bnc->bc", w, xm)


def prune_tokens_reference(x: Tensor, scores: Optional[Tensor], q: Optional[Tensor], keys: Optional[Tensor], k: int,
                           has_cls: bool, fuse: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Pure-PyTorch reference with the documented tie and NaN rules (stable sort)."""
    s = cls_attention_scores(q, keys) if scores is None else scores.float()
    b, n, c = x.shape
    # Rank by (class, score descending, index): class 0 = CLS, 1 = a number (+-inf included), 2 = NaN.
    # Two stable sorts give exactly that order (the first keeps lower indices first among equal scores).
    cls_ = torch.where(torch.isnan(s), 2, 1)
    if has_cls:
        cls_[:, 0] = 0
    order = torch.sort(torch.nan_to_num(s, nan=0.0), dim=1, descending=True, stable=True).indices
    order = torch.gather(order, 1, torch.sort(torch.gather(cls_, 1, order), dim=1, stable=True).indices)
    kept = torch.sort(order[:, :k], dim=1).values
    tokens = torch.gather(x, 1, kept[..., None].expand(b, k, c))
    if fuse:
        fused = _fuse_row(x, fuse_weights(s, kept)).to(x.dtype)
        tokens = torch.cat([tokens, fused[:, None]], dim=1)
    return tokens, kept, s


def prune_tokens_onnx(x: Tensor, scores: Optional[Tensor], q: Optional[Tensor], keys: Optional[Tensor], k: int,
                      has_cls: bool, fuse: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Export form from standard ops (MatMul, Softmax, TopK, GatherElements, ScatterElements, ReduceSum).
    ONNX TopK breaks ties by the lower index, as the kernels do; NaN scores are mapped to -inf first."""
    s = cls_attention_scores(q, keys) if scores is None else scores.float()
    b, n, c = x.shape
    key = torch.where(torch.isnan(s), torch.full_like(s, float("-inf")), s)
    if has_cls:
        key = torch.cat([torch.full_like(key[:, :1], float("inf")), key[:, 1:]], dim=1)
    top = torch.topk(key, k, dim=1, largest=True, sorted=False).indices
    kept = torch.topk(top, k, dim=1, largest=False, sorted=True).values  # ascending: original order
    tokens = torch.gather(x, 1, kept[..., None].expand(b, k, c))
    if fuse:
        fused = _fuse_row(x, fuse_weights(s, kept)).to(x.dtype)
        tokens = torch.cat([tokens, fused[:, None]], dim=1)
    return tokens, kept, s
