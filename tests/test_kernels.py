"""Kernels against their pure-PyTorch references, edge cases, bad input, opcheck, export and ONNX.

Tolerances: fp32 outputs within 1e-5 relative + 1e-5 absolute of the reference (only the summation order
differs); fp16 features within 2e-3 + 2e-3 (fp32 accumulation, one rounding at the end).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import edge.kernels as K
from edge.kernels.synthetic_cameras import ring_pinhole_rig, surround_fisheye_rig

torch.manual_seed(0)


def random_table(n_rows: int, n_src: int, n_depth: int = 0, max_per_row: int = 6, empty_frac: float = 0.3,
                 seed: int = 0) -> K.BevTable:
    """A random CSR table with some empty rows, via the same pair-sorting path as real tables."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, max_per_row + 1, n_rows) * (rng.random(n_rows) > empty_frac)
    rows = np.repeat(np.arange(n_rows), counts)
    src = rng.integers(0, n_src, rows.size)
    w = rng.random(rows.size)
    depth = rng.integers(0, n_depth, rows.size) if n_depth else None
    spec = K.TableSpec(grid=K.BevGrid(0, n_rows, 0, 1, 1.0), feat_hw=(1, n_src),
                       mode="depth" if n_depth else "ground", depth_bins=(0.0, 1.0, max(1, n_depth // n_src)))
    return K.table_from_pairs(spec, 1, rows, src, w, depth)


def run_table(t: K.BevTable, feat: torch.Tensor, depth: torch.Tensor | None = None) -> torch.Tensor:
    di = t.depth_idx if depth is not None else t.depth_idx[:0]
    tdi = t.t_depth_idx if depth is not None else t.t_depth_idx[:0]
    return torch.ops.edge.bev_pool(feat, depth, t.offsets, t.src_idx, di, t.weight, t.t_offsets, t.t_idx, tdi,
                                   t.t_weight)


def ref_table(t: K.BevTable, feat: torch.Tensor, depth: torch.Tensor | None = None) -> torch.Tensor:
    return K.bev_pool_reference(feat, depth, t.offsets, t.src_idx, t.depth_idx, t.weight)


# ---------------------------------------------------------------- BEV pooling
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3)])
@pytest.mark.parametrize("C", [1, 7, 64, 130])
def test_bev_pool_matches_reference(dtype, tol, C):
    t = random_table(300, 97, seed=C)
    feat = torch.randn(3, 97, C).to(dtype)
    out = run_table(t, feat)
    ref = ref_table(t, feat)
    assert out.dtype == dtype and out.shape == (3, 300, C)
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol)
    empty = (t.offsets[1:] == t.offsets[:-1])
    assert empty.any() and bool((out[:, empty] == 0).all()), "empty cells must be exactly zero"


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3)])
def test_bev_pool_depth_matches_reference(dtype, tol):
    t = random_table(200, 50, n_depth=50 * 8, seed=3)
    feat = torch.randn(2, 50, 16).to(dtype)
    depth = torch.softmax(torch.randn(2, 8, 50), dim=1).reshape(2, -1).to(dtype)
    torch.testing.assert_close(run_table(t, feat, depth).float(), ref_table(t, feat, depth).float(), rtol=tol, atol=tol)


def test_bev_pool_nan_features_propagate_only_to_cells_that_read_them():
    t = random_table(100, 20, empty_frac=0.0, seed=5)
    feat = torch.randn(1, 20, 4)
    feat[0, 3, 1] = float("nan")
    out = run_table(t, feat)
    readers = torch.zeros(100, dtype=torch.bool)
    for r in range(100):
        readers[r] = bool((t.src_idx[t.offsets[r]:t.offsets[r + 1]] == 3).any())
    assert bool(torch.isnan(out[0, readers, 1]).all()) and not bool(torch.isnan(out[0, ~readers]).any())


