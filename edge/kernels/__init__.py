"""Custom kernels as PyTorch ops: BEV projection, ultrasonic rasterisation and token pruning.

Each op runs a C++ (threaded) or CUDA kernel from csrc/, has a fake implementation for torch.compile and
torch.export, a pure-PyTorch reference, and a standard-op form for ONNX export (see docs/kernels.md).
"""

from edge.kernels._ext import has_cuda_kernels
from edge.kernels.bev_ops import BevProjector, bev_pool, bev_pool_reference, bev_project
from edge.kernels.bev_table import (BevTable, CameraModel, TableSpec, build_table, load_or_build_table, rig_key,
                                    table_from_pairs)
from edge.kernels.grid import BevGrid
from edge.kernels.onnx_export import export_onnx, onnx_decompositions
from edge.kernels.prune import (PruneResult, cls_attention_scores, prune_tokens, prune_tokens_onnx,
                                prune_tokens_reference)
from edge.kernels.ultrasonic import sensor_table, ultrasonic_raster, ultrasonic_raster_reference

__all__ = [
    "BevGrid", "BevProjector", "BevTable", "CameraModel", "PruneResult", "TableSpec", "bev_pool",
    "bev_pool_reference", "bev_project", "build_table", "cls_attention_scores", "export_onnx", "has_cuda_kernels",
    "load_or_build_table", "onnx_decompositions", "prune_tokens", "prune_tokens_onnx", "prune_tokens_reference",
    "rig_key", "sensor_table", "table_from_pairs", "ultrasonic_raster", "ultrasonic_raster_reference",
]
