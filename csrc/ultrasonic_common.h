// Per-cell classification of one ultrasonic reading, shared by the CPU and CUDA kernels so both
// (and the PyTorch reference, which mirrors it line by line) draw identical maps.
#pragma once
#include <cmath>
#include <cstdint>

#include "kernels.h"

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

// A sensor with its beam precomputed once per call.
struct EchoSensor { double x, y, c, s, cos_half, min_r, max_r; };

// One BEV cell (i, j) of batch b: classify every sensor's echo and write the output channels. The CPU loop and the
// CUDA threads differ only in how they walk the cells.
EDGE_HD void raster_cell(const UltrasonicArgs& a, const EchoSensor* sensors, int64_t b, int64_t i, int64_t j,
                         double half_t) {
  const int64_t S = a.n_sensors, cells = a.nx * a.ny, cell = i * a.ny + j;
  const double px = a.x_min + (static_cast<double>(i) + 0.5) * a.resolution;
  const double py = a.y_min + (static_cast<double>(j) + 0.5) * a.resolution;
  bool occ = false, fre = false;
  for (int64_t s = 0; s < S; ++s) {
    const EchoSensor& q = sensors[s];
    const int cls = classify_echo(px - q.x, py - q.y, q.c, q.s, q.cos_half, q.min_r, q.max_r,
                                  static_cast<double>(a.ranges[b * S + s]), half_t);
    if (a.per_sensor) {
      float* o = a.out + ((b * S + s) * 3) * cells + cell;
      o[0] = cls == 1 ? 1.f : 0.f;
      o[cells] = cls == 2 ? 1.f : 0.f;
      o[2 * cells] = cls == 0 ? 1.f : 0.f;
    }
    occ |= cls == 1;
    fre |= cls == 2;
  }
  if (!a.per_sensor) {
    float* o = a.out + (b * 3) * cells + cell;
    o[0] = occ ? 1.f : 0.f;
    o[cells] = (fre && !occ) ? 1.f : 0.f;
    o[2 * cells] = (!occ && !fre) ? 1.f : 0.f;
  }
}

}  // namespace edge
