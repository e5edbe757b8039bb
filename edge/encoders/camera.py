"""Front-camera plugin: a small ViT whose patch tokens are pruned between blocks (EViT: keep the top-k tokens
by CLS attention, fuse the rest into one token; the `prune_tokens` op), giving LLM tokens plus two light heads
(lighting day/dusk/night and a coarse obstacle map of the road ahead) that give it a training signal.

Why pruning: the front camera is the most expensive token source; dropping 50-75 % of patches after the first
blocks cuts the cost of the remaining blocks roughly in proportion, and the scheduler can pick `keep` at run time.
Training (its own heads): the frame's lighting and the obstacles ahead in the BEV ground truth (`front_map_targets`),
photometric jitter, each step at one of the keep ratios the scheduler plans with.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from edge.encoders.base import (BoundMethod, ClassScores, Cost, Diagnostics, EncoderOutput, ModalityEncoder,
                                TrainingRows, count_macs, image_batch, image_tensor, n_params, to_bgr)
from edge.encoders.config import IGNORE, LIGHTING, OBSTACLE_CLASSES, PerceptionConfig
from edge.frames import Frame
from edge.kernels import prune_tokens

PATCH = 16
FRONT_MAP = (8, 8)              # obstacle map ahead: x 4..12 m, y -4..4 m, 1 m cells
FRONT_MAP_EXTENT = (4.0, 12.0, -4.0, 4.0)
EVAL_BATCH = 32


def front_map_targets(bev: np.ndarray, cfg: PerceptionConfig) -> tuple[np.ndarray, np.ndarray]:
    """(B, nx, ny) classes -> (B, 8, 8) obstacle-present targets over x 4..12 m, y -4..4 m, and a validity mask."""
    g = cfg.bev_grid
    x0, x1, y0, y1 = FRONT_MAP_EXTENT
    i0, i1 = round((x0 - g.x_min) / g.resolution), round((x1 - g.x_min) / g.resolution)
    j0, j1 = round((y0 - g.y_min) / g.resolution), round((y1 - g.y_min) / g.resolution)
    region = bev[:, i0:i1, j0:j1]
    bi, bj = (i1 - i0) // FRONT_MAP[0], (j1 - j0) // FRONT_MAP[1]
    blocks = region.reshape(len(bev), FRONT_MAP[0], bi, FRONT_MAP[1], bj)
    obstacle = np.isin(blocks, OBSTACLE_CLASSES).any((2, 4))
    valid = (blocks != IGNORE).any((2, 4))
    return obstacle.astype(np.float32), valid


def keep_variant(keep: float) -> str:
    """Engine variant name of a keep ratio ('keep0.5')."""
    return f"keep{keep:g}"


def variant_keep(variant: str) -> float:
    if not variant.startswith("keep"):
        raise ValueError(f"camera engine variant {variant!r} is not 'keep<ratio>'")
    return float(variant[4:])


class Block(nn.Module):
    """Pre-norm transformer block that also returns the CLS query and keys for pruning scores."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = nn.functional.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, c))
        x = x + self.mlp(self.norm2(x))
        return x, q[:, :, 0].contiguous(), k.contiguous()


def build(cfg: PerceptionConfig, rig: Any, table_cache: str | None = None) -> CameraEncoder:
    """The camera plugin's encoder factory (edge.modalities.builtin.CAMERA.encoder): the rig's front camera."""
    front = rig.cameras.get("front")
    return CameraEncoder(cfg, (front.height, front.width) if front is not None else None)