def test_bev_pool_backward_matches_reference():
    t = random_table(120, 40, n_depth=40 * 5, seed=7)
    feat = torch.randn(2, 40, 6, dtype=torch.float64).float().requires_grad_()
    depth = torch.rand(2, 200).requires_grad_()
    g = torch.randn(2, 120, 6)
    (run_table(t, feat, depth) * g).sum().backward()
    f2, d2 = feat.detach().clone().requires_grad_(), depth.detach().clone().requires_grad_()
    (ref_table(t, f2, d2) * g).sum().backward()
    torch.testing.assert_close(feat.grad, f2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(depth.grad, d2.grad, rtol=1e-5, atol=1e-5)


def test_bev_pool_opcheck():
    t = random_table(40, 12, n_depth=12 * 3, seed=11)
    feat = torch.randn(2, 12, 5, requires_grad=True)
    depth = torch.rand(2, 36, requires_grad=True)
    torch.library.opcheck(torch.ops.edge.bev_pool.default,
                          (feat, depth, t.offsets, t.src_idx, t.depth_idx, t.weight, t.t_offsets, t.t_idx,
                           t.t_depth_idx, t.t_weight))
    torch.library.opcheck(torch.ops.edge.bev_pool.default,
                          (feat, None, t.offsets, t.src_idx, t.depth_idx[:0], t.weight, t.t_offsets, t.t_idx,
                           t.t_depth_idx[:0], t.t_weight))


def test_bev_pool_bad_input_is_a_clear_error():
    t = random_table(30, 10, seed=1)
    feat = torch.randn(1, 10, 4)
    with pytest.raises(TypeError, match="dtype"):
        run_table(t, feat.double())
    with pytest.raises(ValueError, match="number of sources"):
        run_table(t, torch.randn(1, 9, 4))
    bad = t.src_idx.clone()
    bad[0] = 10  # one past the end
    with pytest.raises(ValueError, match="src_idx index out of range"):
        torch.ops.edge.bev_pool(feat, None, t.offsets, bad, t.depth_idx, t.weight, t.t_offsets, t.t_idx,
                                t.t_depth_idx, t.t_weight)
    bad_off = t.offsets.clone()
    bad_off[5] = 10_000
    with pytest.raises(ValueError, match="offsets"):
        torch.ops.edge.bev_pool(feat, None, bad_off, t.src_idx, t.depth_idx, t.weight, t.t_offsets, t.t_idx,
                                t.t_depth_idx, t.t_weight)
    with pytest.raises(TypeError, match="int32"):
        torch.ops.edge.bev_pool(feat, None, t.offsets.long(), t.src_idx, t.depth_idx, t.weight, t.t_offsets,
                                t.t_idx, t.t_depth_idx, t.t_weight)


# ---------------------------------------------------------------- BEV tables from cameras
GRID = K.BevGrid.square(16.0, 64)


@pytest.fixture(scope="module")
def fisheye_rig():
    return surround_fisheye_rig()


def test_ground_table_geometry(fisheye_rig):
    spec = K.TableSpec(grid=GRID, feat_hw=(30, 40), mode="ground")
    t = K.build_table(fisheye_rig, spec)
    assert t.n_rows == 64 * 64 and t.n_src == 4 * 30 * 40
    sums = torch.zeros(t.n_rows).index_add(0, torch.repeat_interleave(torch.arange(t.n_rows), t.offsets.diff().long()),
                                           t.weight)
    seen = t.offsets.diff() > 0
    # Interior taps sum to 1 per visible cell; taps clipped at the feature border can only lower it.
    assert float(seen.float().mean()) > 0.8
    assert bool((sums[seen] <= 1 + 1e-5).all()) and float(sums[seen].median()) == pytest.approx(1.0, abs=1e-5)
    # A constant feature map per camera comes back as that constant where all taps are inside.
    feat = torch.ones(1, 4, 30, 40, 3)
    out = K.bev_project(feat, t)
    assert out.shape == (1, 64, 64, 3)
    full = (sums > 1 - 1e-6).reshape(64, 64)
    torch.testing.assert_close(out[0][full], torch.ones(int(full.sum()), 3))


def test_ground_projection_puts_a_painted_pixel_back_on_its_ground_point(fisheye_rig):
    """Paint the front camera's feature pixel that sees ground point (6, 1, 0): BEV mass lands there."""
    spec = K.TableSpec(grid=GRID, feat_hw=(48, 64), mode="ground")
    t = K.build_table(fisheye_rig, spec)
    cam = fisheye_rig["front"]
    p = np.linalg.inv(cam.T_base_cam) @ np.array([6.0, 1.0, 0.0, 1.0])
    uv, ok = cam.project(p[None, :3])
    assert ok[0]
    fu = int(round((uv[0, 0] + 0.5) * 64 / cam.width - 0.5))
    fv = int(round((uv[0, 1] + 0.5) * 48 / cam.height - 0.5))
    feat = torch.zeros(1, 4, 48, 64, 1)
    feat[0, 0, fv, fu, 0] = 1.0
    out = K.bev_project(feat, t)[0, ..., 0]
    i, j = divmod(int(out.argmax()), 64)
    centre = GRID.cell_centres()[i, j]
    assert np.hypot(centre[0] - 6.0, centre[1] - 1.0) < 1.0


@pytest.mark.parametrize("mode,heights,per_height", [("heights", (0.0, 0.5, 1.0), False), ("heights", (0.0, 1.0), True),
                                                     ("depth", (0.0, 0.5, 1.0, 1.5), False)])
def test_camera_tables_modes_match_reference(fisheye_rig, mode, heights, per_height):
    spec = K.TableSpec(grid=GRID, feat_hw=(24, 32), mode=mode, heights=heights, per_height=per_height,
                       depth_bins=(0.5, 12.0, 16))
    t = K.build_table(fisheye_rig, spec)
    feat = torch.randn(2, 4, 24, 32, 8)
    depth = torch.softmax(torch.randn(2, 4, 16, 24, 32), dim=2) if mode == "depth" else None
    out = K.bev_project(feat, t, depth)
    ref = ref_table(t, feat.reshape(2, -1, 8), None if depth is None else depth.reshape(2, -1))
    torch.testing.assert_close(out.reshape(ref.shape), ref, rtol=1e-5, atol=1e-5)
    assert out.shape == ((2, len(heights), 64, 64, 8) if per_height else (2, 64, 64, 8))
    if mode == "depth":
        assert int(t.depth_idx.max()) < t.n_depth


def test_table_cache_hit_miss_and_key(tmp_path, fisheye_rig):
    spec = K.TableSpec(grid=GRID, feat_hw=(24, 32))
    t1 = K.load_or_build_table(fisheye_rig, spec, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1
    t2 = K.load_or_build_table(fisheye_rig, spec, cache_dir=tmp_path)
    assert t2.key == t1.key and torch.equal(t2.src_idx, t1.src_idx) and torch.equal(t2.weight, t1.weight)
    # Any change of grid, spec, extrinsics or intrinsics changes the key.
    keys = {t1.key, K.rig_key(fisheye_rig, K.TableSpec(grid=K.BevGrid.square(16.0, 32), feat_hw=(24, 32)))}
    moved = surround_fisheye_rig()
    moved["front"].T_base_cam = moved["front"].T_base_cam.copy()
    moved["front"].T_base_cam[0, 3] += 0.01
    keys.add(K.rig_key(moved, spec))
    refocused = surround_fisheye_rig()
    refocused["left"].f *= 1.01
    keys.add(K.rig_key(refocused, spec))
    assert len(keys) == 4
    # A damaged cache entry is rebuilt, not trusted.
    files[0].write_bytes(b"not an npz")
    t3 = K.load_or_build_table(fisheye_rig, spec, cache_dir=tmp_path)
    assert torch.equal(t3.offsets, t1.offsets)


# ---------------------------------------------------------------- ultrasonic
def random_sensors(s: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yaw = torch.rand(s, generator=g) * 2 * math.pi - math.pi
    xy = torch.randn(s, 2, generator=g) * 2
    beam = torch.rand(s, generator=g) * 1.0 + 0.3
    return torch.stack([xy[:, 0], xy[:, 1], yaw, beam, torch.full((s,), 0.15), torch.full((s,), 5.5)], dim=1)


@pytest.mark.parametrize("per_sensor", [False, True])
def test_ultrasonic_matches_reference(per_sensor):
    sensors = random_sensors(12)
    ranges = torch.rand(4, 12) * 6.0
    ranges[0, 0], ranges[0, 1], ranges[1, 2], ranges[2, 3] = float("inf"), float("nan"), float("-inf"), 0.05
    grid = K.BevGrid.square(16.0, 96)
    out = K.ultrasonic_raster(ranges, sensors, grid, arc_thickness=0.3, per_sensor=per_sensor)
    ref = K.ultrasonic_raster_reference(sensors, ranges, grid.x_min, grid.y_min, grid.nx, grid.ny, grid.resolution,
                                        0.3, per_sensor)
    assert out.shape == ref.shape
    # Same float64 geometry on both sides; allow 1e-4 of cells to differ from last-ulp cos/sin differences.
    assert float((out != ref).float().mean()) < 1e-4
    assert bool((out.sum(dim=-3) == 1).all()), "channels are one-hot"


def test_ultrasonic_semantics_single_sensor():
    sensors = torch.tensor([[0.0, 0.05, 0.0, math.radians(60), 0.15, 5.5]])  # on the axis of the j = 40 cells
    grid = K.BevGrid(-1.0, 7.0, -4.0, 4.0, 0.1)

    def at(out, x, y):
        i, j = int((x - grid.x_min) / 0.1), int((y - grid.y_min) / 0.1)
        return out[0, :, i, j].tolist()

    echo = K.ultrasonic_raster(torch.tensor([[3.0]]), sensors, grid)
    assert at(echo, 3.0, 0.0) == [1, 0, 0] and at(echo, 1.5, 0.0) == [0, 1, 0] and at(echo, 4.5, 0.0) == [0, 0, 1]
    assert at(echo, 1.5, 1.5) == [0, 0, 1], "outside the 60 degree beam"
    none = K.ultrasonic_raster(torch.tensor([[float("inf")]]), sensors, grid)
    assert at(none, 5.0, 0.0) == [0, 1, 0] and at(none, 6.5, 0.0) == [0, 0, 1]
    nan = K.ultrasonic_raster(torch.tensor([[float("nan")]]), sensors, grid)
    assert bool((nan[0, 2] == 1).all()), "an invalid reading says nothing"
    close = K.ultrasonic_raster(torch.tensor([[float("-inf")]]), sensors, grid)
    assert at(close, 0.1, 0.0) == [1, 0, 0] and at(close, 1.0, 0.0) == [0, 0, 1]


def test_ultrasonic_bad_input_and_opcheck():
    sensors = random_sensors(3)
    with pytest.raises(ValueError, match="number of sensors"):
        K.ultrasonic_raster(torch.rand(2, 4), sensors, GRID)
    with pytest.raises(TypeError, match="dtype"):
        K.ultrasonic_raster(torch.rand(2, 3).double(), sensors, GRID)
    torch.library.opcheck(torch.ops.edge.ultrasonic_raster.default,
                          (sensors, torch.rand(2, 3) * 5, -2.0, -2.0, 20, 24, 0.2, 0.2, False))


def test_sensor_table_from_rig_like_objects():
    class Sonar:
        def __init__(self, x, y, yaw):
            self.name, self.position, self.yaw = "s", (x, y, 0.5), yaw
            self.beam_width, self.min_range, self.max_range = 1.0, 0.15, 5.5

    table = K.sensor_table([Sonar(3.8, 0.2, 0.1), Sonar(-1.0, -0.3, math.pi)])
    assert table.shape == (2, 6) and table.dtype == torch.float32
    assert table[1].tolist() == pytest.approx([-1.0, -0.3, math.pi, 1.0, 0.15, 5.5], rel=1e-6)


# ---------------------------------------------------------------- token pruning
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3)])
@pytest.mark.parametrize("k", [1, 2, 17, 64])
@pytest.mark.parametrize("fuse", [True, False])
def test_prune_matches_reference_with_scores(dtype, tol, k, fuse):
    x = torch.randn(3, 64, 40).to(dtype)
    scores = torch.rand(3, 64)
    out = K.prune_tokens(x, k, scores=scores, fuse=fuse)
    ref = K.prune_tokens_reference(x, scores, None, None, k, True, fuse)
    assert torch.equal(out.kept_idx, ref[1])
    assert bool((out.kept_idx[:, 0] == 0).all()) and bool((out.kept_idx.diff(dim=1) > 0).all())
    torch.testing.assert_close(out.tokens.float(), ref[0].float(), rtol=tol, atol=tol)
    if k == 64 and fuse:
        assert bool((out.tokens[:, -1] == 0).all()), "k = N: nothing dropped, fused token is zero"


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 3e-3)])
def test_prune_cls_attention_scores(dtype, tol):
    x = torch.randn(2, 50, 32).to(dtype)
    q, keys = torch.randn(2, 4, 8).to(dtype), torch.randn(2, 4, 50, 8).to(dtype)
    out = K.prune_tokens(x, 10, q_cls=q, keys=keys, fuse=True)
    ref = K.prune_tokens_reference(x, None, q, keys, 10, True, True)
    torch.testing.assert_close(out.scores, ref[2], rtol=tol, atol=1e-6)
    assert torch.equal(out.kept_idx, ref[1])
    torch.testing.assert_close(out.tokens.float(), ref[0].float(), rtol=tol, atol=tol)


