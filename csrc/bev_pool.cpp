// CSR BEV pooling on the CPU: one writer per output row, fp32 accumulation, threads over (batch, row).
#include <algorithm>
#include <atomic>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "half.h"
#include "kernels.h"
#include "simd_rows.h"
#include "thread_pool.h"

namespace edge {
namespace {

// First index problem seen by any thread, kept as (kind, position) so the message names it.
struct ErrorSlot {
  std::atomic<int> kind{0};
  std::atomic<int64_t> where{-1};
  void set(int k, int64_t w) {
    int expected = 0;
    if (kind.compare_exchange_strong(expected, k)) where.store(w);
  }
};

std::string describe(int kind, int64_t where, const char* what_src) {
  switch (kind) {
    case 1: return "offsets are not non-decreasing within [0, nnz] at row " + std::to_string(where);
    case 2: return std::string(what_src) + " index out of range at pair " + std::to_string(where);
    case 3: return "depth_idx out of range at pair " + std::to_string(where);
    default: return "unknown index error";
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
// fp16 rows converted 8 at a time with F16C where the CPU has it (checked once at run time), so the
// module still runs on any x86-64.
__attribute__((target("avx2,fma,f16c"))) void axpy_half_f16c(float* acc, const uint16_t* row, int64_t C, float w) {
  const __m256 wv = _mm256_set1_ps(w);
  int64_t c = 0;
  for (; c + 8 <= C; c += 8) {
    const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c)));
    _mm256_storeu_ps(acc + c, _mm256_fmadd_ps(wv, x, _mm256_loadu_ps(acc + c)));
  }
  for (; c < C; ++c) acc[c] += w * half_to_float(row[c]);
}
__attribute__((target("avx2,fma"))) void axpy_f32_avx2(float* acc, const float* row, int64_t C, float w) {
  const __m256 wv = _mm256_set1_ps(w);
  int64_t c = 0;
  for (; c + 8 <= C; c += 8) _mm256_storeu_ps(acc + c, _mm256_fmadd_ps(wv, _mm256_loadu_ps(row + c), _mm256_loadu_ps(acc + c)));
  for (; c < C; ++c) acc[c] += w * row[c];
}
__attribute__((target("avx2,fma,f16c"))) void store_half_f16c(uint16_t* out, const float* acc, int64_t C) {
  int64_t c = 0;
  for (; c + 8 <= C; c += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(acc + c), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + c), h);
  }
  for (; c < C; ++c) out[c] = float_to_half(acc[c]);
}
const bool kHasF16C = [] {
  __builtin_cpu_init();  // required before __builtin_cpu_supports during static initialisation
  return __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}();
#endif


// acc[0:C] += w * row[0:C]; the fp32 branch vectorises.
inline void axpy(float* acc, const void* base, int64_t off, int64_t C, float w, bool is_half) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (kHasF16C) {
    if (is_half) axpy_half_f16c(acc, static_cast<const uint16_t*>(base) + off, C, w);
    else axpy_f32_avx2(acc, static_cast<const float*>(base) + off, C, w);
    return;
  }
#endif
  if (is_half) {
    const uint16_t* row = static_cast<const uint16_t*>(base) + off;
    for (int64_t c = 0; c < C; ++c) acc[c] += w * half_to_float(row[c]);
  } else {
    axpy_row(acc, static_cast<const float*>(base) + off, C, w);
  }
}

}  // namespace

Status bev_pool_cpu(const BevPoolArgs& a, int n_threads) {
  if (a.batch < 0 || a.n_rows < 0 || a.channels < 0 || a.nnz < 0) return Status::Error("negative size");
  const bool is_half = a.dtype == DType::F16;
  const int64_t C = a.channels;
  ErrorSlot err;
  parallel_for(a.batch * a.n_rows, n_threads, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(static_cast<size_t>(C));
    for (int64_t br = begin; br < end; ++br) {
      const int64_t b = br / a.n_rows, r = br % a.n_rows;
      std::fill(acc.begin(), acc.end(), 0.f);
      const int64_t k0 = a.offsets[r], k1 = a.offsets[r + 1];
      if (k0 < 0 || k1 < k0 || k1 > a.nnz) {
        err.set(1, r);
      } else {
        for (int64_t k = k0; k < k1; ++k) {
          const int64_t s = a.src_idx[k];
          if (s < 0 || s >= a.n_src) { err.set(2, k); continue; }
          float w = a.weight[k];
          if (a.depth) {
            const int64_t d = a.depth_idx[k];
            if (d < 0 || d >= a.n_depth) { err.set(3, k); continue; }
            w *= load_as_float(a.depth, b * a.n_depth + d, is_half);
          }
          axpy(acc.data(), a.feat, (b * a.n_src + s) * C, C, w, is_half);
        }
      }
      const int64_t o = (b * a.n_rows + r) * C;
      if (is_half) {
        uint16_t* out = static_cast<uint16_t*>(a.out) + o;
#if defined(__x86_64__) && defined(__GNUC__)
        if (kHasF16C) {
          store_half_f16c(out, acc.data(), C);
          continue;
        }
#endif
        for (int64_t c = 0; c < C; ++c) out[c] = float_to_half(acc[c]);
      } else {
        std::copy(acc.begin(), acc.end(), static_cast<float*>(a.out) + o);
      }
    }
  });
  if (err.kind.load()) return Status::Error("bev_pool: " + describe(err.kind.load(), err.where.load(), "src_idx"));
  return Status::Ok();
}

Status bev_depth_grad_cpu(const BevDepthGradArgs& a, int n_threads) {
  const bool is_half = a.dtype == DType::F16;
  const int64_t C = a.channels;
  ErrorSlot err;
  parallel_for(a.batch * a.n_rows, n_threads, [&](int64_t begin, int64_t end) {
    std::vector<float> g(static_cast<size_t>(C));
    for (int64_t br = begin; br < end; ++br) {
      const int64_t b = br / a.n_rows, r = br % a.n_rows;
      const int64_t k0 = a.offsets[r], k1 = a.offsets[r + 1];
      if (k0 < 0 || k1 < k0 || k1 > a.nnz) { err.set(1, r); continue; }
      if (k0 == k1) continue;
      const int64_t go = (b * a.n_rows + r) * C;
      for (int64_t c = 0; c < C; ++c) g[c] = load_as_float(a.grad_out, go + c, is_half);
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t s = a.src_idx[k];
        float dot = 0.f;
        if (s < 0 || s >= a.n_src) {
          err.set(2, k);
        } else {
          const int64_t fo = (b * a.n_src + s) * C;
          if (is_half) {
            const uint16_t* f = static_cast<const uint16_t*>(a.feat) + fo;
            for (int64_t c = 0; c < C; ++c) dot += g[c] * half_to_float(f[c]);
          } else {
            dot = dot_row(g.data(), static_cast<const float*>(a.feat) + fo, C);
          }
        }
        a.pair_grad[b * a.nnz + k] = a.weight[k] * dot;
      }
    }
  });
  if (err.kind.load()) return Status::Error("bev_depth_grad: " + describe(err.kind.load(), err.where.load(), "src_idx"));
  return Status::Ok();
}

}  // namespace edge
