"""ONNX export of a network part with fixed input shapes, our custom ops replaced by their standard-op forms.

Why fixed shapes: the perception stack runs batch 1 at the configured sensor resolutions, and fixed shapes let
ONNX Runtime (and TensorRT) fold the BEV table's index arithmetic into constants and plan memory once. The file is
self-contained (weights inside, no external data file), so one sha256 covers the whole engine.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from edge.kernels.onnx_export import onnx_decompositions

DEFAULT_OPSET = 18
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """The exporter logs warnings that do not concern us (torchvision ops it skips, deprecations); hide them
    for the duration of one export so a build prints only our own progress."""
    saved = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    try:
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def exported_program(module: nn.Module, args: tuple[Tensor, ...]) -> torch.export.ExportedProgram:
    """torch.export with the edge ops swapped for their standard-op forms (shared by the ONNX and TensorRT paths)."""
    with quiet_exporter():
        ep = torch.export.export(module, args)
        return ep.run_decompositions(onnx_decompositions())


def export_onnx_fixed(module: nn.Module, args: tuple[Tensor, ...], path: str | Path,
                      opset: int = DEFAULT_OPSET) -> Path:
    """Write `module` called on `args` as a single-file ONNX model at `path` (shapes fixed to those of args)."""
    path = Path(path)
    ep = exported_program(module, args)
    with quiet_exporter():
        torch.onnx.export(ep, args, str(path), dynamo=True, opset_version=opset, external_data=False, verbose=False)
    return path
