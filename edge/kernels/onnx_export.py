"""ONNX export of modules that use the edge ops: each op is replaced by its standard-op form
(Gather, Mul, ScatterND, TopK, GatherElements, ...) so ONNX Runtime and TensorRT need no plugin."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from edge.kernels.bev_ops import bev_pool_reference
from edge.kernels.prune import prune_tokens_onnx
from edge.kernels.ultrasonic import ultrasonic_raster_reference


def _ultrasonic_onnx(sensors, ranges, x_min, y_min, nx, ny, resolution, arc_thickness, per_sensor):
    return ultrasonic_raster_reference(sensors, ranges, x_min, y_min, nx, ny, resolution, arc_thickness, per_sensor,
                                       dtype=torch.float32)


def onnx_decompositions() -> dict[Any, Callable]:
    """Op -> standard-op form, for `ExportedProgram.run_decompositions`."""
    return {
        torch.ops.edge.bev_pool.default: bev_pool_reference,
        torch.ops.edge.ultrasonic_raster.default: _ultrasonic_onnx,
        torch.ops.edge.prune_tokens.default: prune_tokens_onnx,
    }


def export_onnx(module: torch.nn.Module, args: tuple, path: str | os.PathLike, opset: int = 18,
                **export_kwargs: Any) -> torch.export.ExportedProgram:
    """torch.export the module (ops stay opaque, checked by their fake impls), swap the edge ops for their
    standard forms, then write ONNX. Returns the decomposed program."""
    ep = torch.export.export(module, args, **export_kwargs)
    ep = ep.run_decompositions(onnx_decompositions())
    torch.onnx.export(ep, args, str(path), dynamo=True, opset_version=opset, verbose=False)
    return ep
