// EViT-style token pruning on the CPU: score, select top-k in original order, gather, fuse the rest.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "half.h"
#include "kernels.h"
#include "simd_rows.h"
#include "thread_pool.h"

namespace edge {
namespace {

// Mean over heads of softmax(q . k / sqrt(Dh)) for one batch row.
void cls_attention_row(const PruneArgs& a, int64_t b, float* s) {
  const bool is_half = a.dtype == DType::F16;
  const int64_t N = a.n_tokens, H = a.heads, D = a.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  std::vector<float> logits(static_cast<size_t>(N)), q(static_cast<size_t>(D));
  std::fill(s, s + N, 0.f);
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t d = 0; d < D; ++d) q[d] = load_as_float(a.q, (b * H + h) * D + d, is_half) * scale;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t n = 0; n < N; ++n) {
      const int64_t base = ((b * H + h) * N + n) * D;
      float dot = 0.f;
      if (is_half) {
        const uint16_t* kr = static_cast<const uint16_t*>(a.keys) + base;
        for (int64_t d = 0; d < D; ++d) dot += q[d] * half_to_float(kr[d]);
      } else {
        dot = dot_row(q.data(), static_cast<const float*>(a.keys) + base, D);
      }
      logits[n] = dot;
      mx = std::max(mx, dot);
    }
    float sum = 0.f;
    for (int64_t n = 0; n < N; ++n) sum += (logits[n] = std::exp(logits[n] - mx));
    const float inv = 1.0f / (sum * static_cast<float>(H));
    for (int64_t n = 0; n < N; ++n) s[n] += logits[n] * inv;
  }
}

// Ranking key: NaN below every number; ties to the lower index.
inline bool ranks_before(float sa, int64_t ia, float sb, int64_t ib) {
  const bool na = sa != sa, nb = sb != sb;
  if (na != nb) return nb;
  if (!na && sa != sb) return sa > sb;
  return ia < ib;
}

}  // namespace

Status prune_tokens_cpu(const PruneArgs& a, int n_threads) {
  const int64_t B = a.batch, N = a.n_tokens, C = a.channels, K = a.k;
  const int64_t first = a.has_cls ? 1 : 0;
  if (K < first || K > N || (K < 1 && N > 0)) return Status::Error("prune_tokens: k out of range");
  const bool is_half = a.dtype == DType::F16;
  const int64_t out_rows = K + (a.fuse ? 1 : 0);
  // Normalised fusion weights per batch row (zero for kept tokens), filled by the selection pass.
  std::vector<float> fuse_w(static_cast<size_t>(a.fuse ? B * N : 0));

  parallel_for(B, n_threads, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> order(static_cast<size_t>(N));
    std::vector<char> kept(static_cast<size_t>(N));
    for (int64_t b = begin; b < end; ++b) {
      float* s = a.scores_out + b * N;
      if (a.scores) std::copy(a.scores + b * N, a.scores + (b + 1) * N, s);
      else cls_attention_row(a, b, s);
      // Select the K - first best non-CLS tokens, then restore original order.
      const int64_t want = K - first;
      int64_t m = 0;
      for (int64_t n = first; n < N; ++n) order[m++] = n;
      auto cmp = [&](int64_t x, int64_t y) { return ranks_before(s[x], x, s[y], y); };
      if (want < m) std::nth_element(order.begin(), order.begin() + want, order.begin() + m, cmp);
      std::sort(order.begin(), order.begin() + want);
      int64_t* idx = a.kept_idx + b * K;
      if (a.has_cls) idx[0] = 0;
      std::copy(order.begin(), order.begin() + want, idx + first);
      if (a.fuse) {
        std::fill(kept.begin(), kept.end(), 0);
        for (int64_t j = 0; j < K; ++j) kept[idx[j]] = 1;
        float* w = fuse_w.data() + b * N;
        double total = 0;
        for (int64_t n = 0; n < N; ++n) {
          const float v = s[n];
          w[n] = (kept[n] || !(v > 0.f)) ? 0.f : v;  // NaN and negatives weigh nothing
          total += w[n];
        }
        const float inv = total > 0 ? static_cast<float>(1.0 / total) : 0.f;
        for (int64_t n = 0; n < N; ++n) w[n] *= inv;
      }
    }
  });

  // Gather and fuse over (batch, channel block) so a single row still uses every thread.
  const int64_t block = 256;
  const int64_t n_blocks = (C + block - 1) / block;
  parallel_for(B * n_blocks, n_threads, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(static_cast<size_t>(block));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / n_blocks, c0 = (t % n_blocks) * block, c1 = std::min(C, c0 + block);
      const int64_t* idx = a.kept_idx + b * K;
      for (int64_t j = 0; j < K; ++j) {
        const int64_t src = (b * N + idx[j]) * C, dst = (b * out_rows + j) * C;
        if (is_half) {
          std::copy(static_cast<const uint16_t*>(a.x) + src + c0, static_cast<const uint16_t*>(a.x) + src + c1,
                    static_cast<uint16_t*>(a.out) + dst + c0);
        } else {
          std::copy(static_cast<const float*>(a.x) + src + c0, static_cast<const float*>(a.x) + src + c1,
                    static_cast<float*>(a.out) + dst + c0);
        }
      }
      if (!a.fuse) continue;
      std::fill(acc.begin(), acc.end(), 0.f);
      const float* w = fuse_w.data() + b * N;
      for (int64_t n = 0; n < N; ++n) {
        const float wn = w[n];
        if (wn == 0.f) continue;
        const int64_t src = (b * N + n) * C;
        if (is_half) {
          const uint16_t* row = static_cast<const uint16_t*>(a.x) + src;
          for (int64_t c = c0; c < c1; ++c) acc[c - c0] += wn * half_to_float(row[c]);
        } else {
          axpy_row(acc.data(), static_cast<const float*>(a.x) + src + c0, c1 - c0, wn);
        }
      }
      const int64_t dst = (b * out_rows + K) * C;
      for (int64_t c = c0; c < c1; ++c) store_from_float(a.out, dst + c, acc[c - c0], is_half);
    }
  });
  return Status::Ok();
}

}  // namespace edge
