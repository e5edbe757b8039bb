// Ultrasonic rasterisation on the GPU: one thread per (batch, cell), sensor table in shared memory.
#include "cuda/common.cuh"
#include "ultrasonic_common.h"

namespace edge {
namespace {

struct SensorRow { double x, y, c, s, cos_half, min_r, max_r; };

__global__ void ultrasonic_kernel(UltrasonicArgs a) {
  extern __shared__ SensorRow sensors[];
  const int64_t S = a.n_sensors, cells = a.nx * a.ny;
  for (int64_t s = threadIdx.x; s < S; s += blockDim.x) {
    const double half = fmin(static_cast<double>(a.beam_width[s]) * 0.5, M_PI);
    const double yaw = a.sensor_yaw[s];
    sensors[s] = {a.sensor_x[s], a.sensor_y[s], cos(yaw), sin(yaw), cos(half), a.min_range[s], a.max_range[s]};
  }
  __syncthreads();
  const double half_t = a.arc_thickness * 0.5;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < a.batch * cells;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = t / cells, cell = t % cells, i = cell / a.ny, j = cell % a.ny;
    const double px = a.x_min + (static_cast<double>(i) + 0.5) * a.resolution;
    const double py = a.y_min + (static_cast<double>(j) + 0.5) * a.resolution;
    bool occ = false, fre = false;
    for (int64_t s = 0; s < S; ++s) {
      const SensorRow& q = sensors[s];
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
}

}  // namespace

Status ultrasonic_raster_cuda(const UltrasonicArgs& a, void* stream) {
  if (a.resolution <= 0) return Status::Error("ultrasonic_raster: resolution must be > 0");
  const size_t shmem = static_cast<size_t>(a.n_sensors) * sizeof(SensorRow);
  if (shmem > 48 * 1024) return Status::Error("ultrasonic_raster: too many sensors for the CUDA kernel (max 877)");
  const int64_t work = a.batch * a.nx * a.ny;
  if (work == 0) return Status::Ok();
  ultrasonic_kernel<<<grid_for(work, 256, 4096), 256, shmem, static_cast<cudaStream_t>(stream)>>>(a);
  return launch_status("ultrasonic_raster");
}

}  // namespace edge