def test_prune_ties_nan_and_no_cls():
    x = torch.randn(1, 8, 4)
    scores = torch.tensor([[0.0, 0.5, float("nan"), 0.5, float("-inf"), 0.5, float("nan"), 0.1]])
    out = K.prune_tokens(x, 4, scores=scores)
    assert out.kept_idx.tolist() == [[0, 1, 3, 5]], "ties to the lower index"
    out = K.prune_tokens(x, 7, scores=scores)
    assert out.kept_idx.tolist() == [[0, 1, 2, 3, 4, 5, 7]], "-inf ranks above NaN, NaN by index"
    ref = K.prune_tokens_reference(x, scores, None, None, 7, True, True)
    assert torch.equal(out.kept_idx, ref[1])
    torch.testing.assert_close(out.tokens, ref[0])
    assert not bool(torch.isnan(out.tokens).any()), "NaN scores weigh nothing in the fused token"
    free = K.prune_tokens(x, 3, scores=scores, has_cls=False)
    assert free.kept_idx.tolist() == [[1, 3, 5]]


def test_prune_backward_and_opcheck():
    x = torch.randn(2, 20, 6, requires_grad=True)
    scores = torch.rand(2, 20)
    g = torch.randn(2, 6, 6)
    (K.prune_tokens(x, 5, scores=scores).tokens * g).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    (K.prune_tokens_reference(x2, scores, None, None, 5, True, True)[0] * g).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.library.opcheck(torch.ops.edge.prune_tokens.default, (x, scores, None, None, 5, True, True))
    torch.library.opcheck(torch.ops.edge.prune_tokens.default,
                          (x, None, torch.randn(2, 2, 3), torch.randn(2, 2, 20, 3), 4, False, False))


