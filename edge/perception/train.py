"""Training loop for the perception stack: BEV occupancy (fisheye + ultrasonic + fusion, modality dropout),
audio event/direction and the front-camera ViT heads, jointly, on cached drives. CPU, minutes, resumable.

Resumability: every `save_every` steps the weights, the optimizer state (safetensors, no pickle) and the step go
to `<out>/train_state*`; batches of step t are drawn from a generator seeded by (seed, t), so a resumed run
draws exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm import tqdm

from edge.encoders.config import BEV_CLASSES
from edge.encoders.stack import PerceptionStack
from edge.perception.batches import DropoutConfig, audio_batch, bev_batch, camera_batch
from edge.perception.labels import IGNORE

STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"


@dataclass
class TrainConfig:
    steps: int = 600
    batch: int = 8
    audio_batch: int = 32
    camera_batch: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 20
    seed: int = 0
    save_every: int = 50
    camera_keeps: tuple[float, ...] = (1.0, 0.5, 0.25)
    dropout: DropoutConfig = field(default_factory=DropoutConfig)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to 5 % (no scheduler object to pickle)."""
    warm = min(1.0, (step + 1) / max(1, cfg.warmup))
    return cfg.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(step, cfg.steps) / cfg.steps)))


def class_weights(bev: np.ndarray) -> Tensor:
    """Inverse-sqrt frequency weights over the BEV classes (rare pedestrians count, free space does not swamp)."""
    counts = np.bincount(bev[bev != IGNORE].ravel(), minlength=len(BEV_CLASSES)).astype(np.float64) + 1.0
    w = (counts.sum() / counts) ** 0.5
    return torch.tensor(w / w.mean(), dtype=torch.float32)


