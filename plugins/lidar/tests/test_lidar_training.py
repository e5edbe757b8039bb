"""The training's fusion head starts as the shipped one: without the LiDAR it gives the shipped head's outputs."""

from __future__ import annotations

import torch

from edge.encoders.config import PerceptionConfig
from edge.encoders.fusion import BevFusionHead, BevInput

from edge_lidar.training import BEV, start_fusion

CFG = PerceptionConfig()


class Heads:
    """What start_fusion reads of a stack: its fusion head."""

    def __init__(self, inputs: list[BevInput]) -> None:
        self.fusion = BevFusionHead(CFG, inputs).eval()


def test_the_started_head_gives_the_shipped_heads_output_without_the_lidar():
    torch.manual_seed(0)
    shipped = Heads([BevInput("fisheye", 24), BevInput("ultrasonic", 16, 3)])
    for m in shipped.fusion.modules():  # non-trivial batch-norm statistics, as a trained head has
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    new = Heads([BevInput("fisheye", 24), BevInput("ultrasonic", 16, 3), BevInput("lidar", 24)])
    assert new.fusion.names == BEV
    start_fusion(shipped, new)  # type: ignore[arg-type]
    fe, us, li = (torch.rand(2, c, 50, 50) for c in (24, 16, 24))
    raster = torch.rand(2, 3, 100, 100)
    on, off = torch.ones(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)
    with torch.no_grad():
        for flags in ((on, on), (on, off), (off, on)):
            want = shipped.fusion.forward_masked(fe, us, raster, *flags)
            got = new.fusion.forward_masked(fe, us, li, raster, *flags, off)
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
