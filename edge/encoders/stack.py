"""The perception stack the runtime loads: one encoder per installed modality plugin (built by the factory its
plugin names) plus the BEV fusion head, saved and loaded as safetensors (one file per module, the shared config in
each file's metadata).

    stack = PerceptionStack.load("models/perception")        # rig from calibration/default_rig.yaml
    out = stack.run(sample)                                     # an edge.frames.Frame
    out.bev_classes   # (nx, ny) uint8 class ids at 0.2 m (BEV_CLASSES), out.occupancy_grid() -> OccupancyGrid values
    out.tokens        # {'fisheye': (1, 5, 128), 'ultrasonic': (1, 5, 128), 'audio': (1, 1, 128), 'camera': (1, 16, 128)}
                      # (edge/encoders/scene_tokens.py: per-side BEV posteriors, the sound's what and where)
    out.outputs       # {'audio': {'event': ..., ...}, 'camera': {'lighting': ..., ...}}: each encoder's extras
    stack.set_backend("onnxruntime")                            # network parts on verified, cached engines

Nothing here names a modality: the stack iterates the registry (edge.modalities), the BEV ones (plugin `bev=True`)
feed the fusion head, every encoder answers through one `EncoderOutput`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from edge.encoders.base import BevFeatures, Diagnostics, EncoderOutput, ModalityEncoder
from edge.encoders.config import BEV_CLASSES, PerceptionConfig
from edge.encoders.fusion import BevFusionHead, BevInput
from edge.encoders.scene_tokens import ECHO_OFFSET, SIDES, SectorPooling
from edge.errors import EdgeError, PluginError
from edge.frames import Frame
from edge.modalities import ModalityPlugin
from edge.modalities.interface import import_ref
from edge.modalities.registry import registry
from edge.names import BackendName

FUSION = "fusion"  # the core's module beside the encoders
MODULES: tuple[str, ...] = (*registry().names, FUSION)  # the modules of a stack of the installed plugins
# Module -> its weights file in a model directory (a modality's as its plugin declares).
WEIGHTS: dict[str, str] = {**{p.name: p.weights for p in registry()}, FUSION: "fusion.safetensors"}
Timer = Callable[[str, Callable[[], Any]], Any]  # timer(name, fn) -> fn(): how a caller times each stage
OCCUPANCY_VALUES = np.array([0, 100, 90, 80, -1], np.int8)  # BEV_CLASSES -> OccupancyGrid values (docs/drives.md)
log = logging.getLogger(__name__)


class CheckpointError(EdgeError):
    """A perception checkpoint is missing, damaged or does not match this code's modules."""


@dataclass
class PerceptionOutput:
    stamp_ns: int
    bev_classes: np.ndarray | None                # (nx, ny) uint8, kernel grid layout (i along x, j along y)
    bev_probs: np.ndarray | None                  # (K, nx, ny) float32
    modalities: list[str]                         # the BEV modalities that fed the BEV map
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # modality -> its decoded extras (with data)
    tokens: dict[str, Tensor] = field(default_factory=dict)
    diagnostics: list[str] = field(default_factory=list)
    alone: dict[str, np.ndarray] = field(default_factory=dict)  # BEV modality -> (K, nx, ny) what it alone sees
    failures: dict[str, str] = field(default_factory=dict)  # stage -> exception it raised (left out this frame)

    def occupancy_grid(self) -> np.ndarray | None:
        """(ny rows, nx columns) int8 in nav_msgs/OccupancyGrid convention (row = y, column = x), as the GT."""
        return None if self.bev_classes is None else OCCUPANCY_VALUES[self.bev_classes].T.copy()


@dataclass
class _BevModality:
    """What one BEV-producing modality gives: features for fusion, the posterior it alone sees, its LLM tokens."""

    bev: BevFeatures
    probs: np.ndarray
    tokens: Tensor


def build_encoder(plugin: ModalityPlugin, cfg: PerceptionConfig, rig: Any, table_cache: str | None = None
                  ) -> ModalityEncoder:
    """The encoder of a plugin, from the factory its `encoder` names ("module:callable", imported only now, so that
    declaring a plugin never imports torch); PluginError naming the plugin when it cannot be built."""
    where = f"modality '{plugin.name}' (encoder {plugin.encoder})"
    factory: Any = import_ref(plugin.encoder, where)
    try:
        encoder = factory(cfg, rig, table_cache)
    except Exception as exc:  # a factory that cannot build on this rig or config
        raise PluginError(where, f"failed to build: {type(exc).__name__}: {exc}") from None
    if not isinstance(encoder, ModalityEncoder):
        raise PluginError(where, f"built a {type(encoder).__name__}, not an edge.encoders.base.ModalityEncoder")
    if plugin.bev and encoder.bev_channels <= 0:
        raise PluginError(where, "the plugin declares bev=True but its encoder has no bev_channels")
    return encoder


