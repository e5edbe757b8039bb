"""QA training/evaluation data from drive ground truth, with frozen-encoder tokens precomputed once per drive.

Aligner training only ever runs the LLM: every synchronised sample that carries QA pairs is passed once through
the frozen `PerceptionStack`, and its modality tokens are cached (safetensors, under an ignored directory) together
with the QA pairs and the lighting of that instant. A drive is a bag directory or a `scenario:seed:duration` spec
(generated when absent, as for perception training).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from edge.llm.errors import LLMError
from edge.token_layouts import TOKEN_LAYOUTS

# The built-in modalities (edge/modalities/builtin.py), the columns of every cache the core's default rig gives. What
# a drive's data holds is what the perception stack that encoded it produced: a plugin's modality (the LiDAR of
# plugins/lidar on its rig) is one more column, read back like the built-ins' (`known_modalities`, `load_drive`).
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
    sources: dict[str, str] = field(default_factory=dict)  # drive -> the cache file its tokens came from

    def filter(self, lighting: Iterable[str] | None = None, kinds: Iterable[str] | None = None) -> "QADataset":
        light = set(lighting) if lighting is not None else None
        kind = set(kinds) if kinds is not None else None
        keep = [it for it in self.items if (light is None or it.lighting in light) and (kind is None or it.kind in kind)]
        return QADataset(keep, self.tokens, self.present, self.sources)

    def subset(self, n: int, seed: int) -> "QADataset":
        """A seeded random subset of at most n items (the 'few hundred samples' of runtime adaptation)."""
        if n >= len(self.items):
            return self
        idx = np.random.default_rng(seed).permutation(len(self.items))[:n]
        return QADataset([self.items[i] for i in sorted(idx)], self.tokens, self.present, self.sources)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities every drive of this data has tokens of (the first drive's column order)."""
        drives = list(self.tokens.values())
        if not drives:
            return ()
        return tuple(m for m in drives[0] if all(m in d for d in drives[1:]))

    def require(self, modalities: Iterable[str], items: Iterable[QAItem] | None = None) -> None:
        """LLMError naming the modality and the drive (and its cache file) whose data lacks it."""
        drives = dict.fromkeys(it.drive for it in (self.items if items is None else items))
        for m in modalities:
            for d in drives:
                if m not in self.tokens[d]:
                    src = f" ({self.sources[d]})" if d in self.sources else ""
                    raise LLMError(f"drive {d}{src} has no '{m}' tokens: the perception stack that encoded it gave "
                                   f"{', '.join(self.tokens[d]) or 'none'} (encode drives on a rig and perception "
                                   f"directory with a '{m}' encoder: --rig, --perception)")

    def batch_tokens(self, items: list[QAItem], modality: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, d_enc) tokens and a (B, T) validity mask (all False where the sensor was missing)."""
        self.require((modality,), items)
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


def known_modalities() -> tuple[str, ...]:
    """The installed modality plugins (edge.modalities.registry): the built-ins, then e.g. plugins/lidar's."""
    from edge.modalities.registry import registry

    return tuple(dict.fromkeys((*MODALITIES, *registry().names)))


def check_modalities(names: Iterable[str], known: Iterable[str] | None = None) -> tuple[str, ...]:
    """Validate modality names early (against the installed plugins by default), the known ones in the error."""
    names = tuple(names)
    known = tuple(known_modalities() if known is None else known)
    bad = [m for m in names if m not in known]
    if bad:
        raise LLMError(f"unknown modality {bad} (known: {', '.join(known)})")
    if len(set(names)) != len(names):
        raise LLMError(f"modality listed twice in {list(names)}")
    return names


def stack_extras(perception_dir: Path, rig: Any = None) -> dict[str, str]:
    """Modality -> token layout of the plugins beyond the built-ins that a stack of `perception_dir` on `rig` encodes:
    those with sensors on the rig (or none per sensor) and their weights file in the directory. Empty on the core's
    default rig (the LiDAR has no sensor there), so the built-in stack's cache key is what it always was."""
    from edge.modalities.registry import registry
    from edge.sensors.rig import load_rig

    out: dict[str, str] = {}
    for p in registry():
        if p.name in MODALITIES or not (perception_dir / p.weights).exists():
            continue
        if p.per_sensor and not p.sensors(rig if rig is not None else load_rig()):
            continue
        out[p.name] = p.tokens.layout
    return out