class CameraEncoder(ModalityEncoder):
    """Front image (B, 3, H, W) -> tokens (B, n_tokens, d_enc), lighting logits (B, 3), front map logits (B, 8, 8).

    Network part for engines: `forward` at one keep ratio (the token counts after each pruning stage depend on it,
    so each ratio is its own fixed-shape engine, variant `keep<ratio>`; pruning in its standard-op form, TopK).
    Its run-time setting is the keep ratio (None: `keep`); each ratio is its own stage, `camera@<ratio>`."""

    ENGINE_KEEPS = (1.0, 0.5, 0.25)  # the ratios the scheduler plans with: engines built up front, each trained

    name = "camera"
    head_batch = 8  # front images per training step

    def __init__(self, cfg: PerceptionConfig, native_hw: tuple[int, int] | None = None, dim: int = 96, depth: int = 4, heads: int = 4,
                 prune_after: tuple[int, ...] = (1, 2), keep: float = 0.5) -> None:
        super().__init__()
        self.cfg = cfg
        self.native_hw = native_hw
        h, w = cfg.front_hw
        self.grid_hw = (h // PATCH, w // PATCH)
        n_patches = self.grid_hw[0] * self.grid_hw[1]
        self.patch = nn.Conv2d(3, dim, PATCH, PATCH)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, n_patches + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.prune_after = tuple(prune_after)
        self.keep = keep
        self.norm = nn.LayerNorm(dim)
        self.light_head = nn.Linear(dim, len(LIGHTING))
        self.map_head = nn.Linear(dim, FRONT_MAP[0] * FRONT_MAP[1])
        self.token_proj = nn.Linear(dim, cfg.d_enc)
        self.n_out = cfg.tokens["camera"]

    @property
    def n_tokens(self) -> int:
        return self.n_out

    def preprocess(self, sample: Frame, diag: Diagnostics | None = None) -> np.ndarray | None:
        img = sample.sensor("camera", "front")
        if img is None:
            return None
        return to_bgr(img, self.cfg.front_hw, "camera/front", diag, self.native_hw)

    def forward(self, image: Tensor, keep: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """keep: fraction of patch tokens left after all pruning stages (1.0 = no pruning; default self.keep)."""
        keep = self.keep if keep is None else keep
        x = self.patch(image).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        stage_keep = keep ** (1.0 / max(1, len(self.prune_after)))
        q_cls = keys = None
        for i, blk in enumerate(self.blocks):
            x, q_cls, keys = blk(x)
            if keep < 1.0 and i in self.prune_after:
                n = x.shape[1]
                k = max(self.n_out, 1 + int(math.ceil(stage_keep * (n - 1))))
                if k < n:
                    x = prune_tokens(x, k, q_cls=q_cls, keys=keys, has_cls=True, fuse=True).tokens
        x = self.norm(x)
        cls = x[:, 0]
        # LLM tokens: CLS + the most attended tokens, a fixed count whatever `keep` was.
        if x.shape[1] > self.n_out:
            scores = torch.softmax(torch.einsum("bhd,bhnd->bhn", q_cls, keys) / math.sqrt(keys.shape[-1]), -1).mean(1)
            scores = scores[:, : x.shape[1]]
            x = prune_tokens(x, self.n_out, scores=scores.float().contiguous(), has_cls=True, fuse=False).tokens
        elif x.shape[1] < self.n_out:
            x = torch.cat([x, x.new_zeros(x.shape[0], self.n_out - x.shape[1], x.shape[2])], 1)
        return (self.token_proj(x), self.light_head(cls),
                self.map_head(cls).reshape(-1, *FRONT_MAP))

    def stage(self, setting: float | None = None) -> str:
        return f"{self.name}@{self.keep if setting is None else setting:g}"

    def encode(self, sample: Frame, diag: Diagnostics | None = None, setting: float | None = None
               ) -> EncoderOutput | None:
        """One frame at keep ratio `setting` -> tokens and extras {'lighting', 'lighting_prob', 'front_map'}, or None
        without a front image."""
        img = self.preprocess(sample, diag)
        if img is None:
            return None
        keep = self.keep if setting is None else float(setting)
        with torch.no_grad():
            tok, light, fmap = self.run_network(keep_variant(keep), lambda x: self(x, keep), image_tensor(img)[None])
        p = torch.softmax(light, -1)[0]
        return EncoderOutput(tok, extras={"lighting": LIGHTING[int(p.argmax())], "lighting_prob": float(p.max()),
                                          "front_map": torch.sigmoid(fmap)[0]})

    def training_sample(self, sample: Frame, diag: Diagnostics | None = None) -> dict[str, np.ndarray]:
        """The front image (black when absent) and whether it is there."""
        img = self.preprocess(sample, diag)
        return {"image": img if img is not None else np.zeros((*self.cfg.front_hw, 3), np.uint8),
                "present": np.asarray(img is not None)}

    def _rows(self, rows: TrainingRows) -> np.ndarray:
        """The rows it learns from and is scored on: a front image and a known lighting."""
        return np.flatnonzero(rows.columns["present"] & (rows.lighting >= 0))

    def head_losses(self, rows: TrainingRows, batch: int, rng: np.random.Generator) -> dict[str, Tensor]:
        """Lighting cross-entropy and the front map's masked binary cross-entropy, at a random keep ratio."""
        served = self._rows(rows)
        if not len(served):
            return {}
        idx = rng.choice(served, batch)
        fmap_target, valid = front_map_targets(rows.bev[idx], self.cfg)
        image = image_batch(rows.columns["image"][idx], rng)
        keep = float(rng.choice(self.ENGINE_KEEPS))
        _, light, fmap = self(image, keep)
        mask = torch.from_numpy(valid).float()
        bce = nn.functional.binary_cross_entropy_with_logits(fmap, torch.from_numpy(fmap_target), reduction="none")
        return {"camera_light": 0.5 * nn.functional.cross_entropy(light, torch.from_numpy(rows.lighting[idx])),
                "camera_map": 0.5 * (bce * mask).sum() / mask.sum().clamp(min=1.0)}

    def head_scores(self, rows: TrainingRows) -> dict[str, ClassScores | float]:
        """Lighting accuracy at its default keep ratio (`camera_keep`)."""
        served = self._rows(rows)
        predicted = [np.zeros(0, np.int64)]
        for start in range(0, len(served), EVAL_BATCH):
            _, light, _ = self(image_batch(rows.columns["image"][served[start:start + EVAL_BATCH]], None))
            predicted.append(light.argmax(1).numpy())
        return {"camera_lighting": ClassScores(LIGHTING, rows.lighting[served], np.concatenate(predicted)),
                "camera_keep": self.keep}

    def variants(self) -> tuple[str, ...]:
        return tuple(keep_variant(k) for k in self.ENGINE_KEEPS)

    def network(self, variant: str = "") -> nn.Module:
        return BoundMethod(self, "forward", keep=variant_keep(variant))

    def network_inputs(self, variant: str = "", seed: int = 0) -> tuple[Tensor]:
        g = torch.Generator().manual_seed(seed)
        return (torch.rand((1, 3, *self.cfg.front_hw), generator=g) * 2 - 1,)

    def cost(self, keep: float | None = None) -> Cost:
        x = torch.zeros(1, 3, *self.cfg.front_hw)
        was = self.training
        self.eval()
        macs = count_macs(self, lambda: self(x, keep))
        self.train(was)
        return Cost(n_params(self), macs, self.n_tokens, self.cfg.d_enc)
