// CSR BEV pooling on the CPU: one writer per output row, fp32 accumulation, threads over (batch, row).
#include <algorithm>
#include <atomic>
#include <string>
#include <vector>

#include "half.h"
#include "kernels.h"
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

// acc[0:C] += w * row[0:C]; the fp32 branch vectorises.
inline void axpy(float* acc, const void* base, int64_t off, int64_t C, float w, bool is_half) {
  if (is_half) {
    const uint16_t* row = static_cast<const uint16_t*>(base) + off;
    for (int64_t c = 0; c < C; ++c) acc[c] += w * half_to_float(row[c]);
  } else {
    const float* row = static_cast<const float*>(base) + off;
    for (int64_t c = 0; c < C; ++c) acc[c] += w * row[c];
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
            const float* f = static_cast<const float*>(a.feat) + fo;
            for (int64_t c = 0; c < C; ++c) dot += g[c] * f[c];
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
