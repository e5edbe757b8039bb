"""ONNX export of modules that call the scatter op: the op is swapped for its standard-op form (ScatterND with add,
ScatterElements with max), so ONNX Runtime and TensorRT need no plugin. The core's own ops are swapped as the core
does (edge.kernels.onnx_export), so a module holding both exports in one go."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from edge.kernels.onnx_export import onnx_decompositions as core_decompositions

from edge_lidar.ops import scatter_pillars_reference


def onnx_decompositions() -> dict[torch._ops.OpOverload, Callable[..., torch.Tensor]]:
    """Op -> standard-op form, for `ExportedProgram.run_decompositions`: the core's and this package's."""
    return {**core_decompositions(), torch.ops.edge_lidar.scatter_pillars.default: scatter_pillars_reference}


def export_onnx(module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: str | os.PathLike[str],
                opset: int = 18, dynamic_shapes: object = None) -> torch.export.ExportedProgram:
    """torch.export the module (the op stays opaque, checked by its fake kernel), swap in the standard forms, then
    write ONNX. Returns the decomposed program."""
    ep = torch.export.export(module, args, dynamic_shapes=dynamic_shapes)
    ep = ep.run_decompositions(onnx_decompositions())
    torch.onnx.export(ep, args, str(path), dynamo=True, opset_version=opset, verbose=False)
    return ep
