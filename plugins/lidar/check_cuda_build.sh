#!/usr/bin/env bash
# Compile-only check of the CUDA kernel for sm_87 (Jetson Orin) and sm_90 (H100) with nvcc, on any machine with a
# CUDA toolkit, even where torch is a CPU build (its wheel lacks one generated header, c10/cuda/impl/
# cuda_cmake_macros.h, which a temporary stand-in provides). Nothing is run or installed.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PY:-../../.venv/bin/python}
TORCH=$("$PY" -c "import os, torch; print(os.path.dirname(torch.__file__))")
PYINC=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/shim/c10/cuda/impl"
if [ ! -f "$TORCH/include/c10/cuda/impl/cuda_cmake_macros.h" ]; then
  echo '#define C10_CUDA_BUILD_SHARED_LIBS' > "$TMP/shim/c10/cuda/impl/cuda_cmake_macros.h"
fi
nvcc -c csrc/scatter_cuda.cu -o "$TMP/scatter_cuda.o" -std=c++17 -O3 -Xcompiler -fPIC -diag-suppress 3306 \
  -Icsrc -I"$TORCH/include" -I"$TORCH/include/torch/csrc/api/include" -I"$TMP/shim" -I"$PYINC" \
  -gencode arch=compute_87,code=sm_87 -gencode arch=compute_90,code=sm_90
ARCHS=$(strings "$TMP/scatter_cuda.o" | grep -o 'sm_[0-9]*' | sort -u | tr '\n' ' ')
echo "scatter_cuda.cu compiled for: $ARCHS"
