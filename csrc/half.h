// IEEE fp16 <-> fp32 on the CPU without compiler or ISA support: a 64K-entry table for loads (fast,
// stays in L2) and a rounding conversion for stores (one per output element).
#pragma once
#include <cstdint>

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

inline float half_to_float(uint16_t h) { return kHalfToFloat[h]; }

// Load element i of a feature buffer in `is_half` storage as fp32.
inline float load_as_float(const void* p, int64_t i, bool is_half) {
  return is_half ? kHalfToFloat[static_cast<const uint16_t*>(p)[i]] : static_cast<const float*>(p)[i];
}

inline void store_from_float(void* p, int64_t i, float v, bool is_half) {
  if (is_half) static_cast<uint16_t*>(p)[i] = float_to_half(v);
  else static_cast<float*>(p)[i] = v;
}

}  // namespace edge
