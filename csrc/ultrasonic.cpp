// Ultrasonic range readings to BEV occupied / free / unknown channels on the CPU, threads over cells.
#include <cmath>
#include <vector>

#include "kernels.h"
#include "thread_pool.h"
#include "ultrasonic_common.h"

namespace edge {

Status ultrasonic_raster_cpu(const UltrasonicArgs& a, int n_threads) {
  if (a.resolution <= 0) return Status::Error("ultrasonic_raster: resolution must be > 0");
  const int64_t S = a.n_sensors, cells = a.nx * a.ny;
  struct Sensor { double x, y, c, s, cos_half, min_r, max_r; };
  std::vector<Sensor> sensors(static_cast<size_t>(S));
  for (int64_t s = 0; s < S; ++s) {
    const double half = std::fmin(static_cast<double>(a.beam_width[s]) * 0.5, M_PI);
    sensors[s] = {a.sensor_x[s], a.sensor_y[s], std::cos(static_cast<double>(a.sensor_yaw[s])),
                  std::sin(static_cast<double>(a.sensor_yaw[s])), std::cos(half), a.min_range[s], a.max_range[s]};
  }
  const double half_t = a.arc_thickness * 0.5;
  parallel_for(a.batch * a.nx, n_threads, [&](int64_t begin, int64_t end) {
    for (int64_t bi = begin; bi < end; ++bi) {
      const int64_t b = bi / a.nx, i = bi % a.nx;
      const double px = a.x_min + (static_cast<double>(i) + 0.5) * a.resolution;
      const float* ranges = a.ranges + b * S;
      for (int64_t j = 0; j < a.ny; ++j) {
        const double py = a.y_min + (static_cast<double>(j) + 0.5) * a.resolution;
        const int64_t cell = i * a.ny + j;
        bool occ = false, fre = false;
        for (int64_t s = 0; s < S; ++s) {
          const Sensor& q = sensors[s];
          const int cls = classify_echo(px - q.x, py - q.y, q.c, q.s, q.cos_half, q.min_r, q.max_r,
                                        static_cast<double>(ranges[s]), half_t);
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
  });
  return Status::Ok();
}

}  // namespace edge
