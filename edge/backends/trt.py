"""TensorRT backend via torch_tensorrt: the network part compiled to a raw TensorRT engine (plan) file.

NOT EXECUTED in this project so far: the development machine has no GPU and no TensorRT. The code below is the
real path (no stand-in results): requesting the backend where torch_tensorrt, tensorrt or CUDA is missing raises
BackendUnavailable saying which; everything around it (keys, cache, manifest checks, verification, selection) is
shared with the ONNX Runtime backend and tested there.

Build: torch.export on the GPU copy of the module, our custom ops swapped for their standard-op forms (as for ONNX;
no TensorRT plugin is needed), then `torch_tensorrt.dynamo.convert_exported_program_to_serialized_trt_engine`
(fixed shapes, fp32 with TF32 off by default, whole graph in one engine). Why a raw plan rather than
`torch_tensorrt.save` (.ep): the plan is loaded with TensorRT's own runtime, no pickle (torch.save) is involved,
and the same file serves a C++ or Isaac ROS consumer. Engines are specific to the TensorRT version and the GPU,
which is why both are in the key (as Autoware's tensorrt_common checks).
Run: TensorRT's runtime with torch-allocated CUDA buffers, enqueued on torch's current stream.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from edge.backends.base import BackendError, BackendUnavailable, RunFn, Tolerance
from edge.backends.export import exported_program, quiet_exporter
from edge.names import BackendName

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}


def missing_requirements() -> list[str]:
    """What this machine lacks for the TensorRT backend (empty when it can run)."""
    missing = []
    for mod in ("torch_tensorrt", "tensorrt"):
        try:
            __import__(mod)
        except ImportError as exc:
            missing.append(f"the {mod} package ({exc})")
        except Exception as exc:  # a broken install (wrong CUDA, missing libnvinfer) raises other errors on import
            missing.append(f"a working {mod} ({exc.__class__.__name__}: {exc})")
    if not torch.cuda.is_available():
        missing.append(f"a CUDA GPU (torch {torch.__version__} sees none)")
    return missing


def device_fields(gpu_name: str, capability: tuple[int, int]) -> dict[str, Any]:
    return {"gpu": gpu_name, "compute_capability": f"{capability[0]}.{capability[1]}"}


def output_order(names: list[str]) -> list[str]:
    """torch_tensorrt names outputs output0, output1, ...: order them by that index (the engine's enumeration
    order is not guaranteed to be the definition order); other names keep the engine's order."""
    idx = [re.fullmatch(r"output_?(\d+)", n) for n in names]
    if all(idx):
        return [n for _, n in sorted(zip((int(m.group(1)) for m in idx), names))]
    return list(names)


class TrtRunner:
    """A deserialised engine and one execution context; call with torch tensors on any device."""

    def __init__(self, plan: bytes, label: str) -> None:
        import tensorrt as trt

        self._trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise BackendError(f"{label}: TensorRT could not deserialise the engine (built by another TensorRT "
                               f"version or for another GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = output_order([n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT])
        self.label = label

    def _torch_dtype(self, name: str) -> torch.dtype:
        trt = self._trt
        table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
                 trt.int64: torch.int64, trt.bool: torch.bool, trt.int8: torch.int8}
        return table[self.engine.get_tensor_dtype(name)]

    def __call__(self, *args: Tensor) -> tuple[Tensor, ...]:
        dev = torch.device("cuda", torch.cuda.current_device())
        stream = torch.cuda.current_stream(dev)
        ins = [a.to(dev, dtype=self._torch_dtype(n), non_blocking=True).contiguous()
               for n, a in zip(self.inputs, args)]
        for n, t in zip(self.inputs, ins):
            self.context.set_input_shape(n, tuple(t.shape))
            self.context.set_tensor_address(n, t.data_ptr())
        outs = []
        for n in self.outputs:
            o = torch.empty(tuple(self.context.get_tensor_shape(n)), dtype=self._torch_dtype(n), device=dev)
            self.context.set_tensor_address(n, o.data_ptr())
            outs.append(o)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise BackendError(f"{self.label}: TensorRT execution failed")
        return tuple(outs)  # the caller moves them to the inputs' device (a synchronising copy on the CPU)

    def describe(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "outputs": self.outputs}


class TensorRTBackend:
    """Compile with torch_tensorrt, run with TensorRT's runtime."""

    name = BackendName.TENSORRT
    suffix = ".engine"

    def __init__(self, precision: str = "fp32", workspace_bytes: int = 1 << 30) -> None:
        if precision not in PRECISIONS:
            raise BackendError(f"tensorrt: precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        self.precision = precision
        self.workspace_bytes = workspace_bytes
        # fp16 halves the mantissa: allow ~ its rounding over a few layers.
        self.tolerance = Tolerance(1e-2, 1e-2) if precision == "fp16" else Tolerance(2e-3, 2e-3)

    def require(self) -> None:
        missing = missing_requirements()
        if missing:
            raise BackendUnavailable("backend 'tensorrt' cannot run on this machine: missing " + "; ".join(missing)
                                     + ". Use --backend onnxruntime or eager here; on a Jetson or a CUDA machine "
                                       "install NVIDIA's torch_tensorrt (it brings tensorrt)")

    def key_fields(self) -> dict[str, Any]:
        import tensorrt
        import torch_tensorrt

        dev = torch.cuda.current_device()
        return {"backend": self.name, "backend_version": tensorrt.__version__,
                "torch_tensorrt": torch_tensorrt.__version__, "precision": self.precision,
                **device_fields(torch.cuda.get_device_name(dev), torch.cuda.get_device_capability(dev))}

    def build(self, module: nn.Module, args: tuple[Tensor, ...], path: Path) -> None:
        import torch_tensorrt

        dev = torch.device("cuda", torch.cuda.current_device())
        gpu_module = copy.deepcopy(module).to(dev).eval()  # the caller's module stays where it is
        gpu_args = tuple(a.to(dev) for a in args)
        ep = exported_program(gpu_module, gpu_args)
        with quiet_exporter():
            plan = torch_tensorrt.dynamo.convert_exported_program_to_serialized_trt_engine(
                ep, inputs=list(gpu_args), enabled_precisions={PRECISIONS[self.precision]},
                disable_tf32=True, require_full_compilation=True, min_block_size=1, truncate_double=True,
                workspace_size=self.workspace_bytes)
        path.write_bytes(bytes(plan))

    def load(self, path: Path) -> tuple[RunFn, dict[str, Any]]:
        runner = TrtRunner(path.read_bytes(), str(path))
        return runner, runner.describe()
