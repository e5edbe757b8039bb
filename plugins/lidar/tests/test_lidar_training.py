"""The fusion head widened for the LiDAR starts as the trained one."""

from __future__ import annotations

import pytest
import torch

from edge.encoders.config import PerceptionConfig
from edge.encoders.fusion import BevFusionHead, BevInput

from edge_lidar.widen import input_columns, widen

CFG = PerceptionConfig()
OLD = [BevInput("fisheye", 24), BevInput("ultrasonic", 16, 3)]
NEW = [BevInput("fisheye", 24), BevInput("ultrasonic", 16, 3), BevInput("lidar", 24)]


def test_widened_head_gives_the_trained_heads_output_without_the_new_input():
    torch.manual_seed(0)
    old, new = BevFusionHead(CFG, OLD).eval(), BevFusionHead(CFG, NEW).eval()
    for m in old.modules():  # non-trivial batch-norm statistics, as a trained head has
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    widen(old, new)
    fe, us, li = (torch.rand(2, c, 50, 50) for c in (24, 16, 24))
    raster = torch.rand(2, 3, 100, 100)
    on, off = torch.ones(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)
    with torch.no_grad():
        for flags in ((on, on), (on, off), (off, on)):
            want = old.forward_masked(fe, us, raster, *flags)
            got = new.forward_masked(fe, us, torch.zeros_like(li), raster, *flags, off)
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert input_columns(new)[("flag", "lidar")] == [24 + 16 + 24 + 2]


def test_widen_refuses_a_head_without_the_trained_inputs():
    with pytest.raises(ValueError, match="ultrasonic"):
        widen(BevFusionHead(CFG, OLD), BevFusionHead(CFG, [BevInput("fisheye", 24), BevInput("lidar", 24)]))