def test_prune_bad_input():
    x = torch.randn(2, 10, 4)
    with pytest.raises(ValueError, match="k must be"):
        K.prune_tokens(x, 11, scores=torch.rand(2, 10))
    with pytest.raises(ValueError, match="k must be"):
        K.prune_tokens(x, 0, scores=torch.rand(2, 10))
    with pytest.raises(ValueError, match="scores must be"):
        K.prune_tokens(x, 3, scores=torch.rand(2, 9))
    with pytest.raises(ValueError, match="pass scores, or both"):
        K.prune_tokens(x, 3)
    with pytest.raises(TypeError, match="dtype"):
        K.prune_tokens(x.int(), 3, scores=torch.rand(2, 10))


# ---------------------------------------------------------------- compile, export, ONNX
class Fusion(torch.nn.Module):
    """A toy BEV encoder head using all three ops, as an exported encoder would."""

    def __init__(self, table: K.BevTable, sensors: torch.Tensor, grid: K.BevGrid) -> None:
        super().__init__()
        self.bev = K.BevProjector(table)
        self.register_buffer("sensors", sensors)
        self.grid = grid

    def forward(self, feat, depth, ranges, tokens, scores):
        bev = self.bev(feat, depth).permute(0, 3, 1, 2)
        us = torch.ops.edge.ultrasonic_raster(self.sensors, ranges, self.grid.x_min, self.grid.y_min, self.grid.nx,
                                              self.grid.ny, self.grid.resolution, 0.2, False)
        pruned, kept, _ = torch.ops.edge.prune_tokens(tokens, scores, None, None, 9, True, True)
        return torch.cat([bev, us], dim=1) * 2.0, pruned, kept


