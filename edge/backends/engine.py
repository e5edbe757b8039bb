"""Get a verified engine for a module's network part: from the cache when its key and file hash check out, built
(and verified before it is cached) otherwise.

    engine = prepare_engine("fusion", "", net, probe, get_backend("onnxruntime"), EngineCache())
    coarse, fine = engine(f, u, raster, use_f, use_u)          # torch tensors in and out, fixed shapes
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from edge.backends.base import (Backend, BackendError, RunFn, Signature, eval_mode_required, probe_outputs,
                                signature)
from edge.backends.cache import EngineCache
from edge.backends.key import key_fields
from edge.backends.verify import verify
from edge.kernels.onnx_export import onnx_decompositions
from edge.names import BACKENDS, BackendName

log = logging.getLogger(__name__)


def get_backend(name: str, **options: Any) -> Backend:
    """The backend called `name` (onnxruntime, tensorrt), checked to be runnable here (BackendUnavailable if not)."""
    if name == BackendName.ONNXRUNTIME:
        from edge.backends.ort import OnnxRuntimeBackend

        backend: Backend = OnnxRuntimeBackend(**options)
    elif name == BackendName.TENSORRT:
        from edge.backends.trt import TensorRTBackend

        backend = TensorRTBackend(**options)
    else:
        raise BackendError(f"unknown backend '{name}'; one of {', '.join(BACKENDS)} (eager needs no engine)")
    backend.require()
    return backend


@dataclass
class Engine:
    """A loaded, verified engine: call it like the eager network part (positional tensors, tuple out)."""

    label: str
    backend: str
    path: Path
    inputs: Signature
    run: RunFn
    max_abs_err: list[float]
    built: bool  # True when built in this process, False when taken from the cache
    seconds: float  # build or load time, verification included
    info: dict[str, Any] = field(default_factory=dict)

    def __call__(self, *args: Tensor) -> tuple[Tensor, ...]:
        got = signature(args)
        if got != self.inputs:
            raise BackendError(f"{self.label}: the {self.backend} engine {self.path.name} has fixed inputs "
                               f"{self.inputs}, got {got} (a different sensor resolution or window needs a "
                               f"rebuild for those shapes, or --backend eager)")
        outs = self.run(*args)
        dev = args[0].device if args else None
        return tuple(o if dev is None or o.device == dev else o.to(dev) for o in outs)


def prepare_engine(name: str, variant: str, network: nn.Module, probe: tuple[Tensor, ...], backend: Backend,
                   cache: EngineCache) -> Engine:
    """A verified engine of `network` for the shapes of `probe`, cached under (name, variant, backend)."""
    label = f"{name}{'@' + variant if variant else ''}"
    eval_mode_required(label, network)
    t0 = time.perf_counter()
    fields = key_fields(name, variant, network, probe, backend.key_fields(),
                        extra_code=tuple(onnx_decompositions().values()))
    slot = cache.slot(name, variant, backend.name, backend.suffix)
    expected = probe_outputs(network, probe)
    if cache.lookup(slot, fields) is not None:
        try:
            run, info = backend.load(slot.engine)
            errs = verify(f"{label}: cached {backend.name} engine {slot.engine}", run, probe, expected,
                          backend.tolerance)
            return Engine(label, backend.name, slot.engine, fields["inputs"], run, errs, False,
                          time.perf_counter() - t0, info)
        except BackendError as exc:  # VerificationError included: a cached engine that fails is rebuilt
            log.warning("engine cache: %s: %s; rebuilding", slot.engine, exc)
    cache.root.mkdir(parents=True, exist_ok=True)
    tmp = slot.tmp
    try:
        backend.build(network, probe, tmp)
        run, info = backend.load(tmp)
        errs = verify(f"{label}: {backend.name} engine", run, probe, expected, backend.tolerance)
    except BackendError:  # VerificationError included: refused, nothing is cached
        tmp.unlink(missing_ok=True)
        raise
    except Exception as exc:  # an exporter or compiler failure: name the module, keep the cause
        tmp.unlink(missing_ok=True)
        raise BackendError(f"{label}: building the {backend.name} engine failed ({exc.__class__.__name__}: {exc})") \
            from exc
    cache.commit(slot, tmp, fields, {"io": info, "max_abs_err": errs, "tolerance": vars(backend.tolerance)})
    log.info("engine cache: built %s (max abs error vs eager %s)", slot.engine, ", ".join(f"{e:.2g}" for e in errs))
    return Engine(label, backend.name, slot.engine, fields["inputs"], run, errs, True, time.perf_counter() - t0,
                  info)


class EngineSet:
    """The engines of one backend for several modules, built on first use of each (module, variant).

    `provider(name, owner)` gives the callable an encoder keeps (`variant -> Engine`): a variant seen for the first
    time (a camera keep ratio the scheduler had not used) is built then, later calls reuse it."""

    def __init__(self, backend: str, cache_dir: str | Path | None = None, **options: Any) -> None:
        self.backend = get_backend(backend, **options)
        self.cache = EngineCache(cache_dir)
        self.engines: dict[tuple[str, str], Engine] = {}
        self.on_build: Callable[[Engine], None] | None = None

    def get(self, name: str, variant: str, owner: Any) -> Engine:
        k = (name, variant)
        if k not in self.engines:
            engine = prepare_engine(name, variant, owner.network(variant), owner.network_inputs(variant),
                                    self.backend, self.cache)
            self.engines[k] = engine
            if self.on_build is not None:
                self.on_build(engine)
        return self.engines[k]

    def provider(self, name: str, owner: Any) -> Callable[[str], Engine]:
        return lambda variant: self.get(name, variant, owner)
