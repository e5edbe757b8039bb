"""What every inference backend shares: its errors, its tolerance against eager PyTorch, and the interface.

Why one interface: the perception stack selects a backend per module by name and never branches on which one it
got, so a backend that cannot run on this machine (TensorRT without a GPU) sits behind exactly the same calls as
the ones that do, and the code around it (keys, cache, verification, selection) is exercised everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from edge.errors import EdgeError

# A loaded engine: positional tensors in, tuple of tensors out (as the eager network part returns them).
RunFn = Callable[..., tuple[Tensor, ...]]
Signature = list[list[Any]]  # per input: [dtype name, shape], lists so that it equals its JSON round trip


class BackendError(EdgeError):
    """An engine cannot be built, loaded or called as asked; the message names the module and the engine file."""


class BackendUnavailable(BackendError):
    """The backend asked for cannot run on this machine (a library or a GPU is missing); the message says which."""


class VerificationError(BackendError):
    """An engine's outputs differ from eager PyTorch on the probe input by more than the backend's tolerance."""


@dataclass(frozen=True)
class Tolerance:
    """Allowed max |engine - eager| per output: atol + rtol * max |eager| (scaled, so logits and features of any
    magnitude are held to the same relative standard)."""

    atol: float
    rtol: float

    def limit(self, reference: Tensor) -> float:
        scale = float(reference.detach().abs().max()) if reference.numel() else 0.0
        return self.atol + self.rtol * scale


def signature(args: Sequence[Tensor]) -> Signature:
    """Input dtypes and shapes, the part of an engine's key that fixed-shape engines are built for."""
    return [[str(a.dtype).removeprefix("torch."), [int(s) for s in a.shape]] for a in args]


def as_tuple(out: Any) -> tuple[Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


class Backend(Protocol):
    """An inference backend: how to check it can run, what keys its engines, how to build and load one."""

    name: str
    suffix: str  # engine file extension
    tolerance: Tolerance

    def require(self) -> None:
        """Raise BackendUnavailable naming what is missing (library, GPU) if engines cannot run here."""

    def key_fields(self) -> dict[str, Any]:
        """Backend-specific key fields: its version, and whatever else makes an engine invalid when it changes."""

    def build(self, module: nn.Module, args: tuple[Tensor, ...], path: Path) -> None:
        """Compile `module` for exactly these input shapes and write the engine file to `path`."""

    def load(self, path: Path) -> tuple[RunFn, dict[str, Any]]:
        """Load an engine file; returns its run function and a description (input/output names, providers)."""


def eval_mode_required(name: str, module: nn.Module) -> None:
    """Export in training mode would bake batch statistics into BatchNorm: refuse rather than build a wrong engine."""
    if any(m.training for m in module.modules()):
        raise BackendError(f"{name}: module is in training mode; call .eval() before building an engine")


def probe_outputs(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    with torch.no_grad():
        return as_tuple(module(*args))
