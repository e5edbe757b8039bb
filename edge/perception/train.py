"""Training loop for the perception stack, jointly on cached drives: the BEV encoders (registry order) through
the fusion head with modality dropout, and each other encoder's own head (its `head_losses`: the audio event and
direction, the front camera's lighting and front map). CPU, minutes, resumable. Nothing here names a modality.

Resumability: every `save_every` steps the weights, the optimizer state (safetensors, no pickle) and the step go
to `<out>/train_state*`; batches of step t are drawn from a generator seeded by (seed, t), so a resumed run
draws exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm import tqdm

from edge.encoders.base import ModalityEncoder
from edge.encoders.config import BEV_CLASSES
from edge.encoders.stack import FUSION, CheckpointError, PerceptionStack
from edge.errors import EdgeError
from edge.perception.batches import DropoutConfig, bev_inputs, bev_targets_batch, training_rows
from edge.perception.labels import IGNORE

STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"


@dataclass
class TrainConfig:
    steps: int = 600
    batch: int = 8  # BEV samples per step
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 20
    seed: int = 0
    save_every: int = 50
    dropout: DropoutConfig = field(default_factory=DropoutConfig)
    # samples per step of a modality's own head, by modality; absent: its encoder's `head_batch`
    head_batches: dict[str, int] = field(default_factory=dict)


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
        self.rows = {name: training_rows(data, name) for name in stack.encoders}
        self.heads = head_batches(stack, cfg.head_batches)
        if stack.fusion is not None and len(self.bev_idx) == 0:
            raise ValueError("training data has no BEV ground truth")
        self.weights = class_weights(data["bev"][self.bev_idx])

    def init_from_data(self, names: Iterable[str] | None = None) -> None:
        """The encoders' statistics of the training data (the audio normalisation), for those starting from
        scratch (all by default)."""
        for name in self.stack.encoders if names is None else names:
            self.stack.encoders[name].init_from_data(self.rows[name])

    def losses(self, rng: np.random.Generator) -> dict[str, Tensor]:
        """The BEV losses (fine, coarse) through the fusion head, then each head's in registry order."""
        out = self.bev_losses(rng) if self.stack.fusion is not None else {}
        for name, batch in self.heads.items():
            out.update(self.stack.encoders[name].head_losses(self.rows[name], batch, rng))
        return out

    def bev_losses(self, rng: np.random.Generator) -> dict[str, Tensor]:
        fusion = self.stack.fusion
        assert fusion is not None
        idx = rng.choice(self.bev_idx, self.cfg.batch)
        inputs, use = bev_inputs(self.stack, self.data, idx, rng, self.cfg.dropout)
        targets, coarse_targets = bev_targets_batch(self.data, idx)
        coarse, fine = fusion.forward_masked(*inputs.masked(fusion, use))
        return {"bev": nn.functional.cross_entropy(fine, targets, self.weights, ignore_index=IGNORE),
                "bev_coarse": 0.5 * nn.functional.cross_entropy(coarse, coarse_targets, self.weights,
                                                                ignore_index=IGNORE)}

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


def head_batches(stack: PerceptionStack, given: dict[str, int]) -> dict[str, int]:
    """Samples per step of each encoder's own head, in registry order: `given`, else the encoder's `head_batch`;
    EdgeError for a given modality without a head in the stack."""
    heads = [n for n, e in stack.encoders.items()
             if n not in stack.bev_names and type(e).head_losses is not ModalityEncoder.head_losses]
    unknown = sorted(set(given) - set(heads))
    if unknown:
        raise EdgeError(f"head batch for {', '.join(unknown)}: not a modality with its own head in the stack "
                        f"({', '.join(heads) or 'none'})")
    sizes = {n: given.get(n, stack.encoders[n].head_batch) for n in heads}
    return {n: b for n, b in sizes.items() if b > 0}


def load_initial(stack: PerceptionStack, directory: Path) -> tuple[str, ...]:
    """Fine-tuning's start: each module's weights from `directory`. An encoder whose file is absent there (a plugin
    installed since) keeps its fresh initialisation and is returned; the fusion head, trained without those, is
    widened for them (BevFusionHead.widened: it gives the old outputs until they are trained)."""
    fresh = tuple(n for n in stack.encoders if not (directory / stack.weights_file(n)).exists())
    if len(fresh) == len(stack.encoders):
        raise CheckpointError(f"{directory}: no weights of any modality "
                              f"({', '.join(stack.weights_file(n) for n in stack.encoders)})")
    for name in stack.module_names:
        if name in fresh:
            continue
        path = directory / stack.weights_file(name)
        state = _read(path)
        try:
            if name == FUSION and stack.fusion is not None and set(fresh) & set(stack.fusion.names):
                state = stack.fusion.widened(state, [n for n in stack.fusion.names if n not in fresh])
            stack.module(name).load_state_dict(state, strict=True)
        except (RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{path}: does not match the {name} module ({exc})") from exc
    return fresh


def _read(path: Path) -> dict[str, Tensor]:
    if not path.exists():
        raise CheckpointError(f"{path}: missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt? {exc})") from None


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
        bar.set_postfix({k: f"{v:.3f}" for k, v in ema.items()})
        if on_step is not None:
            on_step(trainer.step, logs)
        if trainer.step % cfg.save_every == 0 or trainer.step == cfg.steps:
            trainer.save_state(out, {**extra, "step": trainer.step, "loss_ema": ema,
                                     "wall_s": round(time.perf_counter() - started, 1)})
    bar.close()
    return history
