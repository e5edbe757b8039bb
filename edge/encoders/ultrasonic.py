"""Ultrasonic plugin: Range readings -> BEV occupied/free/unknown raster (the rasterisation op) -> content-aware
dilated convolutions -> BEV features and LLM tokens.

Why content-aware dilation (arXiv 2402.00637): an echo arc says "something somewhere on this arc"; how far the
evidence should spread depends on the local pattern (a lone arc vs. overlapping arcs vs. free cones), so each
location predicts its own mixture over dilation rates instead of using one fixed receptive field.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from edge.encoders.base import (BevFeatures, BoundMethod, Columns, Cost, Diagnostics, EncoderOutput, ModalityEncoder,
                                TokenPool, count_macs, n_params)
from edge.encoders.scene_tokens import BEV_TOKENS, EchoFeatures
from edge.encoders.config import PerceptionConfig
from edge.frames import Frame
from edge.kernels import sensor_table, ultrasonic_raster

P_MISSING_READING = 0.05  # training: each reading missing (NaN) with this probability, so a dead transducer degrades
# gracefully


class ContentAwareDilatedConv(nn.Module):
    """sum_r w_r(x) * conv3x3_dilation_r(x), with w(x) = softmax over rates predicted per location from x."""

    def __init__(self, channels: int, rates: tuple[int, ...] = (1, 2, 4, 8)) -> None:
        super().__init__()
        self.rates = rates
        self.branches = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=r, dilation=r, bias=False) for r in rates)
        self.gate = nn.Sequential(nn.Conv2d(channels, channels // 2, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(channels // 2, len(rates), 1))
        self.norm = nn.BatchNorm2d(channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        w = torch.softmax(self.gate(x), dim=1)                              # (B, R, H, W)
        y = sum(w[:, i:i + 1] * branch(x) for i, branch in enumerate(self.branches))
        return self.act(self.norm(y) + x)


def build(cfg: PerceptionConfig, rig: Any, table_cache: str | None = None) -> UltrasonicEncoder:
    """The ultrasonic plugin's encoder factory (edge.modalities.builtin.ULTRASONIC.encoder)."""
    return UltrasonicEncoder(cfg, rig)


