// Ultrasonic rasterisation on the GPU: one thread per (batch, cell), sensor table in shared memory.
#include "cuda/common.cuh"
#include "ultrasonic_common.h"

namespace edge {
namespace {

__global__ void ultrasonic_kernel(UltrasonicArgs a) {
  extern __shared__ EchoSensor sensors[];
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
    const int64_t b = t / cells, cell = t % cells;
    raster_cell(a, sensors, b, cell / a.ny, cell % a.ny, half_t);
  }
}

}  // namespace

Status ultrasonic_raster_cuda(const UltrasonicArgs& a, void* stream) {
  if (a.resolution <= 0) return Status::Error("ultrasonic_raster: resolution must be > 0");
  const size_t shmem = static_cast<size_t>(a.n_sensors) * sizeof(EchoSensor);
  if (shmem > 48 * 1024) return Status::Error("ultrasonic_raster: too many sensors for the CUDA kernel (max 877)");
  const int64_t work = a.batch * a.nx * a.ny;
  if (work == 0) return Status::Ok();
  ultrasonic_kernel<<<grid_for(work, 256, 4096), 256, shmem, static_cast<cudaStream_t>(stream)>>>(a);
  return launch_status("ultrasonic_raster");
}

}  // namespace edge
