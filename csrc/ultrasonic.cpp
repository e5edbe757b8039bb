// Ultrasonic range readings to BEV occupied / free / unknown channels on the CPU, threads over cells.
#include <cmath>
#include <vector>

#include "kernels.h"
#include "thread_pool.h"
#include "ultrasonic_common.h"

namespace edge {

Status ultrasonic_raster_cpu(const UltrasonicArgs& a, int n_threads) {
  if (a.resolution <= 0) return Status::Error("ultrasonic_raster: resolution must be > 0");
  const int64_t S = a.n_sensors;
  std::vector<EchoSensor> sensors(static_cast<size_t>(S));
  for (int64_t s = 0; s < S; ++s) {
    const double half = std::fmin(static_cast<double>(a.beam_width[s]) * 0.5, M_PI);
    sensors[s] = {a.sensor_x[s], a.sensor_y[s], std::cos(static_cast<double>(a.sensor_yaw[s])),
                  std::sin(static_cast<double>(a.sensor_yaw[s])), std::cos(half), a.min_range[s], a.max_range[s]};
  }
  const double half_t = a.arc_thickness * 0.5;
  parallel_for(a.batch * a.nx, n_threads, [&](int64_t begin, int64_t end) {
    for (int64_t bi = begin; bi < end; ++bi) {
      for (int64_t j = 0; j < a.ny; ++j) raster_cell(a, sensors.data(), bi / a.nx, bi % a.nx, j, half_t);
    }
  });
  return Status::Ok();
}

}  // namespace edge
