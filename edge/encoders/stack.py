"""The perception stack the runtime loads: four encoder plugins plus the BEV fusion head, saved and loaded as
safetensors (one file per module, the shared config in each file's metadata).

    stack = PerceptionStack.load("models/perception")        # rig from calibration/default_rig.yaml
    out = stack.run(sample)                                     # a edge.drives.sync.Sample
    out.bev_classes   # (nx, ny) uint8 class ids at 0.2 m (BEV_CLASSES), out.occupancy_grid() -> OccupancyGrid values
    out.tokens        # {'fisheye': (1, 5, 128), 'ultrasonic': (1, 5, 128), 'audio': (1, 1, 128), 'camera': (1, 16, 128)}
                      # (edge/encoders/scene_tokens.py: per-side BEV posteriors, the sound's what and where)
    stack.set_backend("onnxruntime")                            # network parts on verified, cached engines
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from edge.encoders.audio import AudioEncoder
from edge.encoders.base import Diagnostics
from edge.encoders.camera import CameraEncoder
from edge.encoders.config import BEV_CLASSES, PerceptionConfig
from edge.encoders.fisheye import FisheyeEncoder
from edge.encoders.fusion import BevFusionHead
from edge.encoders.scene_tokens import ECHO_OFFSET, EchoFeatures, SectorPooling
from edge.encoders.ultrasonic import UltrasonicEncoder
from edge.errors import EdgeError
from edge.modalities.registry import registry
from edge.names import BackendName

ENCODERS: tuple[str, ...] = registry().names  # one encoder per installed modality plugin, in registry order
MODULES: tuple[str, ...] = (*ENCODERS, "fusion")  # the modules saved and loaded; the fusion head is the core's
# Module -> its weights file in a model directory (a modality's as its plugin declares).
WEIGHTS: dict[str, str] = {**{p.name: p.weights for p in registry()}, "fusion": "fusion.safetensors"}
Timer = Callable[[str, Callable[[], Any]], Any]  # timer(name, fn) -> fn(): how a caller times each stage
OCCUPANCY_VALUES = np.array([0, 100, 90, 80, -1], np.int8)  # BEV_CLASSES -> OccupancyGrid values (docs/drives.md)


class CheckpointError(EdgeError):
    """A perception checkpoint is missing, damaged or does not match this code's modules."""


@dataclass
class PerceptionOutput:
    stamp_ns: int
    bev_classes: np.ndarray | None                # (nx, ny) uint8, kernel grid layout (i along x, j along y)
    bev_probs: np.ndarray | None                  # (K, nx, ny) float32
    modalities: list[str]                         # which of fisheye / ultrasonic fed the BEV map
    audio: dict[str, Any] | None
    camera: dict[str, Any] | None
    tokens: dict[str, Tensor] = field(default_factory=dict)
    diagnostics: list[str] = field(default_factory=list)
    fisheye_probs: np.ndarray | None = None       # (K, nx, ny) what the fisheyes alone see (a witness for health)
    failures: dict[str, str] = field(default_factory=dict)  # stage -> exception it raised (left out this frame)

    def occupancy_grid(self) -> np.ndarray | None:
        """(ny rows, nx columns) int8 in nav_msgs/OccupancyGrid convention (row = y, column = x), as the GT."""
        return None if self.bev_classes is None else OCCUPANCY_VALUES[self.bev_classes].T.copy()


@dataclass
class _BevModality:
    """What one BEV-producing modality gives: features for fusion, the posterior it alone sees, its LLM tokens."""

    bev: Tensor
    probs: np.ndarray
    tokens: Tensor
    raster: Tensor | None


