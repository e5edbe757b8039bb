"""BEV fusion and the two-stage semantic occupancy decoder (arXiv 2402.00637 style).

Fisheye and ultrasonic BEV features (at half the grid resolution, 0.4 m by default) are concatenated with two
presence channels (so the decoder knows which modality is speaking). The coarse stage predicts classes at a
quarter resolution (0.8 m) with a wide receptive field; the refine stage combines those coarse logits with the
half-resolution features, and a last light layer brings the result to the grid resolution (0.2 m) using the
full-resolution ultrasonic raster for sharp near-range edges. A missing modality is fed as zeros with its
presence flag off: trained that way (modality dropout), absence degrades the map and never breaks it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from edge.encoders.base import BoundMethod, NetworkPart
from edge.encoders.config import BEV_CLASSES, PerceptionConfig


def _cbr(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Res(nn.Module):
    def __init__(self, c: int, dilation: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_cbr(c, c, dilation=dilation),
                                  nn.Conv2d(c, c, 3, 1, dilation, dilation=dilation, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.body(x))


class BevFusionHead(nn.Module, NetworkPart):
    """(fisheye BEV | None, ultrasonic BEV | None, raster | None) ->
    (coarse logits (B, K, nx/4, ny/4), fine logits (B, K, nx, ny)).

    Network part for engines: `forward_masked` (absent inputs are zeros with their flag off), so one fixed-shape
    engine serves every combination of present modalities."""

    def __init__(self, cfg: PerceptionConfig, width: int = 48, refine: int = 24) -> None:
        super().__init__()
        self.cfg = cfg
        self.cf, self.cu = cfg.fisheye_channels, cfg.ultrasonic_channels
        cin = self.cf + self.cu + 2
        k = len(BEV_CLASSES)
        self.coarse = nn.Sequential(_cbr(cin, width, stride=2), _Res(width, 1), _Res(width, 2))
        self.coarse_out = nn.Conv2d(width, k, 1)
        self.refine = nn.Sequential(_cbr(cin + width + k, refine), _cbr(refine, refine))
        self.up_feat = nn.Conv2d(refine, 16, 1)
        self.up_raster = nn.Conv2d(3, 16, 3, padding=1)
        self.fine_out = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(16, k, 1))

    def forward(self, fisheye: Tensor | None, ultrasonic: Tensor | None, raster: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
        ref = fisheye if fisheye is not None else ultrasonic
        if ref is None:
            raise ValueError("BevFusionHead: at least one of fisheye and ultrasonic BEV features is needed")
        b, _, nx, ny = ref.shape
        f = fisheye if fisheye is not None else ref.new_zeros(b, self.cf, nx, ny)
        u = ultrasonic if ultrasonic is not None else ref.new_zeros(b, self.cu, nx, ny)
        r = raster if (raster is not None and ultrasonic is not None) else ref.new_zeros(b, 3, 2 * nx, 2 * ny)
        flag = torch.ones(b, dtype=torch.bool, device=ref.device)
        return self.run_network("", self.forward_masked, f, u, r, flag & (fisheye is not None),
                                flag & (ultrasonic is not None))

    def network(self, variant: str = "") -> nn.Module:
        return BoundMethod(self, "forward_masked")

    def network_inputs(self, variant: str = "", seed: int = 0) -> tuple[Tensor, ...]:
        """ReLU-like features, a one-hot raster, both modalities present."""
        g = torch.Generator().manual_seed(seed)
        grid = self.cfg.bev_grid
        nx, ny = grid.nx // 2, grid.ny // 2
        f = torch.randn((1, self.cf, nx, ny), generator=g).clamp(min=0)
        u = torch.randn((1, self.cu, nx, ny), generator=g).clamp(min=0)
        cls = torch.randint(0, 3, (1, grid.nx, grid.ny), generator=g)
        raster = nn.functional.one_hot(cls, 3).permute(0, 3, 1, 2).float()
        on = torch.ones(1, dtype=torch.bool)
        return f, u, raster, on, on.clone()

    def forward_masked(self, fisheye: Tensor, ultrasonic: Tensor, raster: Tensor, use_fisheye: Tensor,
                       use_ultrasonic: Tensor) -> tuple[Tensor, Tensor]:
        """Training form: per-sample presence (B,) bool; absent features are zeroed and flagged (modality dropout)."""
        b, _, nx, ny = fisheye.shape
        mf = use_fisheye.to(fisheye.dtype)[:, None, None, None]
        mu = use_ultrasonic.to(fisheye.dtype)[:, None, None, None]
        x = torch.cat([fisheye * mf, ultrasonic * mu, mf.expand(b, 1, nx, ny), mu.expand(b, 1, nx, ny)], 1)
        h = self.coarse(x)
        coarse = self.coarse_out(h)
        up = nn.functional.interpolate(torch.cat([h, coarse], 1), size=(nx, ny), mode="bilinear", align_corners=False)
        r = self.refine(torch.cat([x, up], 1))
        full = nn.functional.interpolate(self.up_feat(r), scale_factor=2, mode="bilinear", align_corners=False)
        return coarse, self.fine_out(full + self.up_raster(raster * mu))
