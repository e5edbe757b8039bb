"""Builds edge_lidar._C, the scatter op's kernels, with torch's cpp_extension (the pytorch/extension-cpp pattern).

The CPU kernel is always built. The CUDA kernel joins it only where the installed torch is a CUDA build and a CUDA
toolkit is found (CUDA_HOME / nvcc), for the archs in TORCH_CUDA_ARCH_LIST (default 8.7 Jetson Orin, 9.0 H100);
a CPU-only machine builds the CPU kernel alone. The library is linked against this torch: reinstall the package
after changing torch (`make setup`). Everything else lives in pyproject.toml.
"""

from __future__ import annotations

import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))
CPU_SOURCES = ["csrc/scatter.cpp"]
CUDA_SOURCES = ["csrc/scatter_cuda.cu"]


def with_cuda() -> bool:
    """CUDA kernels need both halves: a CUDA torch to link against and nvcc to compile with."""
    wanted = os.environ.get("EDGE_LIDAR_WITH_CUDA", "auto")
    return wanted != "0" and torch.version.cuda is not None and CUDA_HOME is not None


def extension() -> CppExtension:
    cxx = ["-O3", "-std=c++17", "-DPy_LIMITED_API=0x03090000"]
    if with_cuda():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.7;9.0")
        return CUDAExtension("edge_lidar._C", CPU_SOURCES + CUDA_SOURCES, include_dirs=[os.path.join(HERE, "csrc")],
                             extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]}, py_limited_api=True)
    return CppExtension("edge_lidar._C", CPU_SOURCES, include_dirs=[os.path.join(HERE, "csrc")],
                        extra_compile_args={"cxx": cxx}, py_limited_api=True)


setup(ext_modules=[extension()], cmdclass={"build_ext": BuildExtension},
      options={"bdist_wheel": {"py_limited_api": "cp39"}})
