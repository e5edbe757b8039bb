"""Engine keys: a sha256 over everything that makes a compiled engine wrong when it changes.

Fields: the module's weights (every parameter and buffer, non-persistent ones included: the fisheye BEV table
comes from the rig calibration and is baked into the graph as a constant), the source of the `edge` code in the
graph (a changed forward with unchanged weights must not reuse an old engine), the fixed input shapes and dtypes,
torch's version (it wrote the graph) and the backend's own fields (its version; ONNX opset; for TensorRT the GPU
and its compute capability). The key is the hash of the canonical JSON of the fields, so a manifest carries the
fields in clear and a reader can say which one differed.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from edge.backends.base import signature

KEY_FORMAT = 1  # bump when the meaning of a field changes: every cached engine is then rebuilt
_EDGE_ROOT = Path(__file__).resolve().parents[1]


def tensor_bytes(t: Tensor) -> bytes:
    """Raw little-endian bytes of a tensor of any dtype (bf16 and bool included), without numpy dtype support."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def weights_digest(module: nn.Module) -> str:
    """sha256 of (name, dtype, shape, bytes) of every parameter and buffer, in name order."""
    h = hashlib.sha256()
    named = dict(module.named_parameters())
    named.update(dict(module.named_buffers()))
    for name in sorted(named):
        t = named[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def code_digest(module: nn.Module, extra: tuple[Any, ...] = ()) -> str:
    """sha256 of the source files (under edge/) defining the module's classes and the `extra` functions.

    Why: an engine is a frozen copy of the forward code; editing that code must invalidate it even when the
    weights stay the same. Only files of this package count (torch's own code is covered by its version)."""
    files = set()
    for obj in [type(m) for m in module.modules()] + list(extra):
        try:
            src = inspect.getsourcefile(obj)
        except TypeError:
            continue
        if src and Path(src).resolve().is_relative_to(_EDGE_ROOT):
            files.add(Path(src).resolve())
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(str(f.relative_to(_EDGE_ROOT)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def key_fields(name: str, variant: str, module: nn.Module, args: tuple[Tensor, ...],
               backend_fields: dict[str, Any], extra_code: tuple[Any, ...] = ()) -> dict[str, Any]:
    """All fields an engine is keyed by, as they read back from JSON (lists, not tuples) so they compare equal."""
    fields = {"format": KEY_FORMAT, "module": name, "variant": variant, "weights": weights_digest(module),
              "code": code_digest(module, extra_code), "inputs": signature(args), "torch": torch.__version__,
              **backend_fields}
    return json.loads(json.dumps(fields))


def key_of(fields: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the fields."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def field_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable list of the fields that differ ('weights 3f2a91c0.. -> 9b1c04de..')."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a != b:
            short = lambda v: (v[:10] + "..") if isinstance(v, str) and len(v) > 16 else v  # noqa: E731
            out.append(f"{k} {short(a)} -> {short(b)}")
    return out