class PerceptionStack(nn.Module):
    """All encoders and the fusion head; `run` takes a Sample, any modality may be missing."""

    def __init__(self, cfg: PerceptionConfig, rig: Any, table_cache: str | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.footprint: tuple[float, float, float, float] = rig.footprint()
        self.fisheye = FisheyeEncoder(cfg, rig, table_cache)
        self.ultrasonic = UltrasonicEncoder(cfg, rig)
        mic = rig.microphones.positions
        self.audio = AudioEncoder(cfg, np.asarray(mic)[:, :2] - np.asarray(mic)[:, :2].mean(0))
        front = rig.cameras.get("front")
        self.camera = CameraEncoder(cfg, (front.height, front.width) if front is not None else None)
        self.fusion = BevFusionHead(cfg)
        self.sectors = SectorPooling(cfg.bev_grid, self.footprint, cfg.d_enc)
        self.echoes = EchoFeatures(np.array([s.position[:2] for s in rig.ultrasonic]),
                                   np.array([s.yaw for s in rig.ultrasonic]), self.footprint)
        self.backends: dict[str, str] = {name: BackendName.EAGER for name in MODULES}
        self.engines: Any = None  # the edge.backends.EngineSet in use, if any

    # ------------------------------------------------------------------ backends
    def set_backend(self, backend: str = BackendName.EAGER, modules: Iterable[str] = MODULES,
                    cache_dir: str | Path | None = None, progress: bool = False, **options: Any) -> None:
        """Run the network parts of `modules` on `backend` (eager, onnxruntime, tensorrt); the others keep theirs.

        Engines are taken from the cache (`.cache/engines/` unless `cache_dir`) when their key and file hash check
        out, else exported, compiled and verified against eager PyTorch now (a few seconds per engine on a CPU).
        Raises edge.backends.BackendUnavailable at once when the backend cannot run here (TensorRT without CUDA),
        and VerificationError naming the module when an engine does not reproduce eager PyTorch. Engines are frozen
        copies of the weights they were built from: call set_backend again after loading other weights."""
        modules = tuple(modules)
        unknown = [m for m in modules if m not in MODULES]
        if unknown:
            raise EdgeError(f"set_backend: unknown modules {unknown}; known: {', '.join(MODULES)}")
        if backend == BackendName.EAGER:
            for name in modules:
                getattr(self, name).engine_for = None
                self.backends[name] = BackendName.EAGER
            return
        from edge.backends import EngineSet  # here: importing the encoders must not pull in onnx / onnxruntime

        self.eval()
        if self.engines is None or self.engines.backend.name != backend or \
                (cache_dir is not None and Path(cache_dir) != self.engines.cache.root):
            self.engines = EngineSet(backend, cache_dir, **options)
        todo = [(name, v) for name in modules for v in getattr(self, name).variants()]
        bar = _progress(len(todo), f"{backend} engines", progress)
        for name, variant in todo:
            bar.set_postfix_str(f"{name} {variant}".strip())
            self.engines.get(name, variant, getattr(self, name))
            bar.update(1)
        bar.close()
        for name in modules:
            getattr(self, name).engine_for = self.engines.provider(name, getattr(self, name))
            self.backends[name] = backend

    @property
    def backend(self) -> str:
        """'eager', 'onnxruntime', ... when every module uses one backend, else 'module=backend,...'."""
        names = set(self.backends.values())
        return names.pop() if len(names) == 1 else ",".join(f"{m}={b}" for m, b in self.backends.items())

    # ------------------------------------------------------------------ inference on a Sample
    @torch.no_grad()
    def run(self, sample: Any, use: tuple[str, ...] = ENCODERS,
            camera_keep: float | None = None, timer: Timer | None = None, isolate: bool = False) -> PerceptionOutput:
        """Encoders in `use` (those with data), fusion of fisheye / ultrasonic, on whichever backends are set.

        `timer(name, fn)` wraps each stage (names fisheye, ultrasonic, fusion, audio, camera@<keep>: the runtime's
        cost model measures them this way); it must return fn()'s result. With `isolate` (the runtime), an exception
        in one stage (its preprocessing or network) leaves that modality out of this frame, named in `failures`, and
        the others run; without, it propagates."""
        self.eval()
        diag = Diagnostics()
        tokens: dict[str, Tensor] = {}
        failures: dict[str, str] = {}
        timed = _isolated(timer or _untimed, failures) if isolate else timer or _untimed
        fe = timed("fisheye", lambda: self._fisheye(sample, diag)) if "fisheye" in use else None
        us = timed("ultrasonic", lambda: self._ultrasonic(sample, diag)) if "ultrasonic" in use else None
        bev_classes = probs = None
        mods = []
        for name, out in (("fisheye", fe), ("ultrasonic", us)):
            if out is not None:
                tokens[name] = out.tokens
                mods.append(name)
        fused = timed("fusion", lambda: self.fusion(fe.bev, us.bev, us.raster)) \
            if fe is not None and us is not None else None
        if fused is not None:
            probs = torch.softmax(fused[1], 1)[0].numpy()
        elif fe is not None or us is not None:  # one BEV modality (or a failed fusion head): its own posterior
            probs = (fe or us).probs  # type: ignore[union-attr]
        if probs is not None:
            bev_classes = probs.argmax(0).astype(np.uint8)
        audio = timed("audio", lambda: self.audio.encode(sample, diag)) if "audio" in use else None
        if audio is not None:
            tokens["audio"] = audio.pop("tokens")
        camera = None
        if "camera" in use:
            keep = self.camera.keep if camera_keep is None else camera_keep
            camera = timed(f"camera@{keep:g}", lambda: self.camera.encode(sample, diag, keep))
        if camera is not None:
            tokens["camera"] = camera.pop("tokens")
        return PerceptionOutput(sample.stamp_ns, bev_classes, probs, mods, audio, camera, tokens, diag.messages,
                                fe.probs if fe is not None else None, failures)

    def _fisheye(self, sample: Any, diag: Diagnostics) -> _BevModality | None:
        """Fisheye BEV features, the BEV it alone sees (fusion head with ultrasonic absent) and its sector tokens."""
        out = self.fisheye.encode(sample, diag)
        if out is None:
            return None
        return self._bev_modality(out[0], self.fusion(out[0], None)[1], None)

    def _ultrasonic(self, sample: Any, diag: Diagnostics) -> _BevModality | None:
        ranges = self.ultrasonic.preprocess(sample, diag)
        out = self.ultrasonic.encode_ranges(ranges)
        if out is None:
            return None
        bev = self._bev_modality(out[0], self.fusion(None, out[0], out[2])[1], out[2])
        echoes = torch.from_numpy(self.echoes(ranges))
        bev.tokens[0, : echoes.shape[0], ECHO_OFFSET: ECHO_OFFSET + echoes.shape[1]] = echoes
        return bev

    def _bev_modality(self, bev: Tensor, fine: Tensor, raster: Tensor | None) -> _BevModality:
        probs = torch.softmax(fine, 1)[0].numpy()
        return _BevModality(bev, probs, self.sectors(probs)[None], raster)

    # ------------------------------------------------------------------ checkpoints
    def save(self, directory: str | Path, extra: dict[str, str] | None = None) -> list[Path]:
        """One safetensors file per module; metadata carries the config and `extra` (training provenance)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        meta = {"config": self.cfg.to_json(), "classes": json.dumps(BEV_CLASSES), **(extra or {})}
        paths = []
        for name in MODULES:
            sd = {k: v.detach().contiguous().clone() for k, v in getattr(self, name).state_dict().items()}
            path = out / weights_file(name)
            tmp = path.with_suffix(".tmp")
            save_file(sd, str(tmp), metadata={**meta, "module": name})
            tmp.replace(path)
            paths.append(path)
        return paths

    @classmethod
    def load(cls, directory: str | Path, rig: Any = None, table_cache: str | None = None,
             modules: tuple[str, ...] = MODULES) -> PerceptionStack:
        from edge.sensors.rig import load_rig  # here so that importing encoders stays light
        d = Path(directory)
        first = d / weights_file(modules[0])
        if not first.exists():
            raise CheckpointError(f"{d}: no {first.name} (expected {', '.join(weights_file(m) for m in modules)})")
        try:
            with safe_open(str(first), "pt") as f:
                meta = f.metadata() or {}
        except (SafetensorError, OSError) as exc:  # truncated or corrupt: name the file, not the parser's state
            raise CheckpointError(f"{first}: not a readable safetensors file (truncated or corrupt? {exc})") from None
        if "config" not in meta:
            raise CheckpointError(f"{first}: no 'config' in the safetensors metadata")
        stack = cls(PerceptionConfig.from_json(meta["config"]), rig if rig is not None else load_rig(), table_cache)
        for name in modules:
            path = d / weights_file(name)
            if not path.exists():
                raise CheckpointError(f"{path}: missing")
            try:
                getattr(stack, name).load_state_dict(load_file(str(path)), strict=True)
            except SafetensorError as exc:
                raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt? {exc})") from None
            except (RuntimeError, OSError) as exc:
                raise CheckpointError(f"{path}: does not match the {name} module ({exc})") from exc
        stack.eval()
        return stack


def weights_file(module: str) -> str:
    """File name of a module's weights in a model directory."""
    return WEIGHTS.get(module, f"{module}.safetensors")


def _untimed(name: str, fn: Callable[[], Any]) -> Any:
    return fn()


def _isolated(timer: Timer, failures: dict[str, str]) -> Timer:
    """`timer` with each stage's exception caught: the stage returns None (no output, no cost measurement) and
    its exception is kept in `failures` under the stage name."""
    def run(name: str, fn: Callable[[], Any]) -> Any:
        def guarded() -> Any:
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - any fault of one modality must not stop the others
                failures[name] = f"{type(exc).__name__}: {exc}"
                return None
        return timer(name, guarded)
    return run


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="engine", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def checkpoint_metadata(directory: str | Path, module: str = "fusion") -> dict[str, str]:
    with safe_open(str(Path(directory) / weights_file(module)), "pt") as f:
        return dict(f.metadata() or {})
