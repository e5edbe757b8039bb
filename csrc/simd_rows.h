// Row primitives shared by the CPU kernels (BEV pooling, token pruning): fp32 axpy and dot over one feature row,
// compiled once per translation unit with AVX2 clones on x86 (EDGE_SIMD_CLONES, half.h).
#pragma once

#include <cstdint>

#include "half.h"

namespace edge {
namespace {

EDGE_SIMD_CLONES void axpy_row(float* __restrict acc, const float* __restrict row, int64_t n, float w) {
  for (int64_t c = 0; c < n; ++c) acc[c] += w * row[c];
}

EDGE_SIMD_CLONES float dot_row(const float* __restrict a, const float* __restrict b, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t c = 0; c < n; ++c) s += a[c] * b[c];
  return s;
}

}  // namespace
}  // namespace edge
