// Token pruning on the GPU in three launches on the caller's stream:
//   1. grid (H, B): per-head CLS attention probabilities softmax(q K^T / sqrt(Dh)) into the workspace
//      (skipped when scores are passed in);
//   2. grid (B): head mean, rank-based top-k (ties to the lower index, NaN last), order-preserving
//      compaction into kept_idx, normalised fusion weights into the workspace;
//   3. grid (C / 256, B): gather of the kept rows and the weighted sum of the dropped rows.
// Splitting 1 and 3 over many blocks is what lets a row reach DRAM bandwidth; 2 is tiny.
#include "cuda/common.cuh"

namespace edge {
namespace {

constexpr int kThreads = 512;
constexpr int kChanPerBlock = 256;

template <typename T>
__global__ void head_probs_kernel(const T* __restrict__ q, const T* __restrict__ keys, float* __restrict__ probs,
                                  int64_t H, int64_t N, int64_t D) {
  extern __shared__ float sh[];  // q (D) | logits (N) | scratch (32)
  float* qs = sh;
  float* logit = sh + D;
  float* scratch = logit + N;
  const int64_t h = blockIdx.x, b = blockIdx.y;
  const float scale = rsqrtf(static_cast<float>(D));
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) qs[d] = to_float(q[(b * H + h) * D + d]) * scale;
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  const T* kb = keys + (b * H + h) * N * D;
  for (int64_t n = warp; n < N; n += n_warps) {  // one warp per key: coalesced over Dh
    float dot = 0.f;
    for (int64_t d = lane; d < D; d += 32) dot += qs[d] * to_float(kb[n * D + d]);
    dot = warp_sum(dot);
    if (lane == 0) logit[n] = dot;
  }
  __syncthreads();
  float mx = -INFINITY;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) mx = fmaxf(mx, logit[n]);
  mx = block_reduce<true>(mx, scratch);
  float sum = 0.f;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) sum += __expf(logit[n] - mx);
  sum = block_reduce<false>(sum, scratch);
  const float inv = 1.f / (sum * static_cast<float>(H));
  float* p = probs + (b * H + h) * N;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) p[n] = __expf(logit[n] - mx) * inv;
}

__device__ __forceinline__ bool ranks_before(float sa, int64_t ia, float sb, int64_t ib) {
  const bool na = sa != sa, nb = sb != sb;
  if (na != nb) return nb;
  if (!na && sa != sb) return sa > sb;
  return ia < ib;
}

__global__ void select_kernel(const float* __restrict__ scores_in, const float* __restrict__ probs,
                              float* __restrict__ scores_out, int64_t* __restrict__ kept_idx,
                              float* __restrict__ fuse_w, int64_t H, int64_t N, int64_t K, bool has_cls, bool fuse) {
  extern __shared__ float sh[];  // scores (N) | keep flags as float (N) | scratch (32 + 32)
  float* s = sh;
  float* keep = sh + N;
  float* scratch = keep + N;
  int* counts = reinterpret_cast<int*>(scratch + 32);
  const int64_t b = blockIdx.x;
  const int64_t first = has_cls ? 1 : 0, want = K - first;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) {
    float v;
    if (scores_in != nullptr) {
      v = scores_in[b * N + n];
    } else {
      v = 0.f;
      for (int64_t h = 0; h < H; ++h) v += probs[(b * H + h) * N + n];
    }
    s[n] = v;
    scores_out[b * N + n] = v;
  }
  __syncthreads();
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) {
    bool kept = n < first;
    if (!kept) {
      int64_t rank = 0;
      const float sn = s[n];
      for (int64_t m = first; m < N && rank < want; ++m) rank += ranks_before(s[m], m, sn, n) ? 1 : 0;
      kept = rank < want;
    }
    keep[n] = kept ? 1.f : 0.f;
  }
  __syncthreads();
  // Order-preserving compaction: each thread owns a contiguous chunk of tokens.
  const int64_t chunk = (N + blockDim.x - 1) / blockDim.x;
  const int64_t lo0 = static_cast<int64_t>(threadIdx.x) * chunk;
  const int64_t lo = lo0 < N ? lo0 : N, hi = lo + chunk < N ? lo + chunk : N;
  int local = 0;
  for (int64_t n = lo; n < hi; ++n) local += keep[n] != 0.f;
  // Exclusive scan over warps then threads (blockDim.x <= 1024).
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int incl = local;
  for (int o = 1; o < 32; o <<= 1) {
    const int v = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += v;
  }
  if (lane == 31) counts[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    const int n_warps = blockDim.x >> 5;
    int v = lane < n_warps ? counts[lane] : 0;
    for (int o = 1; o < 32; o <<= 1) {
      const int u = __shfl_up_sync(0xffffffffu, v, o);
      if (lane >= o) v += u;
    }
    if (lane < n_warps) counts[lane] = v;  // inclusive per warp
  }
  __syncthreads();
  int pos = incl - local + (warp > 0 ? counts[warp - 1] : 0);
  for (int64_t n = lo; n < hi; ++n) {
    if (keep[n] != 0.f && pos < K) kept_idx[b * K + pos++] = n;
  }
  if (!fuse) return;
  float total = 0.f;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) {
    const float v = s[n];
    total += (keep[n] == 0.f && v > 0.f) ? v : 0.f;
  }
  total = block_reduce<false>(total, scratch);
  const float inv = total > 0.f ? 1.f / total : 0.f;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) {
    const float v = s[n];
    fuse_w[b * N + n] = (keep[n] == 0.f && v > 0.f) ? v * inv : 0.f;
  }
}

