// The pillar scatter shared by the CPU and CUDA kernels: which cell a point falls in, and the channel layout.
// Both kernels and the PyTorch reference (edge_lidar/ops.py) compute the cell in float32 with the same operations
// (subtract, divide, floor), so a point on a cell boundary lands in the same cell everywhere.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define EDGE_LIDAR_HD __host__ __device__
#else
#define EDGE_LIDAR_HD
#endif

namespace edge_lidar {

// Output channels, each (nx, ny): points in the cell, highest point above z_min, mean height above z_min,
// mean intensity. Empty cells are 0 in every channel.
constexpr int kChannels = 4;
constexpr int kCount = 0, kMaxHeight = 1, kMeanHeight = 2, kMeanIntensity = 3;

struct Grid {
  float x_min, y_min, resolution, z_min, z_max;
  int64_t nx, ny;
};

// Flat cell index (i * ny + j) of a point, or -1 when it is outside the grid, outside [z_min, z_max) or not finite.
EDGE_LIDAR_HD inline int64_t cell_of(const float* p, const Grid& g) {
  const float x = p[0], y = p[1], z = p[2], intensity = p[3];
  if (!(std::isfinite(x) && std::isfinite(y) && std::isfinite(z) && std::isfinite(intensity))) return -1;
  if (!(z >= g.z_min && z < g.z_max)) return -1;
  const float fi = floorf((x - g.x_min) / g.resolution);
  const float fj = floorf((y - g.y_min) / g.resolution);
  if (!(fi >= 0.0f && fi < static_cast<float>(g.nx) && fj >= 0.0f && fj < static_cast<float>(g.ny))) return -1;
  return static_cast<int64_t>(fi) * g.ny + static_cast<int64_t>(fj);
}

}  // namespace edge_lidar