def not_on_rig(plugin: ModalityPlugin, rig: Any) -> bool:
    """Whether the plugin reads per-sensor streams but has no sensor on this rig: its encoder has nothing to read
    there, so leaving it out is the expected case, logged at INFO; any other failure to build stays a warning."""
    try:
        return plugin.per_sensor and not plugin.sensors(rig)
    except Exception:  # a plugin's own sensors() failing is a problem to warn about
        return False


class PerceptionStack(nn.Module):
    """One encoder per plugin and the fusion head; `run` takes a Frame, any modality may be missing.

    The encoders are registered as submodules under their modality's name (`stack.fisheye`), in registry order, so
    parameter names and order (training state) are those of each module's own weights file. A plugin whose encoder
    cannot be built is left out, named in a logged PluginError kept in `problems`; the others run."""

    def __init__(self, cfg: PerceptionConfig, rig: Any, table_cache: str | None = None,
                 plugins: Iterable[ModalityPlugin] | None = None) -> None:
        super().__init__()
        # every attribute first, so that a plugin named like one of them (or a method) is refused, not overwritten
        self.cfg = cfg
        self.footprint: tuple[float, float, float, float] = rig.footprint()
        self.plugins: dict[str, ModalityPlugin] = {}
        self.encoders: dict[str, ModalityEncoder] = {}
        self.problems: tuple[PluginError, ...] = ()
        self.bev_names: tuple[str, ...] = ()  # the modalities the fusion head takes, in registry order
        self.fusion: BevFusionHead | None = None
        self.sectors = SectorPooling(cfg.bev_grid, self.footprint, cfg.d_enc)
        self.backends: dict[str, str] = {}
        self.engines: Any = None  # the edge.backends.EngineSet in use, if any
        problems = []
        for plugin in registry() if plugins is None else plugins:
            try:
                if hasattr(self, plugin.name):
                    raise PluginError(f"modality '{plugin.name}'", "its name is taken by the perception stack")
                self.add_module(plugin.name, build_encoder(plugin, cfg, rig, table_cache))
            except PluginError as exc:
                # a plugin whose sensors this rig lacks (a LiDAR on the default rig) is normal: not a warning
                log.log(logging.INFO if not_on_rig(plugin, rig) else logging.WARNING, "%s; left out", exc)
                problems.append(exc)
                continue
            self.plugins[plugin.name] = plugin
            self.encoders[plugin.name] = getattr(self, plugin.name)
        self.problems = tuple(problems)
        self.bev_names = tuple(n for n, p in self.plugins.items() if p.bev)
        if self.bev_names:
            self.fusion = BevFusionHead(cfg, [BevInput(n, self.encoders[n].bev_channels,
                                                       self.encoders[n].detail_channels) for n in self.bev_names])
        self.backends = {name: BackendName.EAGER for name in self.module_names}

    @property
    def module_names(self) -> tuple[str, ...]:
        """The modules this stack saves and loads: its encoders, then the fusion head if it has BEV modalities."""
        return (*self.encoders, *((FUSION,) if self.fusion is not None else ()))

    def module(self, name: str) -> nn.Module:
        """An encoder by modality name, or the fusion head."""
        found = self.fusion if name == FUSION else self.encoders.get(name)
        if found is None:
            raise EdgeError(f"perception stack: no module '{name}'; it has {', '.join(self.module_names)}")
        return found

    def weights_file(self, name: str) -> str:
        """File name of a module's weights in a model directory (a modality's as its plugin declares)."""
        return self.plugins[name].weights if name in self.plugins else weights_file(name)

    # ------------------------------------------------------------------ backends
    def set_backend(self, backend: str = BackendName.EAGER, modules: Iterable[str] | None = None,
                    cache_dir: str | Path | None = None, progress: bool = False, **options: Any) -> None:
        """Run the network parts of `modules` (all by default) on `backend` (eager, onnxruntime, tensorrt); the
        others keep theirs.

        Engines are taken from the cache (`.cache/engines/` unless `cache_dir`) when their key and file hash check
        out, else exported, compiled and verified against eager PyTorch now (a few seconds per engine on a CPU).
        Raises edge.backends.BackendUnavailable at once when the backend cannot run here (TensorRT without CUDA),
        and VerificationError naming the module when an engine does not reproduce eager PyTorch. Engines are frozen
        copies of the weights they were built from: call set_backend again after loading other weights."""
        modules = self.module_names if modules is None else tuple(modules)
        unknown = [m for m in modules if m not in self.module_names]
        if unknown:
            raise EdgeError(f"set_backend: unknown modules {unknown}; known: {', '.join(self.module_names)}")
        if backend == BackendName.EAGER:
            for name in modules:
                self.module(name).engine_for = None  # type: ignore[union-attr]
                self.backends[name] = BackendName.EAGER
            return
        from edge.backends import EngineSet  # here: importing the encoders must not pull in onnx / onnxruntime

        self.eval()
        if self.engines is None or self.engines.backend.name != backend or \
                (cache_dir is not None and Path(cache_dir) != self.engines.cache.root):
            self.engines = EngineSet(backend, cache_dir, **options)
        todo = [(name, v) for name in modules for v in self.module(name).variants()]  # type: ignore[operator]
        bar = _progress(len(todo), f"{backend} engines", progress)
        for name, variant in todo:
            bar.set_postfix_str(f"{name} {variant}".strip())
            self.engines.get(name, variant, self.module(name))
            bar.update(1)
        bar.close()
        for name in modules:
            self.module(name).engine_for = self.engines.provider(name, self.module(name))  # type: ignore[union-attr]
            self.backends[name] = backend

    @property
    def backend(self) -> str:
        """'eager', 'onnxruntime', ... when every module uses one backend, else 'module=backend,...'."""
        names = set(self.backends.values())
        return names.pop() if len(names) == 1 else ",".join(f"{m}={b}" for m, b in self.backends.items())

    # ------------------------------------------------------------------ inference on a Frame
    @torch.no_grad()
    def run(self, sample: Frame, use: Sequence[str] | None = None, settings: Mapping[str, float] | None = None,
            timer: Timer | None = None, isolate: bool = False) -> PerceptionOutput:
        """The encoders in `use` (all by default; those with data), the fusion of the BEV ones present, on whichever
        backends are set. `settings` gives an encoder its run-time knob by modality name (the camera's keep ratio).

        `timer(name, fn)` wraps each stage: the BEV modalities in registry order, `fusion`, then the others, each
        named by `encoder.stage(setting)` (fisheye, ultrasonic, fusion, audio, camera@<keep>: the runtime's cost
        model measures them this way); it must return fn()'s result. With `isolate` (the runtime), an exception in
        one stage (its preprocessing or network) leaves that modality out of this frame, named in `failures`, and
        the others run; without, it propagates. Names in `use` the stack has no encoder for are ignored."""
        if self.training:  # load() leaves the stack in eval mode; walking ~250 modules every frame cost ~1 ms
            self.eval()
        use = tuple(self.encoders) if use is None else tuple(use)
        settings = settings or {}
        diag = Diagnostics()
        tokens: dict[str, Tensor] = {}
        failures: dict[str, str] = {}
        timed = _isolated(timer or _untimed, failures) if isolate else timer or _untimed
        bev: dict[str, _BevModality] = {}
        for name in self.bev_names:
            if name in use:
                setting = settings.get(name)
                got = timed(self.encoders[name].stage(setting),
                            lambda n=name, s=setting: self._bev_modality(n, sample, diag, s))
                if got is not None:
                    bev[name] = got
                    tokens[name] = got.tokens
        fused = timed(FUSION, lambda: self.fusion({n: b.bev.features for n, b in bev.items()},  # type: ignore[misc]
                                                  {n: b.bev.detail for n, b in bev.items()})) if len(bev) > 1 else None
        probs = None
        if fused is not None:
            probs = torch.softmax(fused[1], 1)[0].numpy()
        elif bev:  # one BEV modality (or a failed fusion head): the first one's own posterior
            probs = next(iter(bev.values())).probs
        outputs: dict[str, dict[str, Any]] = {}
        for name, encoder in self.encoders.items():
            if name in use and name not in self.bev_names:
                setting = settings.get(name)
                got = timed(encoder.stage(setting), lambda e=encoder, s=setting: e.encode(sample, diag, s))
                if got is not None:
                    tokens[name] = _tokens_of(name, got)
                    outputs[name] = got.extras
        return PerceptionOutput(sample.stamp_ns, None if probs is None else probs.argmax(0).astype(np.uint8), probs,
                                list(bev), outputs, tokens, diag.messages, {n: b.probs for n, b in bev.items()},
                                failures)

    def _bev_modality(self, name: str, sample: Frame, diag: Diagnostics, setting: float | None) -> _BevModality | None:
        """A BEV modality's features, the BEV it alone sees (the fusion head with the others absent) and its scene
        tokens pooled from that posterior, its side features (the ultrasonic echoes) written into their slots."""
        out = self.encoders[name].encode(sample, diag, setting)
        if out is None:
            return None
        if out.bev is None:
            raise EdgeError(f"modality '{name}': its plugin declares bev=True but its encoder returned no BEV features")
        fine = self.fusion({name: out.bev.features}, {name: out.bev.detail})[1]  # type: ignore[misc]
        probs = torch.softmax(fine, 1)[0].numpy()
        tokens = self.sectors(probs)[None]
        side = out.bev.side_features
        if side is not None:
            if side.ndim != 2 or side.shape[0] > len(SIDES) or ECHO_OFFSET + side.shape[1] > tokens.shape[-1]:
                raise EdgeError(f"modality '{name}': side features of shape {side.shape} do not fit the side tokens "
                                f"(at most {len(SIDES)} x {tokens.shape[-1] - ECHO_OFFSET})")
            tokens[0, : side.shape[0], ECHO_OFFSET: ECHO_OFFSET + side.shape[1]] = torch.from_numpy(side)
        return _BevModality(out.bev, probs, tokens)

    # ------------------------------------------------------------------ checkpoints
    def save(self, directory: str | Path, extra: dict[str, str] | None = None) -> list[Path]:
        """One safetensors file per module; metadata carries the config and `extra` (training provenance)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        meta = {"config": self.cfg.to_json(), "classes": json.dumps(BEV_CLASSES), **(extra or {})}
        paths = []
        for name in self.module_names:
            sd = {k: v.detach().contiguous().clone() for k, v in self.module(name).state_dict().items()}
            path = out / self.weights_file(name)
            tmp = path.with_suffix(".tmp")
            save_file(sd, str(tmp), metadata={**meta, "module": name})
            tmp.replace(path)
            paths.append(path)
        return paths

    @classmethod
    def load(cls, directory: str | Path, rig: Any = None, table_cache: str | None = None,
             modules: Sequence[str] | None = None, plugins: Iterable[ModalityPlugin] | None = None
             ) -> PerceptionStack:
        """A stack of `plugins` (the installed ones by default) with the weights of `modules` (all of its modules)
        from `directory`; the config comes from the first module's file. CheckpointError naming the file when one
        is missing, unreadable or does not fit its module (a fusion head trained for other BEV modalities)."""
        from edge.sensors.rig import load_rig  # here so that importing encoders stays light
        d = Path(directory)
        plugins = tuple(registry() if plugins is None else plugins)
        files = {**{p.name: p.weights for p in plugins}, FUSION: weights_file(FUSION)}
        wanted = tuple(files) if modules is None else tuple(modules)
        first = d / files.get(wanted[0], weights_file(wanted[0]))
        if not first.exists():
            raise CheckpointError(f"{d}: no {first.name} (expected {', '.join(files.get(m, m) for m in wanted)})")
        try:
            with safe_open(str(first), "pt") as f:
                meta = f.metadata() or {}
        except (SafetensorError, OSError) as exc:  # truncated or corrupt: name the file, not the parser's state
            raise CheckpointError(f"{first}: not a readable safetensors file (truncated or corrupt? {exc})") from None
        if "config" not in meta:
            raise CheckpointError(f"{first}: no 'config' in the safetensors metadata")
        stack = cls(PerceptionConfig.from_json(meta["config"]), rig if rig is not None else load_rig(), table_cache,
                    plugins)
        for name in (stack.module_names if modules is None else wanted):
            path = d / stack.weights_file(name)
            if not path.exists():
                raise CheckpointError(f"{path}: missing")
            try:
                stack.module(name).load_state_dict(load_file(str(path)), strict=True)
            except SafetensorError as exc:
                raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt? {exc})") from None
            except (RuntimeError, OSError) as exc:
                raise CheckpointError(f"{path}: does not match the {name} module ({exc})") from exc
        stack.eval()
        return stack


def weights_file(module: str) -> str:
    """File name of a module's weights in a model directory."""
    return WEIGHTS.get(module, f"{module}.safetensors")


def _tokens_of(name: str, out: EncoderOutput) -> Tensor:
    """A non-BEV encoder's LLM tokens; an encoder that gives none is a fault of its plugin, named."""
    if out.tokens is None:
        raise EdgeError(f"modality '{name}': its encoder returned no tokens (only BEV modalities may leave them to "
                        "the stack)")
    return out.tokens


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
