// CSR BEV pooling on the GPU: one warp per (batch, output row), lanes over channels, fp32 registers.
// The warp loads 32 (index, weight) pairs at a time and broadcasts them with shuffles, so the table is
// read once, coalesced; features are read as coalesced channel rows; nothing is written twice.
#include "cuda/common.cuh"

namespace edge {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kChanPerLane = 4;  // 128 channels per pass over the pairs

// Channel access in units of VEC elements: VEC = 2 loads float2 / __half2 (8 / 4 bytes per lane) when the
// channel count is even and the buffers are aligned, which doubles the bytes per warp load instruction.
template <typename T, int VEC> struct Chan;
template <typename T> struct Chan<T, 1> {
  __device__ static float2 load(const T* p) { return make_float2(to_float(__ldg(p)), 0.f); }
  __device__ static void store(T* p, float2 v) { *p = from_float<T>(v.x); }
};
template <> struct Chan<float, 2> {
  __device__ static float2 load(const float* p) { return __ldg(reinterpret_cast<const float2*>(p)); }
  __device__ static void store(float* p, float2 v) { *reinterpret_cast<float2*>(p) = v; }
};
template <> struct Chan<__half, 2> {
  __device__ static float2 load(const __half* p) { return __half22float2(*reinterpret_cast<const __half2*>(p)); }
  __device__ static void store(__half* p, float2 v) { *reinterpret_cast<__half2*>(p) = __floats2half2_rn(v.x, v.y); }
};

template <typename T, int VEC>
__global__ void bev_pool_kernel(const T* __restrict__ feat, const T* __restrict__ depth,
                                const int* __restrict__ offsets, const int* __restrict__ src_idx,
                                const int* __restrict__ depth_idx, const float* __restrict__ weight,
                                T* __restrict__ out, int64_t batch, int64_t n_rows, int64_t C, int64_t n_src,
                                int64_t n_depth, int64_t nnz, int* err) {
  using Io = Chan<T, VEC>;
  const int lane = threadIdx.x;
  const int64_t total = batch * n_rows;
  constexpr int64_t kPass = 32 * kChanPerLane * VEC;  // channels per pass over the pairs
  for (int64_t br = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y; br < total;
       br += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    const int64_t b = br / n_rows, r = br % n_rows;
    int64_t k0 = __ldg(offsets + r), k1 = __ldg(offsets + r + 1);
    if (k0 < 0 || k1 < k0 || k1 > nnz) {
      if (lane == 0) atomicOr(err, 1);
      k1 = k0 = 0;
    }
    const T* fb = feat + b * n_src * C;
    for (int64_t c0 = 0; c0 < C; c0 += kPass) {
      float2 acc[kChanPerLane];
#pragma unroll
      for (int u = 0; u < kChanPerLane; ++u) acc[u] = make_float2(0.f, 0.f);
      for (int64_t kb = k0; kb < k1; kb += 32) {
        const int64_t k = kb + lane;
        int s = -1;  // -1 marks a lane without a (valid) pair
        float w = 0.f;
        if (k < k1) {
          s = __ldg(src_idx + k);
          w = __ldg(weight + k);
          if (s < 0 || s >= n_src) { atomicOr(err, 2); s = -1; }
          if (s >= 0 && depth != nullptr) {
            const int d = __ldg(depth_idx + k);
            if (d < 0 || d >= n_depth) { atomicOr(err, 4); s = -1; }
            else w *= to_float(depth[b * n_depth + d]);
          }
        }
        const int n = static_cast<int>(k1 - kb < 32 ? k1 - kb : 32);
        for (int j = 0; j < n; ++j) {
          const int sj = __shfl_sync(0xffffffffu, s, j);
          const float wj = __shfl_sync(0xffffffffu, w, j);
          if (sj < 0) continue;  // uniform across the warp: invalid pairs are never dereferenced
          const T* row = fb + static_cast<int64_t>(sj) * C;
#pragma unroll
          for (int u = 0; u < kChanPerLane; ++u) {
            const int64_t c = c0 + (lane + 32 * u) * VEC;
            if (c < C) {  // C is a multiple of VEC, so the whole vector is in range
              const float2 v = Io::load(row + c);
              acc[u].x += wj * v.x;
              if (VEC == 2) acc[u].y += wj * v.y;
            }
          }
        }
      }
      T* o = out + br * C;
#pragma unroll
      for (int u = 0; u < kChanPerLane; ++u) {
        const int64_t c = c0 + (lane + 32 * u) * VEC;
        if (c < C) Io::store(o + c, acc[u]);
      }
    }
  }
}

template <typename T>
__global__ void bev_depth_grad_kernel(const T* __restrict__ feat, const T* __restrict__ grad_out,
                                      const int* __restrict__ offsets, const int* __restrict__ src_idx,
                                      const float* __restrict__ weight, float* __restrict__ pair_grad,
                                      int64_t batch, int64_t n_rows, int64_t C, int64_t n_src, int64_t nnz,
                                      int* err) {
  const int lane = threadIdx.x;
  const int64_t total = batch * n_rows;
  for (int64_t br = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y; br < total;
       br += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    const int64_t b = br / n_rows, r = br % n_rows;
    const int64_t k0 = __ldg(offsets + r), k1 = __ldg(offsets + r + 1);
    if (k0 < 0 || k1 < k0 || k1 > nnz) {
      if (lane == 0) atomicOr(err, 1);
      continue;
    }
    const T* g = grad_out + br * C;
    for (int64_t k = k0; k < k1; ++k) {
      const int s = __ldg(src_idx + k);
      float dot = 0.f;
      if (s >= 0 && s < n_src) {
        const T* row = feat + (b * n_src + s) * C;
        for (int64_t c = lane; c < C; c += 32) dot += to_float(row[c]) * to_float(g[c]);
      } else if (lane == 0) {
        atomicOr(err, 2);
      }
      dot = warp_sum(dot);
      if (lane == 0) pair_grad[b * nnz + k] = __ldg(weight + k) * dot;
    }
  }
}

template <typename T>
void launch_bev_pool(const BevPoolArgs& a, int* error_flag, cudaStream_t st) {
  const dim3 block(32, kWarpsPerBlock);
  const int grid = grid_for(a.batch * a.n_rows, kWarpsPerBlock);
  const T* feat = static_cast<const T*>(a.feat);
  const T* depth = static_cast<const T*>(a.depth);
  T* out = static_cast<T*>(a.out);
  const uintptr_t align = 2 * sizeof(T);
  const bool vec2 = a.channels % 2 == 0 && reinterpret_cast<uintptr_t>(feat) % align == 0 &&
                    reinterpret_cast<uintptr_t>(out) % align == 0;
  if (vec2)
    bev_pool_kernel<T, 2><<<grid, block, 0, st>>>(feat, depth, a.offsets, a.src_idx, a.depth_idx, a.weight, out,
                                                  a.batch, a.n_rows, a.channels, a.n_src, a.n_depth, a.nnz, error_flag);
  else
    bev_pool_kernel<T, 1><<<grid, block, 0, st>>>(feat, depth, a.offsets, a.src_idx, a.depth_idx, a.weight, out,
                                                  a.batch, a.n_rows, a.channels, a.n_src, a.n_depth, a.nnz, error_flag);
}

}  // namespace