class UltrasonicEncoder(ModalityEncoder):
    """(B, S) ranges in the rig's sensor order -> BEV features (B, C, nx/2, ny/2) and tokens (B, n_tokens, d_enc).

    Network part for engines: `features` (raster -> features, tokens). The rasterisation stays the edge kernel
    (C++ / CUDA, float64 geometry) in every backend: its ONNX form computes in float32 and may flip a cell on an
    arc boundary, which the per-cell decoder downstream would amplify, and the raster also feeds the fusion head
    (its `detail`). Its side tokens also carry the echoes themselves (`side_features`, scene_tokens.EchoFeatures)."""

    name = "ultrasonic"
    detail_channels = 3  # the raster's occupied / free / unknown channels

    def __init__(self, cfg: PerceptionConfig, rig: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.sensor_names = [s.name for s in rig.ultrasonic]
        self.register_buffer("sensors", sensor_table(rig.ultrasonic), persistent=False)
        self.max_range = {s.name: s.max_range for s in rig.ultrasonic}
        self.echoes = EchoFeatures(np.array([s.position[:2] for s in rig.ultrasonic]),
                                   np.array([s.yaw for s in rig.ultrasonic]), rig.footprint())
        c = self.bev_channels = cfg.ultrasonic_channels
        # stride 2: the raster is drawn at the grid resolution, features live at half of it (as the fisheye ones)
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.cadc = nn.Sequential(ContentAwareDilatedConv(c), ContentAwareDilatedConv(c))
        self.tokens = TokenPool(c, (2, 4), cfg.d_enc)

    @property
    def n_tokens(self) -> int:
        """LLM tokens (edge/encoders/scene_tokens.py: per-side posteriors of the BEV this modality alone sees)."""
        return BEV_TOKENS

    def preprocess(self, sample: Frame, diag: Diagnostics | None = None) -> np.ndarray:
        """A frame -> (S,) float32 ranges; +inf no echo, -inf too close, NaN = say nothing (missing or invalid).

        NaN and out-of-range readings are ignored (NaN) with a diagnostic naming the sensor, never clamped into
        a false obstacle."""
        out = np.full(len(self.sensor_names), np.nan, np.float32)
        readings = sample.get("ultrasonic") or {}
        for name in readings:
            if name not in self.max_range and diag is not None:
                diag.note(f"us:unknown:{name}", f"ultrasonic/{name}: not a sensor of this rig; ignored")
        for i, name in enumerate(self.sensor_names):
            r = readings.get(name)
            if r is None:
                continue
            value = float(r["range"]) if isinstance(r, dict) else float(r)
            status = r.get("status") if isinstance(r, dict) else None
            if math.isnan(value) or status == "invalid":
                if diag is not None:
                    diag.note(f"us:bad:{name}", f"ultrasonic/{name}: invalid range {value} (NaN or outside "
                                                f"[min_range, max_range]); ignored")
                continue
            if math.isfinite(value) and value > self.max_range[name] * 1.5:
                if diag is not None:
                    diag.note(f"us:far:{name}", f"ultrasonic/{name}: range {value} m beyond the sensor's reach; ignored")
                continue
            out[i] = value
        return out

    def raster(self, ranges: Tensor) -> Tensor:
        return ultrasonic_raster(ranges.float().contiguous(), self.sensors, self.cfg.bev_grid, self.cfg.arc_thickness)

    def forward(self, ranges: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, S) ranges -> (features (B, C, nx/2, ny/2), tokens, raster (B, 3, nx, ny) for the fusion's last layer)."""
        raster = self.raster(ranges)
        bev, tokens = self.features(raster)
        return bev, tokens, raster

    def features(self, raster: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, nx, ny) raster -> (features (B, C, nx/2, ny/2), tokens)."""
        bev = self.cadc(self.stem(raster))
        return bev, self.tokens(bev)

    def encode(self, sample: Frame, diag: Diagnostics | None = None, setting: float | None = None
               ) -> EncoderOutput | None:
        """One frame -> BEV features (1, C, nx/2, ny/2), the raster (1, 3, nx, ny) as their detail and the per-side
        echoes, or None when no sensor reported."""
        ranges = self.preprocess(sample, diag)
        if np.isnan(ranges).all():
            return None
        with torch.no_grad():
            raster = self.raster(torch.from_numpy(ranges)[None])
            bev, _ = self.run_network("", self.features, raster)
        return EncoderOutput(bev=BevFeatures(bev, raster, self.echoes(ranges)))

    def training_sample(self, sample: Frame, diag: Diagnostics | None = None) -> dict[str, np.ndarray]:
        """The readings in the rig's order (NaN: none) and whether any is there."""
        ranges = self.preprocess(sample, diag)
        return {"ranges": ranges, "present": np.asarray(not np.isnan(ranges).all())}

    def drop_inputs(self, columns: Columns, rng: np.random.Generator) -> Columns:
        ranges = columns["ranges"].copy()
        ranges[rng.random(ranges.shape) < P_MISSING_READING] = np.nan
        return {**columns, "ranges": ranges}

    def bev_training(self, columns: Columns, rng: np.random.Generator | None) -> tuple[Tensor, Tensor]:
        """Features and the raster (its detail); no signal augmentation."""
        bev, _, raster = self(torch.from_numpy(columns["ranges"]))
        return bev, raster

    def network(self, variant: str = "") -> nn.Module:
        return BoundMethod(self, "features")

    def network_inputs(self, variant: str = "", seed: int = 0) -> tuple[Tensor]:
        g = torch.Generator().manual_seed(seed)
        ranges = 0.3 + 4.7 * torch.rand((1, len(self.sensor_names)), generator=g)
        ranges[0, ::4] = float("inf")  # some sensors without an echo, as on a real drive
        return (self.raster(ranges),)

    def cost(self) -> Cost:
        x = torch.full((1, len(self.sensor_names)), 2.0)
        was = self.training
        self.eval()
        macs = count_macs(self, lambda: self(x))
        self.train(was)
        return Cost(n_params(self), macs, self.n_tokens, self.cfg.d_enc)
