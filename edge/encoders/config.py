"""Sizes shared by the encoders, the fusion head, the cache and the checkpoints (stored in checkpoint metadata).

Why these numbers: 2 CPU cores must train the whole stack in minutes, so cameras are used at a quarter of their
resolution (JPEG is decoded at that size directly) and BEV is predicted at 0.2 m (GT is 0.1 m; see
edge/perception/labels.py for the resampling).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from edge.kernels import BevGrid

BEV_CLASSES = ("free", "static", "vehicle", "pedestrian_cyclist", "unknown")
OBSTACLE_CLASSES = (1, 2, 3)
IGNORE = 255  # a BEV target cell without ground truth (edge.perception.labels), never scored or learned
AUDIO_EVENTS = ("none", "siren", "horn")
DIRECTIONS = ("front", "left", "rear", "right")  # counter-clockwise, so a 90-degree turn is +1 (mod 4)
LIGHTING = ("day", "dusk", "night")
FISHEYE_CAMERAS = ("front", "rear", "left", "right")


@dataclass(frozen=True)
class PerceptionConfig:
    image_reduce: int = 4                      # decode 640x480 fisheye / 640x384 front at 1/4
    fisheye_hw: tuple[int, int] = (96, 128)      # decoded at 160x120, resized
    front_hw: tuple[int, int] = (96, 160)
    grid: tuple[float, float, float, float, float] = (-8.0, 12.0, -10.0, 10.0, 0.2)  # x_min, x_max, y_min, y_max, res
    fisheye_feat_hw: tuple[int, int] = (24, 32)
    fisheye_channels: int = 24
    ultrasonic_channels: int = 16
    arc_thickness: float = 0.3
    audio_rate: int = 16000
    audio_window_s: float = 0.96
    d_enc: int = 128
    tokens: dict = field(default_factory=lambda: {"fisheye": 16, "ultrasonic": 8, "audio": 8, "camera": 16})

    @property
    def bev_grid(self) -> BevGrid:
        return BevGrid(*self.grid)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PerceptionConfig:
        raw = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"perception config: unknown keys {sorted(unknown)}")
        for k in ("fisheye_hw", "front_hw", "grid", "fisheye_feat_hw"):
            if k in raw:
                raw[k] = tuple(raw[k])
        return cls(**raw)
