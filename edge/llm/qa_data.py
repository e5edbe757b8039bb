"""QA training/evaluation data from drive ground truth, with frozen-encoder tokens precomputed once per drive.

Aligner training only ever runs the LLM: every synchronised sample that carries QA pairs is passed once through
the frozen `PerceptionStack`, and its modality tokens are cached (safetensors, under an ignored directory) together
with the QA pairs and the lighting of that instant. A drive is a bag directory or a `scenario:seed:duration` spec
(generated when absent, as for perception training).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from edge.llm.errors import LLMError
from edge.token_layouts import TOKEN_LAYOUTS

MODALITIES = ("fisheye", "ultrasonic", "audio", "camera")
CACHE_VERSION = "3"  # 2: scene tokens (edge/encoders/scene_tokens.py), QA at 2 Hz; 3: ultrasonic echo features
# The cache key also holds every modality's token layout (edge/token_layouts.py): a layout bump re-encodes.
DEFAULT_CACHE = Path(".cache/qa")
DEFAULT_DRIVES_DIR = Path("drives/qa")
# The QA benchmark's drives (docs/qa.md): the yard scenarios, whose answers are spread by construction. Every
# (scenario, seed) pair is a different world; evaluation seeds (101+) are never used in training.
YARD_SCENARIOS = ("yard-day", "yard-dusk", "yard-night", "yard-glare", "yard-day-to-night")
# Seeds per scenario, 30 s each (21 drives, 1260 QA instants): three times the first 7, because probes and
# aligners trained on 420 instants learnt the echo -> distance mapping far worse than a fixed rule reads it.
_TRAIN_SEEDS = {"yard-day": (1, 2, 3, 5, 18), "yard-dusk": (4, 6, 9, 19), "yard-night": (7, 8, 11, 12, 20),
                "yard-glare": (10, 14, 15, 21), "yard-day-to-night": (13, 16, 17)}
TRAIN_DRIVES = tuple(f"{sc}:{seed}:30" for sc, seeds in _TRAIN_SEEDS.items() for seed in seeds)
EVAL_DRIVES = tuple(f"{sc}:{101 + 2 * i + k}:20" for i, sc in enumerate(YARD_SCENARIOS) for k in range(2))


@dataclass(frozen=True)
class QAItem:
    """One question about one instant: its answer, kind, lighting and which sample's tokens it sees."""

    question: str
    answer: str
    kind: str
    lighting: str  # day / dusk / night (from /ground_truth/conditions), "unknown" when absent
    drive: str
    sample: int  # row in the drive's token arrays


