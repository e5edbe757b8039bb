// Plain kernel entry points over raw pointers: one source serves the PyTorch ops, a TensorRT plugin
// and C++ benchmarks, and nothing here depends on libtorch.
//
// Every function validates what it reads (offsets, indices) while it runs and reports the first
// problem through the returned Status instead of reading out of bounds.
#pragma once
#include <cstdint>
#include <string>

namespace edge {

enum class DType : int { F32 = 0, F16 = 1 };

struct Status {
  bool ok = true;
  std::string message;
  static Status Ok() { return {}; }
  static Status Error(std::string m) { return {false, std::move(m)}; }
};

// BEV pooling over a CSR table: for every batch b, output row r and channel c
//   out[b, r, c] = sum_{k in [offsets[r], offsets[r+1])} weight[k] * (depth ? depth[b, depth_idx[k]] : 1)
//                  * feat[b, src_idx[k], c]
// accumulated in fp32; one writer per output row (no atomics). feat/depth/out share `dtype`.
struct BevPoolArgs {
  const void* feat = nullptr;        // (B, n_src, C)
  const void* depth = nullptr;       // (B, n_depth) or nullptr
  const int32_t* offsets = nullptr;  // (n_rows + 1)
  const int32_t* src_idx = nullptr;  // (nnz)
  const int32_t* depth_idx = nullptr;  // (nnz) when depth != nullptr
  const float* weight = nullptr;     // (nnz)
  void* out = nullptr;               // (B, n_rows, C)
  DType dtype = DType::F32;
  int64_t batch = 0, n_rows = 0, channels = 0, n_src = 0, n_depth = 0, nnz = 0;
};

// Gradient of bev_pool with respect to depth, per pair (one writer per pair):
//   pair_grad[b, k] = weight[k] * dot(feat[b, src_idx[k], :], grad_out[b, row(k), :])
// The caller scatters pair_grad into depth_idx (several pairs may share a depth entry).
struct BevDepthGradArgs {
  const void* feat = nullptr;       // (B, n_src, C)
  const void* grad_out = nullptr;   // (B, n_rows, C)
  const int32_t* offsets = nullptr;
  const int32_t* src_idx = nullptr;
  const float* weight = nullptr;
  float* pair_grad = nullptr;       // (B, nnz) fp32
  DType dtype = DType::F32;
  int64_t batch = 0, n_rows = 0, channels = 0, n_src = 0, nnz = 0;
};

// Ultrasonic rasterisation into a BEV grid (cell (i, j): i along x from x_min, j along y from y_min).
// Channels: 0 occupied, 1 free, 2 unknown (one-hot per cell). ranges: +inf = no echo (free up to
// max_range), -inf = object closer than min_range, NaN = invalid reading (sensor ignored).
struct UltrasonicArgs {
  const float* sensor_x = nullptr;
  const float* sensor_y = nullptr;
  const float* sensor_yaw = nullptr;
  const float* beam_width = nullptr;
  const float* min_range = nullptr;
  const float* max_range = nullptr;
  const float* ranges = nullptr;  // (B, S)
  float* out = nullptr;           // (B, 3, nx, ny) or (B, S, 3, nx, ny) when per_sensor
  int64_t batch = 0, n_sensors = 0, nx = 0, ny = 0;
  double x_min = 0, y_min = 0, resolution = 0.1, arc_thickness = 0.2;
  bool per_sensor = false;
};

// Token pruning, one row per batch element. Scores come from `scores` (B, N) fp32, or are recomputed
// as the CLS attention row mean_h softmax_n(q[b,h,:] . keys[b,h,n,:] / sqrt(Dh)) (q, keys in dtype).
// Keeps k tokens (CLS at 0 always when has_cls) in their original order; ties go to the lower index,
// NaN scores rank below every number. With fuse, row k of out is the dropped tokens averaged with
// weights max(score, 0) (NaN -> 0), or zeros when nothing (or only zero weight) was dropped.
struct PruneArgs {
  const void* x = nullptr;       // (B, N, C)
  const float* scores = nullptr; // (B, N) or nullptr
  const void* q = nullptr;       // (B, H, Dh)
  const void* keys = nullptr;    // (B, H, N, Dh)
  void* out = nullptr;           // (B, k + fuse, C)
  int64_t* kept_idx = nullptr;   // (B, k)
  float* scores_out = nullptr;   // (B, N) fp32: the scores used
  float* workspace = nullptr;    // CUDA only: (B, H * N + N) fp32 scratch (per-head probabilities, fusion weights)
  DType dtype = DType::F32;
  int64_t batch = 0, n_tokens = 0, channels = 0, heads = 0, head_dim = 0, k = 0;
  bool has_cls = true, fuse = false;
};

Status bev_pool_cpu(const BevPoolArgs& a, int n_threads);
Status bev_depth_grad_cpu(const BevDepthGradArgs& a, int n_threads);
Status ultrasonic_raster_cpu(const UltrasonicArgs& a, int n_threads);
Status prune_tokens_cpu(const PruneArgs& a, int n_threads);

// CUDA entry points (csrc/cuda): asynchronous on `stream`; index problems are counted into the
// device int `error_flag` (bad entries are skipped, never dereferenced) for the caller to check.
Status bev_pool_cuda(const BevPoolArgs& a, int* error_flag, void* stream);
Status bev_depth_grad_cuda(const BevDepthGradArgs& a, int* error_flag, void* stream);
Status ultrasonic_raster_cuda(const UltrasonicArgs& a, void* stream);
Status prune_tokens_cuda(const PruneArgs& a, void* stream);

}  // namespace edge