template <typename T>
__global__ void gather_fuse_kernel(const T* __restrict__ x, const int64_t* __restrict__ kept_idx,
                                   const float* __restrict__ fuse_w, T* __restrict__ out, int64_t N, int64_t C,
                                   int64_t K, bool fuse) {
  const int64_t b = blockIdx.y;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kChanPerBlock + threadIdx.x;
  if (c >= C) return;
  const int64_t rows = K + (fuse ? 1 : 0);
  const T* xb = x + b * N * C;
  T* ob = out + b * rows * C;
  for (int64_t j = 0; j < K; ++j) {
    int64_t n = kept_idx[b * K + j];
    n = n < 0 ? 0 : (n >= N ? N - 1 : n);  // kept_idx comes from select_kernel; clamp as a guard
    ob[j * C + c] = xb[n * C + c];
  }
  if (!fuse) return;
  float acc = 0.f;
  const float* w = fuse_w + b * N;
  for (int64_t n = 0; n < N; ++n) {
    const float wn = w[n];  // same address across the block: broadcast
    if (wn != 0.f) acc += wn * to_float(xb[n * C + c]);
  }
  ob[K * C + c] = from_float<T>(acc);
}

}  // namespace

Status prune_tokens_cuda(const PruneArgs& a, void* stream) {
  const int64_t B = a.batch, N = a.n_tokens, C = a.channels, K = a.k, H = a.heads, D = a.head_dim;
  const int64_t first = a.has_cls ? 1 : 0;
  if (K < first || K > N || K < 1) return Status::Error("prune_tokens: k out of range");
  if (B == 0) return Status::Ok();
  if (B > 65535) return Status::Error("prune_tokens: batch above 65535 rows is not supported by the CUDA kernel");
  if (a.workspace == nullptr) return Status::Error("prune_tokens: CUDA path needs a workspace");
  const size_t select_shmem = (2 * N + 64) * sizeof(float);
  const size_t probs_shmem = (D + N + 32) * sizeof(float);
  if (select_shmem > 48 * 1024 || (a.scores == nullptr && probs_shmem > 48 * 1024))
    return Status::Error("prune_tokens: too many tokens for the CUDA kernel (N <= 6000)");
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  float* probs = a.workspace;              // (B, H, N)
  float* fuse_w = a.workspace + B * H * N;  // (B, N)
  if (a.scores == nullptr) {
    const dim3 grid(static_cast<unsigned>(H), static_cast<unsigned>(B));
    if (a.dtype == DType::F16)
      head_probs_kernel<__half><<<grid, 256, probs_shmem, st>>>(static_cast<const __half*>(a.q),
                                                                 static_cast<const __half*>(a.keys), probs, H, N, D);
    else
      head_probs_kernel<float><<<grid, 256, probs_shmem, st>>>(static_cast<const float*>(a.q),
                                                                static_cast<const float*>(a.keys), probs, H, N, D);
    Status s = launch_status("prune_tokens(scores)");
    if (!s.ok) return s;
  }
  select_kernel<<<static_cast<unsigned>(B), kThreads, select_shmem, st>>>(a.scores, probs, a.scores_out, a.kept_idx,
                                                                          fuse_w, H, N, K, a.has_cls, a.fuse);
  Status s = launch_status("prune_tokens(select)");
  if (!s.ok) return s;
  if (C == 0) return Status::Ok();
  const dim3 grid(static_cast<unsigned>((C + kChanPerBlock - 1) / kChanPerBlock), static_cast<unsigned>(B));
  if (a.dtype == DType::F16)
    gather_fuse_kernel<__half><<<grid, kChanPerBlock, 0, st>>>(static_cast<const __half*>(a.x), a.kept_idx, fuse_w,
                                                                static_cast<__half*>(a.out), N, C, K, a.fuse);
  else
    gather_fuse_kernel<float><<<grid, kChanPerBlock, 0, st>>>(static_cast<const float*>(a.x), a.kept_idx, fuse_w,
                                                               static_cast<float*>(a.out), N, C, K, a.fuse);
  return launch_status("prune_tokens(gather)");
}

}  // namespace edge