class Trainer:
    def __init__(self, stack: PerceptionStack, data: dict[str, np.ndarray], cfg: TrainConfig) -> None:
        self.stack, self.data, self.cfg = stack, data, cfg
        self.opt = torch.optim.AdamW(stack.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.step = 0
        self.bev_idx = np.flatnonzero((data["bev"] != IGNORE).any((1, 2)))
        self.audio_idx = np.flatnonzero(data["audio_present"])
        self.audio_event_idx = self.audio_idx[data["event"][self.audio_idx] > 0]
        self.camera_idx = np.flatnonzero(data["front_present"] & (data["lighting"] >= 0))
        self.weights = class_weights(data["bev"][self.bev_idx])
        if len(self.bev_idx) == 0:
            raise ValueError("training data has no BEV ground truth")

    def init_normalisation(self) -> None:
        """Audio log-mel statistics from the training data (stored in the checkpoint as buffers)."""
        lm = self.data["logmel"][self.audio_idx].astype(np.float32) if len(self.audio_idx) else np.zeros(1)
        self.stack.audio.mean.fill_(float(lm.mean()))
        self.stack.audio.std.fill_(float(lm.std() + 1e-3))

    def losses(self, rng: np.random.Generator) -> dict[str, Tensor]:
        s, cfg, d = self.stack, self.cfg, self.data
        out: dict[str, Tensor] = {}
        b = bev_batch(d, rng.choice(self.bev_idx, cfg.batch), rng, cfg.dropout)
        fe, _ = s.fisheye(b["images"], b["present"])
        us, _, raster = s.ultrasonic(b["ranges"])
        coarse, fine = s.fusion.forward_masked(fe, us, raster, b["use_fisheye"], b["use_ultrasonic"])
        out["bev"] = nn.functional.cross_entropy(fine, b["targets"], self.weights, ignore_index=IGNORE)
        out["bev_coarse"] = 0.5 * nn.functional.cross_entropy(coarse, b["coarse"], self.weights, ignore_index=IGNORE)
        if len(self.audio_idx):
            n_ev = min(len(self.audio_event_idx), cfg.audio_batch // 2)
            idx = np.concatenate([rng.choice(self.audio_event_idx, n_ev) if n_ev else np.zeros(0, int),
                                  rng.choice(self.audio_idx, cfg.audio_batch - n_ev)])
            a = audio_batch(d, idx, rng)
            ev, dr, _ = s.audio(a["logmel"], a["gcc"], a["gcc_avg"])
            out["audio_event"] = nn.functional.cross_entropy(ev, a["event"])
            if bool((a["direction"] >= 0).any()):
                out["audio_dir"] = nn.functional.cross_entropy(dr, a["direction"], ignore_index=-1)
        if len(self.camera_idx):
            c = camera_batch(d, rng.choice(self.camera_idx, cfg.camera_batch), rng, s.cfg)
            keep = float(rng.choice(cfg.camera_keeps))
            _, light, fmap = s.camera(c["image"], keep)
            out["camera_light"] = 0.5 * nn.functional.cross_entropy(light, c["lighting"])
            valid = c["front_valid"].float()
            bce = nn.functional.binary_cross_entropy_with_logits(fmap, c["front_map"], reduction="none")
            out["camera_map"] = 0.5 * (bce * valid).sum() / valid.sum().clamp(min=1.0)
        return out

    def train_step(self) -> dict[str, float]:
        rng = np.random.default_rng((self.cfg.seed, self.step))
        torch.manual_seed(self.cfg.seed * 1_000_003 + self.step)
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.step, self.cfg)
        self.stack.train()
        parts = self.losses(rng)
        total = sum(parts.values())
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        nn.utils.clip_grad_norm_(self.stack.parameters(), 5.0)
        self.opt.step()
        self.step += 1
        return {"loss": float(total.detach()), **{k: float(v.detach()) for k, v in parts.items()}}

    # ------------------------------------------------------------------ resumable state
    def save_state(self, out: Path, extra: dict[str, Any]) -> None:
        self.stack.save(out, {k: json.dumps(v) for k, v in extra.items()})
        sd = self.opt.state_dict()
        tensors = {f"{i}.{k}": v.contiguous() for i, st in sd["state"].items() for k, v in st.items()
                   if isinstance(v, Tensor)}
        groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
        save_file(tensors, str(out / STATE_TENSORS), metadata={"param_groups": json.dumps(groups)})
        (out / STATE_JSON).write_text(json.dumps({"step": self.step, "train": _jsonable(asdict(self.cfg)),
                                                   **extra}, indent=1))

    def load_state(self, out: Path) -> None:
        meta = json.loads((out / STATE_JSON).read_text())
        flat = load_file(str(out / STATE_TENSORS))
        from safetensors import safe_open
        with safe_open(str(out / STATE_TENSORS), "pt") as f:
            groups = json.loads(f.metadata()["param_groups"])
        state: dict[int, dict[str, Tensor]] = {}
        for key, v in flat.items():
            i, name = key.split(".", 1)
            state.setdefault(int(i), {})[name] = v
        self.opt.load_state_dict({"state": state, "param_groups": groups})
        self.step = int(meta["step"])


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def train(trainer: Trainer, out: Path, extra: dict[str, Any], progress: bool = True,
          on_step: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Run to trainer.cfg.steps from trainer.step, saving every save_every steps and at the end."""
    cfg = trainer.cfg
    history: list[dict[str, float]] = []
    ema: dict[str, float] = {}
    bar = tqdm(total=cfg.steps, initial=trainer.step, desc="train perception", unit="step", disable=not progress)
    started = time.perf_counter()
    while trainer.step < cfg.steps:
        logs = trainer.train_step()
        history.append(logs)
        for k, v in logs.items():
            ema[k] = v if k not in ema else 0.9 * ema[k] + 0.1 * v
        bar.update(1)
        bar.set_postfix({k: f"{ema[k]:.3f}" for k in ("loss", "bev", "audio_event", "audio_dir") if k in ema})
        if on_step is not None:
            on_step(trainer.step, logs)
        if trainer.step % cfg.save_every == 0 or trainer.step == cfg.steps:
            trainer.save_state(out, {**extra, "step": trainer.step, "loss_ema": ema,
                                     "wall_s": round(time.perf_counter() - started, 1)})
    bar.close()
    return history
