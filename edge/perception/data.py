"""Which drives a training or evaluation run uses, generating the missing ones, and their caches as one dataset.

A drive is named `scenario:seed:duration` (e.g. `siren:2:40`); it lives at `<drives_dir>/<scenario>-s<seed>-d<dur>`
and is generated there when absent (generation is deterministic, so the name fully describes the data).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.drives.scenarios import get_scenario
from edge.encoders.stack import PerceptionStack
from edge.errors import EdgeError
from edge.perception.cache import build_cache, load_cache


@dataclass(frozen=True)
class DriveSpec:
    scenario: str
    seed: int
    duration: float

    @classmethod
    def parse(cls, text: str) -> DriveSpec:
        parts = text.split(":")
        if len(parts) != 3:
            raise EdgeError(f"drive '{text}': expected scenario:seed:duration, e.g. siren:2:40")
        try:
            spec = cls(parts[0], int(parts[1]), float(parts[2]))
        except ValueError as exc:
            raise EdgeError(f"drive '{text}': seed must be an integer and duration a number ({exc})") from exc
        get_scenario(spec.scenario)  # raises a clear error for an unknown scenario
        return spec

    @property
    def dirname(self) -> str:
        return f"{self.scenario}-s{self.seed}-d{self.duration:g}"

    def __str__(self) -> str:
        return f"{self.scenario}:{self.seed}:{self.duration:g}"


DEFAULT_TRAIN = tuple(f"{sc}:1:40" for sc in ("parking-day", "parking-night", "street-day", "street-night",
                                                "day-to-night", "glare", "siren")) + ("siren:2:40",)
DEFAULT_EVAL = tuple(f"{sc}:101:20" for sc in ("parking-day", "parking-night", "street-day", "street-night",
                                                 "day-to-night", "glare", "siren"))


def resolve_drives(items: list[str], drives_dir: Path, progress: bool = True,
                   rig_path: str | Path | None = None) -> list[Path]:
    """Each item is a bag directory or a scenario:seed:duration spec (generated under drives_dir if absent, on the
    rig `rig_path`: the default rig when None)."""
    from edge.drives.generate import generate_drive

    paths = []
    for item in items:
        p = Path(item)
        if (p / "metadata.yaml").exists():
            paths.append(p)
            continue
        spec = DriveSpec.parse(item)
        out = drives_dir / spec.dirname
        if not (out / "metadata.yaml").exists():
            if out.exists() and any(out.iterdir()):
                raise EdgeError(f"{out}: exists without metadata.yaml (an interrupted generation?); remove it")
            generate_drive(out, spec.seed, spec.duration, spec.scenario, rig_path=rig_path, progress=progress)
        paths.append(out)
    return paths


class CachedDrives:
    """All cached samples of several drives as concatenated arrays (one RAM copy, indexed by the trainer)."""

    def __init__(self, bags: list[Path], stack: PerceptionStack, stride: int, cache_dir: Path,
                 progress: bool = True) -> None:
        parts = [load_cache(build_cache(b, stack, stride, cache_dir, progress)) for b in bags]
        parts = [p for p in parts if p["stamp_ns"].size]
        if not parts:
            raise EdgeError("no samples in the given drives")
        keys = [k for k in parts[0] if k != "meta"]
        self.arrays = {k: np.concatenate([p[k] for p in parts]) for k in keys}
        self.drive = np.concatenate([np.full(p["stamp_ns"].size, i) for i, p in enumerate(parts)])
        self.bags = bags

    def __len__(self) -> int:
        return int(self.arrays["stamp_ns"].size)

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]
