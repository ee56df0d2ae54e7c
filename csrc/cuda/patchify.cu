// Patchify / unpatchify between per-sample latents and packed tokens, CUDA. One thread owns one
// token and V consecutive values of its row (P = C*pt*ph*pw values, (c, i, j, k) order): the token
// side moves as one 16-byte vector (stores for patchify, loads for unpatchify), the latent side is
// gathered/scattered in runs of pw. Sample b's latent [C, T'pt, H'ph, W'pw] starts at element
// cu[b] * P. Latent indices are bounds-checked, so an inconsistent packing (host check skipped)
// cannot touch memory outside the buffers.
#include "common.cuh"

namespace sora {
namespace {

using namespace cuda_detail;

template <typename T, int V, bool kInverse>
__global__ void __launch_bounds__(256) patchify_kernel(const T* __restrict__ src, T* __restrict__ dst, Packing p,
                                                       Patch q) {
  const int64_t P = static_cast<int64_t>(q.channels) * q.pt * q.ph * q.pw;
  const int64_t chunks = P / V;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= p.total * chunks) return;
  const int64_t n = idx / chunks;
  const int64_t q0 = (idx - n * chunks) * V;

  const int64_t b = find_sample(p.cu, p.batch, n);
  const int32_t* g = p.grid + 3 * b;
  int64_t t, h, w;
  token_thw(n - p.cu[b], g, &t, &h, &w);
  const int64_t W = static_cast<int64_t>(g[2]) * q.pw, HW = static_cast<int64_t>(g[1]) * q.ph * W;
  const int64_t THW = static_cast<int64_t>(g[0]) * q.pt * HW;
  const int64_t base = static_cast<int64_t>(p.cu[b]) * P + t * q.pt * HW + h * q.ph * W + w * q.pw;
  const int64_t limit = p.total * P;

  int64_t lat[V];
#pragma unroll
  for (int e = 0; e < V; ++e) {
    int64_t r = q0 + e;
    const int64_t k = r % q.pw; r /= q.pw;
    const int64_t j = r % q.ph; r /= q.ph;
    const int64_t i = r % q.pt;
    const int64_t c = r / q.pt;
    lat[e] = base + c * THW + i * HW + j * W + k;
  }
  if (kInverse) {
    const Vec<T, V> v = load<T, V>(src + n * P + q0);
#pragma unroll
    for (int e = 0; e < V; ++e)
      if (lat[e] >= 0 && lat[e] < limit) dst[lat[e]] = v.v[e];
  } else {
    Vec<T, V> v;
#pragma unroll
    for (int e = 0; e < V; ++e) v.v[e] = (lat[e] >= 0 && lat[e] < limit) ? src[lat[e]] : from_f<T>(0.f);
    store<T, V>(dst + n * P + q0, v);
  }
}

template <typename T, int V>
void launch_patchify(const void* src, void* dst, const Packing& p, const Patch& q, bool inverse,
                     cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t P = static_cast<int64_t>(q.channels) * q.pt * q.ph * q.pw;
  const unsigned int blocks = blocks_for(p.total * (P / V), kThreads);
  if (inverse)
    patchify_kernel<T, V, true><<<blocks, kThreads, 0, stream>>>(static_cast<const T*>(src), static_cast<T*>(dst), p, q);
  else
    patchify_kernel<T, V, false><<<blocks, kThreads, 0, stream>>>(static_cast<const T*>(src), static_cast<T*>(dst), p, q);
}

}  // namespace

namespace cuda {

int patchify(const void* src, void* dst, DType dtype, const Packing& p, const Patch& q, bool inverse, void* stream) {
  if (p.total == 0) return 0;
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  const bool known = cuda_detail::dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t P[1] = {static_cast<int64_t>(q.channels) * q.pt * q.ph * q.pw};
    const void* tokens[1] = {inverse ? src : dst};  // the vectorised side
    switch (cuda_detail::pick_vec<T>(P, 1, tokens, 1)) {
      case 8: launch_patchify<T, 8>(src, dst, p, q, inverse, st); break;
      case 4: launch_patchify<T, 4>(src, dst, p, q, inverse, st); break;
      case 2: launch_patchify<T, 2>(src, dst, p, q, inverse, st); break;
      default: launch_patchify<T, 1>(src, dst, p, q, inverse, st); break;
    }
  });
  if (!known) return static_cast<int>(cudaErrorInvalidValue);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace cuda
}  // namespace sora
