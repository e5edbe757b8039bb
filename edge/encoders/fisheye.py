"""Fisheye plugin: a small ResNeXt-style CNN shared by the four surround cameras, lifted to BEV by the
ground-plane projection op (precomputed CSR table for this rig, cached), then a BEV conv and LLM tokens.

Why ground-plane mode: it needs no depth head (cheap on a CPU/Jetson) and is exact for where obstacles touch
the ground; the BEV conv after it learns to read the radial smear that tall objects leave.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from edge.encoders.base import (BevFeatures, Columns, Cost, Diagnostics, EncoderOutput, ModalityEncoder, TokenPool,
                                count_macs, image_batch, image_tensor, n_params, to_bgr)
from edge.encoders.scene_tokens import BEV_TOKENS
from edge.encoders.config import FISHEYE_CAMERAS, PerceptionConfig
from edge.frames import Frame
from edge.kernels import BevProjector, TableSpec, load_or_build_table

P_MISSING_CAMERA = 0.05  # training: one camera missing in this share of samples, so a dead camera degrades gracefully


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, groups=groups, bias=False),
                         nn.BatchNorm2d(cout))


class ResNeXtBlock(nn.Module):
    """1x1 reduce, grouped 3x3 (cardinality `groups`), 1x1 expand, residual: ResNeXt's aggregated transform."""

    def __init__(self, cin: int, cout: int, stride: int = 1, groups: int = 8, width: int | None = None) -> None:
        super().__init__()
        mid = width or cout
        self.body = nn.Sequential(conv_bn(cin, mid, 1), nn.ReLU(inplace=True),
                                  conv_bn(mid, mid, 3, stride, groups=groups), nn.ReLU(inplace=True),
                                  conv_bn(mid, cout, 1))
        self.short = nn.Identity() if (cin == cout and stride == 1) else conv_bn(cin, cout, 1, stride)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.short(x))


class FisheyeBackbone(nn.Module):
    """Per-camera image (3, H, W) -> features (C, H/4, W/4): stride-4 and stride-8 stages merged (FPN-lite)."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, 3, 2), nn.ReLU(inplace=True))
        self.s4 = nn.Sequential(ResNeXtBlock(16, 32, 2), ResNeXtBlock(32, 32))
        self.s8 = nn.Sequential(ResNeXtBlock(32, 64, 2), ResNeXtBlock(64, 64))
        self.lat4 = nn.Conv2d(32, out_channels, 1)
        self.lat8 = nn.Conv2d(64, out_channels, 1)
        self.out = nn.Sequential(conv_bn(out_channels, out_channels), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        f4 = self.s4(self.stem(x))
        f8 = self.s8(f4)
        up = nn.functional.interpolate(self.lat8(f8), size=f4.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(self.lat4(f4) + up)


def build(cfg: PerceptionConfig, rig: Any, table_cache: str | None = None) -> FisheyeEncoder:
    """The fisheye plugin's encoder factory (edge.modalities.builtin.FISHEYE.encoder)."""
    return FisheyeEncoder(cfg, rig, table_cache)


