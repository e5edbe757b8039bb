// IEEE fp16 <-> fp32 on the CPU: a 64K-entry table for loads on x86 (stays in L2; the hot loops use F16C
// where present), native __fp16 on aarch64, and a rounding conversion for stores.
#pragma once
#include <cstdint>
#include <cstring>

// Hot loops get an AVX2/FMA clone next to the baseline one (picked at load time through ifunc), so the
// module stays portable to any x86-64 and still uses the wide units where present.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define EDGE_SIMD_CLONES __attribute__((target_clones("arch=haswell", "default")))
#else
#define EDGE_SIMD_CLONES
#endif

namespace edge {

extern const float* const kHalfToFloat;  // 65536 entries
uint16_t float_to_half(float f);

#if defined(__aarch64__)
// Jetson (aarch64): the hardware converts fp16 natively and the compiler vectorises it.
inline float half_to_float(uint16_t h) {
  __fp16 v;
  std::memcpy(&v, &h, sizeof v);
  return static_cast<float>(v);
}
#else
inline float half_to_float(uint16_t h) { return kHalfToFloat[h]; }
#endif

// Load element i of a feature buffer in `is_half` storage as fp32.
inline float load_as_float(const void* p, int64_t i, bool is_half) {
  return is_half ? half_to_float(static_cast<const uint16_t*>(p)[i]) : static_cast<const float*>(p)[i];
}

inline void store_from_float(void* p, int64_t i, float v, bool is_half) {
  if (is_half) static_cast<uint16_t*>(p)[i] = float_to_half(v);
  else static_cast<float*>(p)[i] = v;
}

}  // namespace edge
