// pybind11 bindings of the CUDA kernels: raw device addresses, sizes and the caller's stream
// (torch.cuda.current_stream().cuda_stream). Launches are asynchronous; index problems are OR-ed
// into the device int at `error_flag` (1 offsets, 2 source index, 4 depth index) for the caller.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include <stdexcept>

#include "binding_args.h"

namespace py = pybind11;
using edge::bind::ptr;

namespace {

void check(const edge::Status& s) {
  if (!s.ok) throw std::runtime_error(s.message);
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "mpnp-edge CUDA kernels (raw-pointer API on a caller-given stream; use edge.kernels)";

  m.def("device_count", [] {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
  });

  m.def("bev_pool", [](uintptr_t feat, uintptr_t depth, uintptr_t offsets, uintptr_t src_idx, uintptr_t depth_idx,
                       uintptr_t weight, uintptr_t out, int dtype, int64_t batch, int64_t n_rows, int64_t channels,
                       int64_t n_src, int64_t n_depth, int64_t nnz, uintptr_t error_flag, uintptr_t stream) {
    auto a = edge::bind::bev_pool_args(feat, depth, offsets, src_idx, depth_idx, weight, out, dtype, batch, n_rows,
                                       channels, n_src, n_depth, nnz);
    check(edge::bev_pool_cuda(a, ptr<int>(error_flag), ptr<void>(stream)));
  });

  m.def("bev_depth_grad", [](uintptr_t feat, uintptr_t grad_out, uintptr_t offsets, uintptr_t src_idx,
                             uintptr_t weight, uintptr_t pair_grad, int dtype, int64_t batch, int64_t n_rows,
                             int64_t channels, int64_t n_src, int64_t nnz, uintptr_t error_flag, uintptr_t stream) {
    auto a = edge::bind::bev_depth_grad_args(feat, grad_out, offsets, src_idx, weight, pair_grad, dtype, batch, n_rows,
                                             channels, n_src, nnz);
    check(edge::bev_depth_grad_cuda(a, ptr<int>(error_flag), ptr<void>(stream)));
  });

  m.def("ultrasonic_raster", [](uintptr_t sx, uintptr_t sy, uintptr_t syaw, uintptr_t beam, uintptr_t rmin,
                                uintptr_t rmax, uintptr_t ranges, uintptr_t out, int64_t batch, int64_t n_sensors,
                                int64_t nx, int64_t ny, double x_min, double y_min, double resolution,
                                double arc_thickness, bool per_sensor, uintptr_t stream) {
    auto a = edge::bind::ultrasonic_args(sx, sy, syaw, beam, rmin, rmax, ranges, out, batch, n_sensors, nx, ny, x_min,
                                         y_min, resolution, arc_thickness, per_sensor);
    check(edge::ultrasonic_raster_cuda(a, ptr<void>(stream)));
  });

  m.def("prune_tokens", [](uintptr_t x, uintptr_t scores, uintptr_t q, uintptr_t keys, uintptr_t out,
                           uintptr_t kept_idx, uintptr_t scores_out, uintptr_t workspace, int dtype, int64_t batch,
                           int64_t n_tokens, int64_t channels, int64_t heads, int64_t head_dim, int64_t k,
                           bool has_cls, bool fuse, uintptr_t stream) {
    auto a = edge::bind::prune_args(x, scores, q, keys, out, kept_idx, scores_out, dtype, batch, n_tokens, channels,
                                    heads, head_dim, k, has_cls, fuse);
    a.workspace = ptr<float>(workspace);
    check(edge::prune_tokens_cuda(a, ptr<void>(stream)));
  });
}