@dataclass
class QADataset:
    """QA items plus per-drive modality tokens: tokens[drive][modality] is (S, T, d_enc), present[...] is (S,)."""

    items: list[QAItem]
    tokens: dict[str, dict[str, torch.Tensor]]
    present: dict[str, dict[str, torch.Tensor]]

    def filter(self, lighting: Iterable[str] | None = None, kinds: Iterable[str] | None = None) -> "QADataset":
        light = set(lighting) if lighting is not None else None
        kind = set(kinds) if kinds is not None else None
        keep = [it for it in self.items if (light is None or it.lighting in light) and (kind is None or it.kind in kind)]
        return QADataset(keep, self.tokens, self.present)

    def subset(self, n: int, seed: int) -> "QADataset":
        """A seeded random subset of at most n items (the 'few hundred samples' of runtime adaptation)."""
        if n >= len(self.items):
            return self
        idx = np.random.default_rng(seed).permutation(len(self.items))[:n]
        return QADataset([self.items[i] for i in sorted(idx)], self.tokens, self.present)

    def batch_tokens(self, items: list[QAItem], modality: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, d_enc) tokens and a (B, T) validity mask (all False where the sensor was missing)."""
        if modality not in MODALITIES:
            raise LLMError(f"unknown modality '{modality}' (known: {', '.join(MODALITIES)})")
        toks = torch.stack([self.tokens[it.drive][modality][it.sample] for it in items])
        ok = torch.stack([self.present[it.drive][modality][it.sample] for it in items])
        return toks, ok[:, None].expand(-1, toks.shape[1]).clone()

    def token_counts(self) -> dict[str, int]:
        """Tokens per modality, as the encoders that made this data gave them."""
        first = next(iter(self.tokens.values()), {})
        return {m: int(t.shape[1]) for m, t in first.items()}

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for it in self.items:
            out[it.lighting] = out.get(it.lighting, 0) + 1
        return out


def check_modalities(names: Iterable[str]) -> tuple[str, ...]:
    """Validate modality names early, with the list of known ones in the error."""
    names = tuple(names)
    bad = [m for m in names if m not in MODALITIES]
    if bad:
        raise LLMError(f"unknown modality {bad} (known: {', '.join(MODALITIES)})")
    if len(set(names)) != len(names):
        raise LLMError(f"modality listed twice in {list(names)}")
    return names


def _cache_file(bag: Path, perception_dir: Path, cache_dir: Path) -> Path:
    meta = bag / "metadata.yaml"
    weights = sorted(perception_dir.glob("*.safetensors"))
    stamp = "|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in [meta, *weights] if p.exists())
    layouts = ",".join(f"{m}={v}" for m, v in sorted(TOKEN_LAYOUTS.items()))
    key = hashlib.sha256(f"{CACHE_VERSION}|{layouts}|{bag.resolve()}|{stamp}".encode()).hexdigest()[:12]
    return cache_dir / f"{bag.name}-{key}.safetensors"


def encode_drive(bag: Path, stack: Any, out: Path, progress: bool = True) -> Path:
    """Run the frozen encoders on every sample of `bag` that carries QA; write tokens + QA as one safetensors file."""
    from edge.drives.sync import SyncConfig, Synchronizer

    # QA arrives at 1 Hz and samples at 10 Hz: decode images only for the samples that carry QA
    sync = Synchronizer(bag, SyncConfig(image_reduce=stack.cfg.image_reduce, decode_images=False))
    cols: dict[str, list[torch.Tensor]] = {m: [] for m in MODALITIES}
    present: dict[str, list[bool]] = {m: [] for m in MODALITIES}
    qa: list[dict[str, Any]] = []
    shapes: dict[str, tuple[int, ...]] = {}
    bar = tqdm(desc=f"encode {bag.name}", unit="sample", disable=not progress, leave=False)
    for sample in sync:
        bar.update()
        gt = sample.ground_truth
        if gt is None or not gt.qa:
            continue
        sync.decode_deferred(sample)
        out_p = stack.run(sample)
        row = len(cols[MODALITIES[0]])  # this sample's row in the token arrays
        lighting = (gt.conditions or {}).get("lighting", "unknown") if isinstance(gt.conditions, dict) else "unknown"
        for m in MODALITIES:
            t = out_p.tokens.get(m)
            if t is not None:
                shapes[m] = tuple(t.shape[1:])
            cols[m].append(t[0].float() if t is not None else None)  # type: ignore[arg-type]
            present[m].append(t is not None)
        for pair in gt.qa:
            qa.append({"row": row, "question": pair["question"], "answer": pair["answer"], "kind": pair["kind"],
                       "lighting": lighting})
    bar.close()
    if not qa:
        raise LLMError(f"{bag}: no QA pairs on /ground_truth/qa (not a generated drive, or ground truth disabled?)")
    tensors = {}
    for m in MODALITIES:
        if m not in shapes:
            raise LLMError(f"{bag}: the encoders produced no '{m}' tokens for any QA sample")
        zero = torch.zeros(shapes[m])
        tensors[m] = torch.stack([t if t is not None else zero for t in cols[m]]).contiguous()
        tensors[f"{m}_present"] = torch.tensor(present[m], dtype=torch.bool)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "mpnp-edge-qa-tokens", "version": CACHE_VERSION,
                                          "bag": str(bag), "qa": json.dumps(qa)})
    tmp.replace(out)
    return out


def load_drive(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[dict[str, Any]]]:
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != "mpnp-edge-qa-tokens":
            raise LLMError(f"{path}: not a QA token cache")
        tokens = {m: f.get_tensor(m) for m in MODALITIES}
        present = {m: f.get_tensor(f"{m}_present") for m in MODALITIES}
    return tokens, present, json.loads(meta["qa"])


def build_dataset(drives: Iterable[str], *, perception_dir: Path = Path("models/perception"),
                  drives_dir: Path = DEFAULT_DRIVES_DIR, cache_dir: Path = DEFAULT_CACHE,
                  progress: bool = True) -> QADataset:
    """QA items and cached tokens of the given drives (bag dirs or scenario:seed:duration specs)."""
    from edge.perception.data import resolve_drives

    bags = resolve_drives(list(drives), drives_dir, progress=progress)
    stack = None
    items: list[QAItem] = []
    tokens: dict[str, dict[str, torch.Tensor]] = {}
    present: dict[str, dict[str, torch.Tensor]] = {}
    for bag in bags:
        path = _cache_file(bag, perception_dir, cache_dir)
        if not path.exists():
            if stack is None:
                from edge.encoders.stack import PerceptionStack

                stack = PerceptionStack.load(perception_dir)
            encode_drive(bag, stack, path, progress)
        tok, pres, qa = load_drive(path)
        name = bag.name
        tokens[name], present[name] = tok, pres
        items += [QAItem(q["question"], q["answer"], q["kind"], q["lighting"], name, q["row"]) for q in qa]
    return QADataset(items, tokens, present)
