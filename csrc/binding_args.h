// What the CPU and the CUDA pybind11 modules share: raw addresses from Python (tensor.data_ptr()) turned into the
// kernels' argument structs. Each module adds only what is its own (thread count, or stream and error flag) and
// how a failed Status becomes a Python exception.
#pragma once

#include <cstdint>
#include <stdexcept>

#include "kernels.h"

namespace edge::bind {

template <typename T>
T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

inline DType dtype_of(int code) {
  if (code != 0 && code != 1) throw std::invalid_argument("dtype code must be 0 (float32) or 1 (float16)");
  return static_cast<DType>(code);
}

inline BevPoolArgs bev_pool_args(uintptr_t feat, uintptr_t depth, uintptr_t offsets, uintptr_t src_idx,
                                 uintptr_t depth_idx, uintptr_t weight, uintptr_t out, int dtype, int64_t batch,
                                 int64_t n_rows, int64_t channels, int64_t n_src, int64_t n_depth, int64_t nnz) {
  BevPoolArgs a;
  a.feat = ptr<const void>(feat); a.depth = ptr<const void>(depth);
  a.offsets = ptr<const int32_t>(offsets); a.src_idx = ptr<const int32_t>(src_idx);
  a.depth_idx = ptr<const int32_t>(depth_idx); a.weight = ptr<const float>(weight);
  a.out = ptr<void>(out); a.dtype = dtype_of(dtype);
  a.batch = batch; a.n_rows = n_rows; a.channels = channels; a.n_src = n_src; a.n_depth = n_depth; a.nnz = nnz;
  return a;
}

inline BevDepthGradArgs bev_depth_grad_args(uintptr_t feat, uintptr_t grad_out, uintptr_t offsets, uintptr_t src_idx,
                                            uintptr_t weight, uintptr_t pair_grad, int dtype, int64_t batch,
                                            int64_t n_rows, int64_t channels, int64_t n_src, int64_t nnz) {
  BevDepthGradArgs a;
  a.feat = ptr<const void>(feat); a.grad_out = ptr<const void>(grad_out);
  a.offsets = ptr<const int32_t>(offsets); a.src_idx = ptr<const int32_t>(src_idx);
  a.weight = ptr<const float>(weight); a.pair_grad = ptr<float>(pair_grad); a.dtype = dtype_of(dtype);
  a.batch = batch; a.n_rows = n_rows; a.channels = channels; a.n_src = n_src; a.nnz = nnz;
  return a;
}

inline UltrasonicArgs ultrasonic_args(uintptr_t sx, uintptr_t sy, uintptr_t syaw, uintptr_t beam, uintptr_t rmin,
                                      uintptr_t rmax, uintptr_t ranges, uintptr_t out, int64_t batch,
                                      int64_t n_sensors, int64_t nx, int64_t ny, double x_min, double y_min,
                                      double resolution, double arc_thickness, bool per_sensor) {
  UltrasonicArgs a;
  a.sensor_x = ptr<const float>(sx); a.sensor_y = ptr<const float>(sy); a.sensor_yaw = ptr<const float>(syaw);
  a.beam_width = ptr<const float>(beam); a.min_range = ptr<const float>(rmin); a.max_range = ptr<const float>(rmax);
  a.ranges = ptr<const float>(ranges); a.out = ptr<float>(out);
  a.batch = batch; a.n_sensors = n_sensors; a.nx = nx; a.ny = ny;
  a.x_min = x_min; a.y_min = y_min; a.resolution = resolution; a.arc_thickness = arc_thickness;
  a.per_sensor = per_sensor;
  return a;
}

inline PruneArgs prune_args(uintptr_t x, uintptr_t scores, uintptr_t q, uintptr_t keys, uintptr_t out,
                            uintptr_t kept_idx, uintptr_t scores_out, int dtype, int64_t batch, int64_t n_tokens,
                            int64_t channels, int64_t heads, int64_t head_dim, int64_t k, bool has_cls, bool fuse) {
  PruneArgs a;
  a.x = ptr<const void>(x); a.scores = ptr<const float>(scores); a.q = ptr<const void>(q);
  a.keys = ptr<const void>(keys); a.out = ptr<void>(out); a.kept_idx = ptr<int64_t>(kept_idx);
  a.scores_out = ptr<float>(scores_out); a.dtype = dtype_of(dtype);
  a.batch = batch; a.n_tokens = n_tokens; a.channels = channels; a.heads = heads; a.head_dim = head_dim;
  a.k = k; a.has_cls = has_cls; a.fuse = fuse;
  return a;
}

}  // namespace edge::bind
