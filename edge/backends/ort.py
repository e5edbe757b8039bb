"""ONNX Runtime backend: the network part exported to ONNX (fixed shapes), run in an InferenceSession.

Execution providers: TensorRT and CUDA first where this onnxruntime build has them, the CPU always last (so an
operator a GPU provider lacks still runs). Tensors go in and come out as torch tensors; on the CPU the copies
are views (torch <-> numpy share memory). Threads: intra-op = torch's thread count, so eager and ONNX Runtime are
compared on the same cores; one inter-op thread (the graphs are chains, parallel branches gain nothing on 2 cores);
no spinning pool threads (they compete with everything else on the CPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from edge.backends.base import BackendError, BackendUnavailable, RunFn, Tolerance
from edge.backends.export import DEFAULT_OPSET, export_onnx_fixed
from edge.names import BackendName

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailable(f"backend 'onnxruntime' needs the onnxruntime package ({exc}); "
                                 f"`pip install onnxruntime` (onnxruntime-gpu for CUDA)") from None
    return onnxruntime


def providers() -> list[str]:
    """Execution providers this onnxruntime build offers, GPU ones first, CPU last."""
    available = _ort().get_available_providers()
    return [p for p in PREFERRED_PROVIDERS if p in available] + ["CPUExecutionProvider"]


class OrtRunner:
    """One InferenceSession; call with torch tensors (positional, in the graph's input order)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        ort = _ort()
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads or torch.get_num_threads())
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        # No busy-waiting between runs: on a CPU shared with other work (eager modules, the LLM, other processes)
        # spinning pool threads hold the cores they wait on; with another job on one of 2 cores, the whole
        # perception on ONNX Runtime took ~300 ms per sample with spinning and ~100 ms without (docs/runtime.md).
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), so, providers=providers())
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidProtobuf types
            raise BackendError(f"{path}: onnxruntime cannot load it ({exc.__class__.__name__}: {exc})") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.threads = so.intra_op_num_threads

    def __call__(self, *args: Tensor) -> tuple[Tensor, ...]:
        feeds = {n: np.ascontiguousarray(a.detach().to("cpu").numpy()) for n, a in zip(self.input_names, args)}
        outs = self.session.run(self.output_names, feeds)
        return tuple(torch.from_numpy(o) for o in outs)

    def describe(self) -> dict[str, Any]:
        return {"inputs": self.input_names, "outputs": self.output_names,
                "providers": self.session.get_providers(), "intra_op_threads": self.threads}


class OnnxRuntimeBackend:
    """Export with `export_onnx_fixed`, run with `OrtRunner`."""

    name = BackendName.ONNXRUNTIME
    suffix = ".onnx"
    tolerance = Tolerance(atol=1e-3, rtol=1e-3)

    def __init__(self, opset: int = DEFAULT_OPSET, threads: int | None = None) -> None:
        self.opset = opset
        self.threads = threads

    def require(self) -> None:
        _ort()

    def key_fields(self) -> dict[str, Any]:
        # The providers are not in the key: the ONNX file is the same whichever provider runs it, and every load
        # is verified against eager PyTorch on the provider actually used.
        return {"backend": self.name, "backend_version": _ort().__version__, "opset": self.opset}

    def build(self, module: nn.Module, args: tuple[Tensor, ...], path: Path) -> None:
        export_onnx_fixed(module, args, path, self.opset)

    def load(self, path: Path) -> tuple[RunFn, dict[str, Any]]:
        runner = OrtRunner(path, self.threads)
        return runner, runner.describe()
