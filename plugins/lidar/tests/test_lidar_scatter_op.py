"""The scatter op (C++ CPU kernel) against its pure-PyTorch reference, opcheck, its fake kernel, and its ONNX form
in ONNX Runtime. The CUDA kernel has its own test, skipped without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge.kernels.grid import BevGrid

from edge_lidar.ops import CHANNELS, scatter_pillars, scatter_pillars_reference

GRID = BevGrid(-8.0, 12.0, -10.0, 10.0, 0.2)  # the fusion's grid (edge.encoders.config.PerceptionConfig.grid)
Z = (-0.5, 3.0)
ARGS = (GRID.x_min, GRID.y_min, GRID.resolution, GRID.nx, GRID.ny, *Z)


def random_cloud(n: int, seed: int, spread: float = 14.0) -> torch.Tensor:
    """Points over and beyond the grid (spread > the grid's half extent), heights beyond the z range too."""
    g = torch.Generator().manual_seed(seed)
    xy = (torch.rand(n, 2, generator=g) * 2 - 1) * spread
    z = torch.rand(n, 1, generator=g) * 4.5 - 1.0
    intensity = torch.rand(n, 1, generator=g) * 100
    return torch.cat([xy, z, intensity], 1)


def op(points: torch.Tensor) -> torch.Tensor:
    return torch.ops.edge_lidar.scatter_pillars(points, *ARGS)


@pytest.mark.parametrize("n, seed", [(1, 0), (500, 1), (20000, 2)])
def test_op_matches_reference_on_random_clouds(n, seed):
    points = random_cloud(n, seed)
    got, want = op(points), scatter_pillars_reference(points, *ARGS)
    assert got.shape == (len(CHANNELS), GRID.nx, GRID.ny) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert 0 < got[0].sum() < n or n == 1  # some points inside, some outside the grid or the z range


def test_empty_cloud_gives_zeros():
    got = op(torch.zeros(0, 4))
    assert got.shape == (4, GRID.nx, GRID.ny) and not got.any()
    assert not scatter_pillars_reference(torch.zeros(0, 4), *ARGS).any()


def test_points_outside_the_grid_or_heights_or_not_finite_are_dropped():
    nan, inf = float("nan"), float("inf")
    points = torch.tensor([[-8.01, 0.0, 1.0, 5.0], [12.0, 0.0, 1.0, 5.0], [0.0, -10.01, 1.0, 5.0],
                           [0.0, 10.0, 1.0, 5.0], [0.0, 0.0, -0.51, 5.0], [0.0, 0.0, 3.0, 5.0],
                           [nan, 0.0, 1.0, 5.0], [0.0, inf, 1.0, 5.0], [0.0, 0.0, 1.0, nan]])
    assert not op(points).any() and not scatter_pillars_reference(points, *ARGS).any()
    edge = torch.tensor([[-8.0, -10.0, -0.5, 7.0], [11.99, 9.99, 2.99, 7.0]])  # first and last cell, z limits
    got = op(edge)
    assert got[0, 0, 0] == 1 and got[0, -1, -1] == 1 and got[0].sum() == 2
    torch.testing.assert_close(got, scatter_pillars_reference(edge, *ARGS))


def test_duplicates_in_a_cell_are_counted_maxed_and_averaged():
    # three points in the cell of x = 1.0..1.2, y = 0.0..0.2: i = (1.0 + 8) / 0.2 = 45, j = 50
    points = torch.tensor([[1.05, 0.05, 0.5, 10.0], [1.15, 0.15, 2.5, 40.0], [1.05, 0.05, 0.5, 10.0],
                           [5.0, 5.0, 0.0, 99.0]])
    got = op(points)
    cell = got[:, 45, 50]
    assert cell.tolist() == pytest.approx([3.0, 3.0, (1.0 + 3.0 + 1.0) / 3, 20.0])  # heights above z_min = -0.5
    assert got[0].sum() == 4 and got[0, 65, 75] == 1
    torch.testing.assert_close(got, scatter_pillars_reference(points, *ARGS))


def test_grid_helper_takes_the_core_grid():
    points = random_cloud(300, 5)
    torch.testing.assert_close(scatter_pillars(points, GRID, Z), op(points))


def test_bad_input_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r"\(N, 4\)"):
        op(torch.zeros(5, 3))
    with pytest.raises(RuntimeError, match="float32"):
        op(torch.zeros(5, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="height range"):
        torch.ops.edge_lidar.scatter_pillars(torch.zeros(1, 4), 0.0, 0.0, 0.1, 4, 4, 1.0, 1.0)


def test_opcheck():
    for points in (random_cloud(400, 7), torch.zeros(0, 4), random_cloud(50, 8, spread=3.0)):
        torch.library.opcheck(torch.ops.edge_lidar.scatter_pillars.default, (points, *ARGS))


def test_fake_kernel_gives_the_shape_under_export():
    class Scatter(torch.nn.Module):
        def forward(self, points: torch.Tensor) -> torch.Tensor:
            return torch.ops.edge_lidar.scatter_pillars(points, *ARGS)

    points = random_cloud(100, 3)
    n = torch.export.Dim("n", min=1, max=200000)
    ep = torch.export.export(Scatter(), (points,), dynamic_shapes=({0: n},))
    assert tuple(ep.graph_module.graph.find_nodes(op="output")[0].args[0][0].meta["val"].shape) == (4, 100, 100)
    torch.testing.assert_close(ep.module()(random_cloud(900, 4)), op(random_cloud(900, 4)))


def test_onnx_form_runs_in_onnxruntime_against_the_reference(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import onnx

    from edge_lidar.onnx_form import export_onnx

    class Scatter(torch.nn.Module):
        def forward(self, points: torch.Tensor) -> torch.Tensor:
            return torch.ops.edge_lidar.scatter_pillars(points, *ARGS)

    path = tmp_path / "scatter.onnx"
    n = torch.export.Dim("n", min=1, max=200000)
    export_onnx(Scatter(), (random_cloud(100, 3),), path, dynamic_shapes=({0: n},))
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "ScatterElements" in ops and ops & {"ScatterND", "ScatterElements"}
    assert not any(node.domain not in ("", "ai.onnx") for node in onnx.load(str(path)).graph.node)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for seed, count in ((11, 7), (12, 5000)):
        points = random_cloud(count, seed)
        points[::50] = points[0].clone()  # duplicates in a cell
        got = torch.from_numpy(sess.run(None, {name: points.numpy()})[0])
        torch.testing.assert_close(got, scatter_pillars_reference(points, *ARGS), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(got, op(points), rtol=1e-5, atol=1e-4)


def test_float32_cell_boundaries_agree_with_the_reference():
    # x exactly on cell boundaries (multiples of the resolution, not representable in binary)
    xs = torch.arange(-8.0, 12.0, 0.2, dtype=torch.float64).float()
    points = torch.stack([xs, torch.zeros_like(xs), torch.ones_like(xs), torch.ones_like(xs)], 1)
    torch.testing.assert_close(op(points), scatter_pillars_reference(points, *ARGS))
    assert np.isclose(float(op(points)[0].sum()), len(xs) - int((xs >= 12.0).sum()))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_cuda_kernel_matches_the_cpu_kernel():
    for n, seed in ((0, 0), (1, 1), (50000, 2)):
        points = random_cloud(n, seed)
        if n > 3:
            points[::7] = points[3].clone()  # duplicates in a cell
        got = op(points.cuda()).cpu()
        torch.testing.assert_close(got, op(points), rtol=1e-5, atol=1e-4)
    torch.library.opcheck(torch.ops.edge_lidar.scatter_pillars.default, (random_cloud(300, 9).cuda(), *ARGS))
