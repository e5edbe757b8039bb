"""Argument checks shared by the ops: bad input must be a clear error before any kernel runs."""

from __future__ import annotations

from collections.abc import Sequence

import torch

FLOAT_TYPES = (torch.float32, torch.float16)


def tensor(name: str, t: object, *, dtypes: Sequence[torch.dtype], ndim: int | None = None,
           device: torch.device | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but the other inputs are on {device}")
    return t


def same(name: str, value: int, expected: int, what: str) -> None:
    if value != expected:
        raise ValueError(f"{name}: {what} is {value}, expected {expected}")


def supported_device(name: str, t: torch.Tensor) -> None:
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} is on {t.device}; the kernels run on cpu and cuda only")
