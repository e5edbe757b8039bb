// Per-cell classification of one ultrasonic reading, shared by the CPU and CUDA kernels so both
// (and the PyTorch reference, which mirrors it line by line) draw identical maps.
#pragma once
#include <cmath>

#ifdef __CUDACC__
#define EDGE_HD __host__ __device__ __forceinline__
#else
#define EDGE_HD inline
#endif

namespace edge {

// 0 = says nothing (unknown), 1 = occupied, 2 = free.
EDGE_HD int classify_echo(double dx, double dy, double cos_yaw, double sin_yaw, double cos_half,
                          double min_r, double max_r, double r, double half_t) {
  if (r != r) return 0;  // NaN: invalid reading
  const double d2 = dx * dx + dy * dy;
  if (d2 > max_r * max_r) return 0;
  const double d = sqrt(d2);
  const double along = dx * cos_yaw + dy * sin_yaw;
  if (along < d * cos_half) return 0;  // outside the beam
  if (r == -INFINITY) return d <= min_r ? 1 : 0;  // object inside the blind zone
  if (r > max_r) return d >= min_r ? 2 : 0;       // no echo (+inf) or beyond range: free
  if (r < min_r) r = min_r;
  if (fabs(d - r) <= half_t) return 1;
  if (d < r - half_t && d >= min_r) return 2;
  return 0;  // beyond the echo, or blind zone
}

}  // namespace edge
