"""Access to the compiled kernels: the CPU module is always built; the CUDA one only where nvcc was found."""

from __future__ import annotations

import os
from types import ModuleType

import torch

from edge import _C  # built by the package install (CMakeLists.txt); a missing build is a broken install

try:
    from edge import _C_cuda as _cuda_mod
except ImportError:  # built without nvcc: CUDA tensors get a clear error instead
    _cuda_mod = None

# Read the device error flag after each CUDA launch (one 4-byte copy, synchronises the stream).
# Kernels never read out of bounds either way; turning this off only makes bad indices silent.
CUDA_INDEX_CHECKS = os.environ.get("EDGE_CUDA_INDEX_CHECKS", "1") != "0"

cpu = _C


def cuda() -> ModuleType:
    """The CUDA kernel module, or a clear error when this install has none."""
    if _cuda_mod is None:
        raise RuntimeError("edge was built without CUDA kernels (nvcc was not found at build time); "
                           "reinstall on a machine with the CUDA toolkit to run these ops on the GPU")
    return _cuda_mod


def has_cuda_kernels() -> bool:
    return _cuda_mod is not None


def n_threads() -> int:
    """CPU threads for a kernel call: follow torch's setting so users tune one knob."""
    return max(1, int(os.environ.get("EDGE_KERNEL_THREADS", torch.get_num_threads())))


def dtype_code(t: torch.Tensor) -> int:
    return {torch.float32: 0, torch.float16: 1}[t.dtype]


def addr(t: torch.Tensor | None) -> int:
    return 0 if t is None else int(t.data_ptr())


def stream_of(t: torch.Tensor) -> int:
    """The current stream of t's device: kernels run there, never on the default stream unless it is current."""
    return int(torch.cuda.current_stream(t.device).cuda_stream)


def raise_if_flagged(flag: torch.Tensor, op: str) -> None:
    if not CUDA_INDEX_CHECKS:
        return
    code = int(flag.item())
    if code:
        parts = [name for bit, name in ((1, "offsets"), (2, "source index"), (4, "depth index")) if code & bit]
        raise ValueError(f"{op}: out-of-range {', '.join(parts)} in the table (entries were skipped)")
