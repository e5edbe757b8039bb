// pybind11 bindings of the CPU kernels. Tensors cross as raw addresses (tensor.data_ptr()) plus sizes,
// so the module never links libtorch; the Python wrappers in edge/kernels validate dtype, device,
// shape and contiguity before calling, and the kernels validate indices while they run.
#include <pybind11/pybind11.h>

#include <stdexcept>

#include "binding_args.h"

namespace py = pybind11;

namespace {

void check(const edge::Status& s) {
  if (!s.ok) throw std::invalid_argument(s.message);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "mpnp-edge CPU kernels (raw-pointer API; use edge.kernels for the PyTorch ops)";

  m.def("bev_pool", [](uintptr_t feat, uintptr_t depth, uintptr_t offsets, uintptr_t src_idx, uintptr_t depth_idx,
                       uintptr_t weight, uintptr_t out, int dtype, int64_t batch, int64_t n_rows, int64_t channels,
                       int64_t n_src, int64_t n_depth, int64_t nnz, int n_threads) {
    auto a = edge::bind::bev_pool_args(feat, depth, offsets, src_idx, depth_idx, weight, out, dtype, batch, n_rows,
                                       channels, n_src, n_depth, nnz);
    edge::Status s;
    { py::gil_scoped_release nogil; s = edge::bev_pool_cpu(a, n_threads); }
    check(s);
  });

  m.def("bev_depth_grad", [](uintptr_t feat, uintptr_t grad_out, uintptr_t offsets, uintptr_t src_idx,
                             uintptr_t weight, uintptr_t pair_grad, int dtype, int64_t batch, int64_t n_rows,
                             int64_t channels, int64_t n_src, int64_t nnz, int n_threads) {
    auto a = edge::bind::bev_depth_grad_args(feat, grad_out, offsets, src_idx, weight, pair_grad, dtype, batch, n_rows,
                                             channels, n_src, nnz);
    edge::Status s;
    { py::gil_scoped_release nogil; s = edge::bev_depth_grad_cpu(a, n_threads); }
    check(s);
  });

  m.def("ultrasonic_raster", [](uintptr_t sx, uintptr_t sy, uintptr_t syaw, uintptr_t beam, uintptr_t rmin,
                                uintptr_t rmax, uintptr_t ranges, uintptr_t out, int64_t batch, int64_t n_sensors,
                                int64_t nx, int64_t ny, double x_min, double y_min, double resolution,
                                double arc_thickness, bool per_sensor, int n_threads) {
    auto a = edge::bind::ultrasonic_args(sx, sy, syaw, beam, rmin, rmax, ranges, out, batch, n_sensors, nx, ny, x_min,
                                         y_min, resolution, arc_thickness, per_sensor);
    edge::Status s;
    { py::gil_scoped_release nogil; s = edge::ultrasonic_raster_cpu(a, n_threads); }
    check(s);
  });

  m.def("prune_tokens", [](uintptr_t x, uintptr_t scores, uintptr_t q, uintptr_t keys, uintptr_t out,
                           uintptr_t kept_idx, uintptr_t scores_out, int dtype, int64_t batch, int64_t n_tokens,
                           int64_t channels, int64_t heads, int64_t head_dim, int64_t k, bool has_cls, bool fuse,
                           int n_threads) {
    auto a = edge::bind::prune_args(x, scores, q, keys, out, kept_idx, scores_out, dtype, batch, n_tokens, channels,
                                    heads, head_dim, k, has_cls, fuse);
    edge::Status s;
    { py::gil_scoped_release nogil; s = edge::prune_tokens_cpu(a, n_threads); }
    check(s);
  });
}