@pytest.fixture(scope="module")
def fusion_case():
    grid = K.BevGrid.square(8.0, 16)
    rig = surround_fisheye_rig()
    spec = K.TableSpec(grid=grid, feat_hw=(12, 16), mode="depth", heights=(0.0, 0.8), depth_bins=(0.3, 8.0, 6))
    model = Fusion(K.build_table(rig, spec), random_sensors(6), grid).eval()
    args = (torch.randn(2, 4, 12, 16, 5), torch.softmax(torch.randn(2, 4, 6, 12, 16), dim=2), torch.rand(2, 6) * 5,
            torch.randn(2, 30, 8), torch.rand(2, 30))
    return model, args


def test_torch_compile_and_export(fusion_case):
    model, args = fusion_case
    eager = model(*args)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)(*args)
    exported = torch.export.export(model, args).module()(*args)
    for got in (compiled, exported):
        for a, b in zip(got, eager):
            torch.testing.assert_close(a, b)


def test_onnx_export_runs_in_onnxruntime(fusion_case, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import onnx

    model, args = fusion_case
    path = tmp_path / "fusion.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    K.export_onnx(model, args, path, dynamic_shapes=tuple({0: batch} for _ in args))
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not any(op.startswith("edge") for op in ops), ops
    assert {"TopK", "GatherElements"} & ops and ({"ScatterND", "ScatterElements"} & ops)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # A batch size other than the traced one: the exported graph keeps the batch dimension dynamic.
    args = (torch.randn(3, 4, 12, 16, 5), torch.softmax(torch.randn(3, 4, 6, 12, 16), dim=2), torch.rand(3, 6) * 5,
            torch.randn(3, 30, 8), torch.rand(3, 30))
    outs = sess.run(None, {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args)})
    eager = model(*args)
    np.testing.assert_allclose(outs[0][:, :5], eager[0][:, :5].numpy(), rtol=1e-4, atol=1e-5)
    assert float((outs[0][:, 5:] != eager[0][:, 5:].numpy()).mean()) < 1e-3  # float32 geometry in the ONNX form
    np.testing.assert_allclose(outs[1], eager[1].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(outs[2], eager[2].numpy())


def test_ops_importable_from_edge_kernels():
    from edge.kernels import bev_project, prune_tokens, ultrasonic_raster  # noqa: F401

    assert K.has_cuda_kernels() in (True, False)
    with pytest.raises(ValueError, match="depth"):
        K.bev_project(torch.randn(1, 4, 24, 32, 3), K.build_table(surround_fisheye_rig(),
                                                                  K.TableSpec(grid=GRID, feat_hw=(24, 32), mode="depth")))


def test_pinhole_ring_depth_table_has_pairs_everywhere_nearby():
    rig = ring_pinhole_rig(6, 352, 128, hfov_deg=70.0)
    spec = K.TableSpec(grid=K.BevGrid.square(20.0, 40), feat_hw=(16, 44), mode="depth",
                       heights=(-1.0, 0.0, 1.0), depth_bins=(1.0, 30.0, 20))
    t = K.build_table(rig, spec)
    seen = (t.offsets.diff() > 0).reshape(40, 40)
    assert float(seen.float().mean()) > 0.6


def test_real_rig_tables_and_sensors(tmp_path):
    """The project's default rig (edge.sensors) through the same protocol: tables cover the grid, the cache
    key is stable across loads, and its ultrasonic sensors rasterise."""
    rig_mod = pytest.importorskip("edge.sensors.rig")
    rig = rig_mod.load_rig()
    spec = K.TableSpec(grid=K.BevGrid.square(20.0, 100), feat_hw=(30, 40), mode="ground")
    t = K.load_or_build_table(rig.fisheye, spec, cache_dir=tmp_path)
    assert t.n_src == len(rig.fisheye) * 30 * 40
    assert float((t.offsets.diff() > 0).float().mean()) > 0.9
    assert K.rig_key(rig_mod.load_rig().fisheye, spec) == t.key
    sensors = K.sensor_table(rig.ultrasonic)
    ranges = torch.full((1, sensors.shape[0]), 1.0)
    out = K.ultrasonic_raster(ranges, sensors, spec.grid)
    assert float(out[0, 0].sum()) > 0 and float(out[0, 1].sum()) > 0


def test_concurrent_calls_from_python_threads_agree():
    """The kernels release the GIL and share one thread pool; concurrent callers must get their own results."""
    from concurrent.futures import ThreadPoolExecutor

    t = random_table(400, 60, seed=9)
    feats = [torch.randn(2, 60, 33) for _ in range(8)]
    with ThreadPoolExecutor(4) as ex:
        outs = list(ex.map(lambda f: [run_table(t, f) for _ in range(20)][-1], feats))
    for f, o in zip(feats, outs):
        torch.testing.assert_close(o, ref_table(t, f), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_inductor_compile_forward_and_backward():
    """torch.compile with the default (Inductor) backend around the ops, gradients included (~30 s)."""
    t = random_table(100, 30, seed=1)

    def f(x, s):
        y = run_table(t, x)
        return K.prune_tokens(y * 2 + 1, 10, scores=s).tokens.relu()

    x, s = torch.randn(2, 30, 8, requires_grad=True), torch.rand(2, 100)
    out = torch.compile(f, fullgraph=True)(x, s)
    out.sum().backward()
    g, x.grad = x.grad.clone(), None
    eager = f(x, s)
    eager.sum().backward()
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(g, x.grad)
