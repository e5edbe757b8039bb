"""CUDA kernels against the CPU kernels and references; skipped where no GPU (or no CUDA build) is present."""

from __future__ import annotations

import math

import pytest
import torch

import edge.kernels as K
from edge.kernels.synthetic_cameras import surround_fisheye_rig

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU"),
    pytest.mark.skipif(not K.has_cuda_kernels(), reason="built without nvcc"),
]


def _tables():
    from tests.test_kernels import random_table

    return random_table(500, 120, n_depth=120 * 6, seed=2)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3)])
@pytest.mark.parametrize("C", [3, 64, 80, 200])
def test_bev_pool_cuda_matches_cpu(dtype, tol, C):
    t = _tables()
    tc = t.to("cuda")
    feat = torch.randn(2, 120, C).to(dtype)
    depth = torch.rand(2, 720).to(dtype)
    for d in (None, depth):
        di = t.depth_idx if d is not None else t.depth_idx[:0]
        cpu = K.bev_pool_reference(feat, d, t.offsets, t.src_idx, di, t.weight)
        dic = tc.depth_idx if d is not None else tc.depth_idx[:0]
        tdic = tc.t_depth_idx if d is not None else tc.t_depth_idx[:0]
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            gpu = torch.ops.edge.bev_pool(feat.cuda(), None if d is None else d.cuda(), tc.offsets, tc.src_idx, dic,
                                          tc.weight, tc.t_offsets, tc.t_idx, tdic, tc.t_weight)
        stream.synchronize()
        torch.testing.assert_close(gpu.cpu().float(), cpu.float(), rtol=tol, atol=tol)


def test_bev_pool_cuda_backward_and_bad_index():
    t = _tables().to("cuda")
    feat = torch.randn(2, 120, 16, device="cuda", requires_grad=True)
    depth = torch.rand(2, 720, device="cuda", requires_grad=True)
    args = (t.offsets, t.src_idx, t.depth_idx, t.weight, t.t_offsets, t.t_idx, t.t_depth_idx, t.t_weight)
    g = torch.randn(2, 500, 16, device="cuda")
    (torch.ops.edge.bev_pool(feat, depth, *args) * g).sum().backward()
    f2, d2 = feat.detach().clone().requires_grad_(), depth.detach().clone().requires_grad_()
    (K.bev_pool_reference(f2, d2, *args[:4]) * g).sum().backward()
    torch.testing.assert_close(feat.grad, f2.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(depth.grad, d2.grad, rtol=1e-4, atol=1e-4)
    bad = t.src_idx.clone()
    bad[3] = 10_000
    with pytest.raises(ValueError, match="source index"):
        torch.ops.edge.bev_pool(feat.detach(), None, t.offsets, bad, t.depth_idx[:0], t.weight, t.t_offsets, t.t_idx,
                                t.t_depth_idx[:0], t.t_weight)


def test_bev_project_fisheye_cuda_matches_cpu():
    spec = K.TableSpec(grid=K.BevGrid.square(16.0, 64), feat_hw=(24, 32), mode="ground")
    t = K.build_table(surround_fisheye_rig(), spec)
    feat = torch.randn(2, 4, 24, 32, 8)
    torch.testing.assert_close(K.bev_project(feat.cuda(), t).cpu(), K.bev_project(feat, t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("per_sensor", [False, True])
def test_ultrasonic_cuda_matches_cpu(per_sensor):
    g = torch.Generator().manual_seed(0)
    s = 10
    sensors = torch.stack([torch.randn(s, generator=g), torch.randn(s, generator=g),
                           torch.rand(s, generator=g) * 2 * math.pi, torch.rand(s, generator=g) + 0.3,
                           torch.full((s,), 0.15), torch.full((s,), 5.5)], dim=1)
    ranges = torch.rand(3, s, generator=g) * 6
    ranges[0, 0], ranges[1, 1], ranges[2, 2] = float("inf"), float("nan"), float("-inf")
    grid = K.BevGrid.square(16.0, 80)
    cpu = K.ultrasonic_raster(ranges, sensors, grid, per_sensor=per_sensor)
    gpu = K.ultrasonic_raster(ranges.cuda(), sensors.cuda(), grid, per_sensor=per_sensor).cpu()
    assert float((cpu != gpu).float().mean()) < 1e-4


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 3e-3)])
@pytest.mark.parametrize("k", [1, 64, 144, 576])
def test_prune_cuda_matches_reference(dtype, tol, k):
    x = torch.randn(4, 576, 1024).to(dtype)
    q, keys = torch.randn(4, 16, 64).to(dtype), torch.randn(4, 16, 576, 64).to(dtype)
    scores = torch.rand(4, 576)
    for s_args in ((scores, None, None), (None, q, keys)):
        ref = K.prune_tokens_reference(x, *s_args, k, True, True)
        cuda_args = tuple(None if a is None else a.cuda() for a in s_args)
        out, kept, sc = torch.ops.edge.prune_tokens(x.cuda(), *cuda_args, k, True, True)
        torch.testing.assert_close(sc.cpu(), ref[2], rtol=1e-4, atol=1e-6)
        if s_args[0] is not None:  # recomputed scores may differ in the last bit and swap near-ties
            assert torch.equal(kept.cpu(), ref[1])
            torch.testing.assert_close(out.cpu().float(), ref[0].float(), rtol=tol, atol=tol)


def test_prune_cuda_ties_nan():
    x = torch.randn(1, 8, 4, device="cuda")
    scores = torch.tensor([[0.0, 0.5, float("nan"), 0.5, float("-inf"), 0.5, float("nan"), 0.1]], device="cuda")
    assert K.prune_tokens(x, 4, scores=scores).kept_idx.tolist() == [[0, 1, 3, 5]]
    assert K.prune_tokens(x, 7, scores=scores).kept_idx.tolist() == [[0, 1, 2, 3, 4, 5, 7]]


def test_cuda_opcheck_all_ops():
    t = _tables().to("cuda")
    feat = torch.randn(2, 120, 8, device="cuda", requires_grad=True)
    depth = torch.rand(2, 720, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.edge.bev_pool.default,
                          (feat, depth, t.offsets, t.src_idx, t.depth_idx, t.weight, t.t_offsets, t.t_idx,
                           t.t_depth_idx, t.t_weight))
    sensors = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.15, 5.5], [1.0, 0.5, 1.0, 0.8, 0.15, 5.5]], device="cuda")
    torch.library.opcheck(torch.ops.edge.ultrasonic_raster.default,
                          (sensors, torch.rand(3, 2, device="cuda") * 5, -4.0, -4.0, 40, 40, 0.2, 0.2, True))
    x = torch.randn(2, 40, 16, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.edge.prune_tokens.default,
                          (x, torch.rand(2, 40, device="cuda"), None, None, 7, True, True))


def test_cuda_ops_use_the_current_stream():
    """Work queued on a side stream is ordered after that stream's prior work, not the default stream's."""
    t = _tables().to("cuda")
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        feat = torch.randn(4, 120, 64, device="cuda")
        feat.mul_(2.0)  # on `side`; the op must see this result without a device-wide sync
        out = torch.ops.edge.bev_pool(feat, None, t.offsets, t.src_idx, t.depth_idx[:0], t.weight, t.t_offsets,
                                      t.t_idx, t.t_depth_idx[:0], t.t_weight)
    side.synchronize()
    ref = K.bev_pool_reference(feat, None, t.offsets, t.src_idx, t.depth_idx, t.weight)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
