// edge_lidar::scatter_pillars: the op's schema, its CPU kernel and the Python module stub that loads them.
// Thin registration in the manner of pytorch/extension-cpp: the schema and kernels live here and in
// scatter_cuda.cu; the fake (meta) kernel and the reference are Python (edge_lidar/ops.py).
#include <Python.h>

#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "scatter.h"

extern "C" {
// `import edge_lidar._C` loads this library, which registers the op; it defines no Python functions.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace edge_lidar {

void check_inputs(const at::Tensor& points, double resolution, int64_t nx, int64_t ny, double z_min, double z_max) {
  TORCH_CHECK(points.dim() == 2 && points.size(1) == 4, "scatter_pillars: points must be (N, 4) x, y, z, intensity; got ",
              points.sizes());
  TORCH_CHECK(points.scalar_type() == at::kFloat, "scatter_pillars: points must be float32, got ", points.scalar_type());
  TORCH_CHECK(nx > 0 && ny > 0 && resolution > 0.0, "scatter_pillars: bad grid nx=", nx, " ny=", ny,
              " resolution=", resolution);
  TORCH_CHECK(z_max > z_min, "scatter_pillars: empty height range [", z_min, ", ", z_max, ")");
}

Grid grid_of(double x_min, double y_min, double resolution, int64_t nx, int64_t ny, double z_min, double z_max) {
  return Grid{static_cast<float>(x_min), static_cast<float>(y_min), static_cast<float>(resolution),
              static_cast<float>(z_min), static_cast<float>(z_max), nx, ny};
}

// One pass in point order (deterministic, float32 sums as the reference's index_add), then means per cell.
at::Tensor scatter_pillars_cpu(const at::Tensor& points, double x_min, double y_min, double resolution, int64_t nx,
                               int64_t ny, double z_min, double z_max) {
  check_inputs(points, resolution, nx, ny, z_min, z_max);
  TORCH_INTERNAL_ASSERT(points.device().is_cpu());
  const at::Tensor p = points.contiguous();
  at::Tensor out = at::zeros({kChannels, nx, ny}, p.options());
  const Grid g = grid_of(x_min, y_min, resolution, nx, ny, z_min, z_max);
  const int64_t n_cells = nx * ny;
  const float* src = p.data_ptr<float>();
  float* o = out.data_ptr<float>();
  float* count = o + kCount * n_cells;
  float* max_h = o + kMaxHeight * n_cells;
  float* sum_h = o + kMeanHeight * n_cells;
  float* sum_i = o + kMeanIntensity * n_cells;
  for (int64_t k = 0; k < p.size(0); ++k) {
    const float* pt = src + 4 * k;
    const int64_t c = cell_of(pt, g);
    if (c < 0) continue;
    const float h = pt[2] - g.z_min;
    count[c] += 1.0f;
    sum_h[c] += h;
    sum_i[c] += pt[3];
    if (h > max_h[c]) max_h[c] = h;
  }
  for (int64_t c = 0; c < n_cells; ++c) {
    if (count[c] > 0.0f) {
      sum_h[c] /= count[c];
      sum_i[c] /= count[c];
    }
  }
  return out;
}

TORCH_LIBRARY(edge_lidar, m) {
  m.def("scatter_pillars(Tensor points, float x_min, float y_min, float resolution, int nx, int ny, float z_min, "
        "float z_max) -> Tensor");
}

TORCH_LIBRARY_IMPL(edge_lidar, CPU, m) { m.impl("scatter_pillars", &scatter_pillars_cpu); }

}  // namespace edge_lidar
