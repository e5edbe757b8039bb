"""The LiDAR encoder: clouds -> pillar raster (the scatter op, in base_link on the fusion's BEV grid) -> a small
conv head -> BEV features at half the grid's resolution, the shape every BEV modality hands the fusion head.

Its LLM tokens are the stack's scene tokens of the posterior it alone gives (edge.encoders.scene_tokens), as for
every BEV modality. Network part for engines (ONNX Runtime, TensorRT): `features`, raster -> features; the scatter
stays the op in every backend (its input size changes every scan), as the core's ultrasonic raster does.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from edge.encoders.base import (BevFeatures, BoundMethod, Columns, Cost, Diagnostics, EncoderOutput, ModalityEncoder,
                                count_macs, n_params)
from edge.encoders.config import PerceptionConfig
from edge.encoders.scene_tokens import BEV_TOKENS
from edge.frames import Frame
from edge.sensors.rig import Rig

from edge_lidar.ops import CHANNELS, scatter_pillars
from edge_lidar.rig import NAME, Lidar, lidars

Z_RANGE = (-0.3, 3.2)  # metres in base_link: the ground's returns (noise below 0) up to a van's roof
COUNT_SCALE = math.log1p(64.0)  # log1p(count) / this: a cell at 0.2 m near the car holds tens of returns
INTENSITY_SCALE = 100.0
FEATURES = 24  # BEV feature channels, as the fisheye's (PerceptionConfig.fisheye_channels)


class Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                                  nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.body(x))


class LidarEncoder(ModalityEncoder):
    """Clouds of the rig's LiDARs -> BEV features (1, FEATURES, nx/2, ny/2)."""

    name = NAME

    def __init__(self, cfg: PerceptionConfig, sensors: tuple[Lidar, ...]) -> None:
        super().__init__()
        self.cfg = cfg
        self.grid = cfg.bev_grid
        self.sensors = {lidar.name: lidar for lidar in sensors}
        c = self.bev_channels = FEATURES
        self.stem = nn.Sequential(nn.Conv2d(len(CHANNELS), c, 3, 2, padding=1, bias=False), nn.BatchNorm2d(c),
                                  nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(Residual(c), Residual(c))

    @property
    def n_tokens(self) -> int:
        return BEV_TOKENS

    def preprocess(self, sample: Frame, diag: Diagnostics | None = None) -> np.ndarray | None:
        """The frame's clouds in base_link, (N, 4) float32, or None when no LiDAR of the rig sent one."""
        clouds = sample.get(NAME) or {}
        for name in clouds:
            if name not in self.sensors and diag is not None:
                diag.note(f"lidar:unknown:{name}", f"lidar/{name}: not a LiDAR of this rig; ignored")
        parts = [lidar.to_base(np.asarray(clouds[name], np.float32)) for name, lidar in self.sensors.items()
                 if clouds.get(name) is not None]
        return np.concatenate(parts) if parts else None

    def pillars(self, points: np.ndarray) -> Tensor:
        """(N, 4) base_link points -> (1, 4, nx, ny) raster (the scatter op)."""
        return scatter_pillars(torch.from_numpy(np.ascontiguousarray(points, np.float32)), self.grid, Z_RANGE)[None]

    def features(self, raster: Tensor) -> tuple[Tensor]:
        """(B, 4, nx, ny) raster -> (features (B, C, nx/2, ny/2),); counts and intensities brought to ~[0, 1]."""
        count, max_h, mean_h, intensity = raster.unbind(1)
        x = torch.stack([torch.log1p(count) / COUNT_SCALE, max_h, mean_h, intensity / INTENSITY_SCALE], 1)
        return (self.blocks(self.stem(x)),)

    def forward(self, raster: Tensor) -> Tensor:
        return self.features(raster)[0]

    def encode(self, sample: Frame, diag: Diagnostics | None = None, setting: float | None = None
               ) -> EncoderOutput | None:
        points = self.preprocess(sample, diag)
        if points is None:
            return None
        with torch.no_grad():
            (bev,) = self.run_network("", self.features, self.pillars(points))
        return EncoderOutput(bev=BevFeatures(bev))

    def training_sample(self, sample: Frame, diag: Diagnostics | None = None) -> dict[str, np.ndarray]:
        """The core's perception training cache (edge.perception.cache): the pillar raster (float16) and whether
        a cloud came; the raster, not the cloud, so every sample has one shape."""
        points = self.preprocess(sample, diag)
        g = self.grid
        raster = self.pillars(points)[0].numpy() if points is not None else np.zeros((len(CHANNELS), g.nx, g.ny))
        return {"pillars": raster.astype(np.float16), "present": np.asarray(points is not None)}

    def bev_training(self, columns: Columns, rng: np.random.Generator | None) -> tuple[Tensor, None]:
        """BEV features of a batch of cached rasters; no augmentation, no detail map."""
        (bev,) = self.features(torch.from_numpy(np.asarray(columns["pillars"], np.float32)))
        return bev, None

    def network(self, variant: str = "") -> nn.Module:
        return BoundMethod(self, "features")

    def network_inputs(self, variant: str = "", seed: int = 0) -> tuple[Tensor]:
        """A raster of a random cloud around the car: ground returns and a few boxes' worth of points."""
        g = torch.Generator().manual_seed(seed)
        n = 20000
        xy = torch.rand(n, 2, generator=g) * 24 - 12
        z = torch.where(torch.rand(n, generator=g) < 0.7, torch.randn(n, generator=g) * 0.02,
                        torch.rand(n, generator=g) * 2.0)
        points = torch.cat([xy, z[:, None], torch.rand(n, 1, generator=g) * 80], 1)
        return (self.pillars(points.numpy()),)

    def cost(self) -> Cost:
        raster = self.network_inputs()[0]
        was = self.training
        self.eval()
        macs = count_macs(self, lambda: self(raster))
        self.train(was)
        return Cost(n_params(self), macs, self.n_tokens, self.cfg.d_enc)


def build(cfg: PerceptionConfig, rig: Rig, table_cache: str | None = None) -> LidarEncoder:
    """The plugin's encoder factory (ModalityPlugin.encoder). A rig without LiDARs has nothing for it to encode:
    ValueError, so the perception stack leaves the modality out (logged) and its fusion head keeps the rig's own
    BEV modalities."""
    sensors = lidars(rig)
    if not sensors:
        raise ValueError(f"rig {rig.source} has no LiDAR (no plugins: {NAME}: section)")
    return LidarEncoder(cfg, sensors)
