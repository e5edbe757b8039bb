// CUDA kernel of edge_lidar::scatter_pillars (schema in scatter.cpp): one thread per point accumulating with
// atomics, then one thread per cell turning sums into means. Runs on the tensor's current stream.
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "scatter.h"

namespace edge_lidar {

void check_inputs(const at::Tensor& points, double resolution, int64_t nx, int64_t ny, double z_min, double z_max);
Grid grid_of(double x_min, double y_min, double resolution, int64_t nx, int64_t ny, double z_min, double z_max);

namespace {

constexpr int kThreads = 256;

__global__ void accumulate(const float* __restrict__ points, int64_t n, Grid g, float* __restrict__ out) {
  const int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (k >= n) return;
  const float* pt = points + 4 * k;
  const int64_t c = cell_of(pt, g);
  if (c < 0) return;
  const int64_t n_cells = g.nx * g.ny;
  const float h = pt[2] - g.z_min;  // >= 0: the int order of non-negative floats is their order
  atomicAdd(out + kCount * n_cells + c, 1.0f);
  atomicAdd(out + kMeanHeight * n_cells + c, h);
  atomicAdd(out + kMeanIntensity * n_cells + c, pt[3]);
  atomicMax(reinterpret_cast<int*>(out + kMaxHeight * n_cells + c), __float_as_int(h));
}

__global__ void finish(int64_t n_cells, float* __restrict__ out) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= n_cells) return;
  const float count = out[kCount * n_cells + c];
  if (count > 0.0f) {
    out[kMeanHeight * n_cells + c] /= count;
    out[kMeanIntensity * n_cells + c] /= count;
  }
}

int blocks(int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

}  // namespace

at::Tensor scatter_pillars_cuda(const at::Tensor& points, double x_min, double y_min, double resolution, int64_t nx,
                                int64_t ny, double z_min, double z_max) {
  check_inputs(points, resolution, nx, ny, z_min, z_max);
  TORCH_INTERNAL_ASSERT(points.device().is_cuda());
  const c10::cuda::CUDAGuard guard(points.device());
  const at::Tensor p = points.contiguous();
  at::Tensor out = at::zeros({kChannels, nx, ny}, p.options());
  const Grid g = grid_of(x_min, y_min, resolution, nx, ny, z_min, z_max);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(points.device().index()).stream();
  const int64_t n = p.size(0);
  if (n > 0) {
    accumulate<<<blocks(n), kThreads, 0, stream>>>(p.data_ptr<float>(), n, g, out.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  finish<<<blocks(nx * ny), kThreads, 0, stream>>>(nx * ny, out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

TORCH_LIBRARY_IMPL(edge_lidar, CUDA, m) { m.impl("scatter_pillars", &scatter_pillars_cuda); }

}  // namespace edge_lidar