def _cache_file(bag: Path, perception_dir: Path, cache_dir: Path, extras: dict[str, str] | None = None) -> Path:
    """The cache file of `bag` encoded by the stack of `perception_dir`; `extras` (stack_extras) are the modalities
    it encodes beyond the built-ins, in the key only when there are any (the built-in stack's key is unchanged)."""
    meta = bag / "metadata.yaml"
    weights = sorted(perception_dir.glob("*.safetensors"))
    stamp = "|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in [meta, *weights] if p.exists())
    layouts = ",".join(f"{m}={v}" for m, v in sorted({**TOKEN_LAYOUTS, **(extras or {})}.items()))
    key = hashlib.sha256(f"{CACHE_VERSION}|{layouts}|{bag.resolve()}|{stamp}".encode()).hexdigest()[:12]
    return cache_dir / f"{bag.name}-{key}.safetensors"


def encode_drive(bag: Path, stack: Any, out: Path, progress: bool = True) -> Path:
    """Run the frozen encoders on every sample of `bag` that carries QA; write tokens + QA as one safetensors file.

    The columns are the stack's modalities (its encoders, in registry order), each with a `<m>_present` mask."""
    from edge.drives.sync import SyncConfig, Synchronizer

    # QA arrives at 1 Hz and samples at 10 Hz: decode images only for the samples that carry QA
    sync = Synchronizer(bag, SyncConfig(image_reduce=stack.cfg.image_reduce, decode_images=False))
    names = tuple(stack.encoders)
    cols: dict[str, list[torch.Tensor]] = {m: [] for m in names}
    present: dict[str, list[bool]] = {m: [] for m in names}
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
        row = len(cols[names[0]])  # this sample's row in the token arrays
        lighting = (gt.conditions or {}).get("lighting", "unknown") if isinstance(gt.conditions, dict) else "unknown"
        for m in names:
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
    for m in names:
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
    """Tokens and masks of every modality column the file has (each `<m>` with its `<m>_present`), and its QA."""
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != "mpnp-edge-qa-tokens":
            raise LLMError(f"{path}: not a QA token cache")
        keys = set(f.keys())
        order = {m: i for i, m in enumerate(known_modalities())}
        names = sorted((k for k in keys if f"{k}_present" in keys), key=lambda m: (order.get(m, len(order)), m))
        tokens = {m: f.get_tensor(m) for m in names}
        present = {m: f.get_tensor(f"{m}_present") for m in names}
    return tokens, present, json.loads(meta["qa"])


def build_dataset(drives: Iterable[str], *, perception_dir: Path = Path("models/perception"),
                  drives_dir: Path = DEFAULT_DRIVES_DIR, cache_dir: Path = DEFAULT_CACHE,
                  progress: bool = True, rig: str | Path | None = None) -> QADataset:
    """QA items and cached tokens of the given drives (bag dirs or scenario:seed:duration specs).

    `rig`: the rig YAML that specs are generated on and the stack is built for (default: the core's default rig);
    e.g. the LiDAR package's rig (plugins/lidar) with plugins/lidar/models/perception adds a 'lidar' column."""
    from edge.perception.data import resolve_drives
    from edge.sensors.rig import load_rig

    bags = resolve_drives(list(drives), drives_dir, progress=progress, rig_path=rig)
    rig_obj = load_rig(rig) if rig is not None else None
    extras = stack_extras(perception_dir, rig_obj)
    stack = None
    items: list[QAItem] = []
    tokens: dict[str, dict[str, torch.Tensor]] = {}
    present: dict[str, dict[str, torch.Tensor]] = {}
    sources: dict[str, str] = {}
    for bag in bags:
        path = _cache_file(bag, perception_dir, cache_dir, extras)
        if not path.exists():
            if stack is None:
                from edge.encoders.stack import PerceptionStack

                stack = PerceptionStack.load(perception_dir, rig=rig_obj)
            encode_drive(bag, stack, path, progress)
        tok, pres, qa = load_drive(path)
        name = bag.name
        tokens[name], present[name], sources[name] = tok, pres, str(path)
        items += [QAItem(q["question"], q["answer"], q["kind"], q["lighting"], name, q["row"]) for q in qa]
    return QADataset(items, tokens, present, sources)