Status bev_pool_cuda(const BevPoolArgs& a, int* error_flag, void* stream) {
  if (a.batch * a.n_rows == 0 || a.channels == 0) return Status::Ok();
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (a.dtype == DType::F16) launch_bev_pool<__half>(a, error_flag, st);
  else launch_bev_pool<float>(a, error_flag, st);
  return launch_status("bev_pool");
}

Status bev_depth_grad_cuda(const BevDepthGradArgs& a, int* error_flag, void* stream) {
  if (a.batch * a.n_rows == 0) return Status::Ok();
  const dim3 block(32, kWarpsPerBlock);
  const int grid = grid_for(a.batch * a.n_rows, kWarpsPerBlock);
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (a.dtype == DType::F16) {
    bev_depth_grad_kernel<__half><<<grid, block, 0, st>>>(
        static_cast<const __half*>(a.feat), static_cast<const __half*>(a.grad_out), a.offsets, a.src_idx, a.weight,
        a.pair_grad, a.batch, a.n_rows, a.channels, a.n_src, a.nnz, error_flag);
  } else {
    bev_depth_grad_kernel<float><<<grid, block, 0, st>>>(
        static_cast<const float*>(a.feat), static_cast<const float*>(a.grad_out), a.offsets, a.src_idx, a.weight,
        a.pair_grad, a.batch, a.n_rows, a.channels, a.n_src, a.nnz, error_flag);
  }
  return launch_status("bev_depth_grad");
}

}  // namespace edge