class FisheyeEncoder(ModalityEncoder):
    """Four fisheye images -> BEV features (B, C, nx/2, ny/2) and tokens (B, n_tokens, d_enc).

    Network part for engines: `forward` (backbone, BEV projection in its standard-op form, BEV convs, tokens)."""

    name = "fisheye"

    def __init__(self, cfg: PerceptionConfig, rig: Any, table_cache: str | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        c = self.bev_channels = cfg.fisheye_channels
        self.backbone = FisheyeBackbone(c)
        cams = [rig.fisheye[name] for name in FISHEYE_CAMERAS]
        self.native_hw = {name: (cam.height, cam.width) for name, cam in zip(FISHEYE_CAMERAS, cams)}
        table = load_or_build_table(cams, TableSpec(cfg.bev_grid, cfg.fisheye_feat_hw, "ground"), table_cache)
        self.projector = BevProjector(table)
        self.bev = nn.Sequential(conv_bn(c + 1, c), nn.ReLU(inplace=True), conv_bn(c, c), nn.ReLU(inplace=True))
        self.tokens = TokenPool(c, (4, 4), cfg.d_enc)
        # Which BEV cells any camera sees: the network is told, so "no view" and "dark" are not confused.
        ones = torch.ones(1, len(cams), *cfg.fisheye_feat_hw, 1)
        self.register_buffer("coverage", self.projector(ones).permute(0, 3, 1, 2).clone(), persistent=False)

    @property
    def n_tokens(self) -> int:
        """LLM tokens (edge/encoders/scene_tokens.py: per-side posteriors of the BEV this modality alone sees)."""
        return BEV_TOKENS

    def preprocess(self, sample: Frame, diag: Diagnostics | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A frame -> (4, H, W, 3) uint8 images in camera order FISHEYE_CAMERAS and a (4,) present mask."""
        h, w = self.cfg.fisheye_hw
        imgs = np.zeros((len(FISHEYE_CAMERAS), h, w, 3), np.uint8)
        present = np.zeros(len(FISHEYE_CAMERAS), bool)
        for i, cam in enumerate(FISHEYE_CAMERAS):
            img = sample.sensor("fisheye", cam)
            if img is not None:
                imgs[i] = to_bgr(img, (h, w), f"fisheye/{cam}", diag, self.native_hw[cam])
                present[i] = True
        return imgs, present

    def forward(self, images: Tensor, present: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """images (B, 4, 3, H, W) normalised (see base.image_tensor), present (B, 4) bool -> (bev, tokens)."""
        b, n = images.shape[:2]
        feat = self.backbone(images.flatten(0, 1))                        # (B*4, C, Hf, Wf)
        feat = feat.unflatten(0, (b, n))
        if present is not None:  # a missing camera contributes nothing (zero features), like a dark lens
            feat = feat * present.to(feat.dtype)[:, :, None, None, None]
        bev = self.projector(feat.permute(0, 1, 3, 4, 2).contiguous()).permute(0, 3, 1, 2)  # (B, C, nx, ny)
        # Projected at the grid resolution (no aliasing), processed at half of it (4x fewer cells on a CPU).
        bev = nn.functional.avg_pool2d(torch.cat([bev, self.coverage.expand(b, -1, -1, -1)], 1), 2)
        bev = self.bev(bev)
        return bev, self.tokens(bev)

    def encode(self, sample: Frame, diag: Diagnostics | None = None, setting: float | None = None
               ) -> EncoderOutput | None:
        """One frame -> BEV features (1, C, nx/2, ny/2), or None when no camera is present. (The network's pooled
        tokens are not the LLM's: those are the stack's scene tokens of the BEV the fisheyes alone see.)"""
        imgs, present = self.preprocess(sample, diag)
        if not present.any():
            return None
        with torch.no_grad():
            bev, _ = self.run_network("", self, image_tensor(imgs)[None], torch.from_numpy(present)[None])
        return EncoderOutput(bev=BevFeatures(bev))

    def training_sample(self, sample: Frame, diag: Diagnostics | None = None) -> dict[str, np.ndarray]:
        """The four images (blank when missing), which cameras are present, and whether any is."""
        imgs, cameras = self.preprocess(sample, diag)
        return {"images": imgs, "cameras": cameras, "present": np.asarray(cameras.any())}

    def drop_inputs(self, columns: Columns, rng: np.random.Generator) -> Columns:
        cameras = columns["cameras"].copy()
        drop = rng.random(len(cameras)) < P_MISSING_CAMERA
        cameras[drop, rng.integers(0, cameras.shape[1], drop.sum())] = False
        return {**columns, "cameras": cameras}

    def bev_training(self, columns: Columns, rng: np.random.Generator | None) -> tuple[Tensor, None]:
        bev, _ = self(image_batch(columns["images"], rng), torch.from_numpy(columns["cameras"]))
        return bev, None

    def network_inputs(self, variant: str = "", seed: int = 0) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(seed)
        images = torch.rand((1, len(FISHEYE_CAMERAS), 3, *self.cfg.fisheye_hw), generator=g) * 2 - 1
        return images, torch.ones(1, len(FISHEYE_CAMERAS), dtype=torch.bool)

    def cost(self) -> Cost:
        h, w = self.cfg.fisheye_hw
        x = torch.zeros(1, len(FISHEYE_CAMERAS), 3, h, w)
        was = self.training
        self.eval()
        macs = count_macs(self, lambda: self(x))
        self.train(was)
        return Cost(n_params(self), macs, self.n_tokens, self.cfg.d_enc)
