// 3-D RoPE on packed tokens, CUDA. One thread owns one token and one chunk of V rotation pairs
// (inside one section, so one axis): it derives the token's sample and (t, h, w) from cu_seqlens
// and grid (binary search, in registers), computes V cos/sin once in fp32 exactly as the
// reference does (angle = float(pos) * theta ** (-2i / d)), and applies them to every head with
// 16-byte vector loads of x[start + i ...] and x[start + d/2 + i ...] (rotate-half pairing).
// Memory-bound: each x value is read once and written once; trigonometry is amortised over heads.
#include "common.cuh"

namespace sora {
namespace {

using namespace cuda_detail;

template <typename T, int V>
__global__ void __launch_bounds__(256) rope_kernel(const T* __restrict__ x, T* __restrict__ out, Packing p, Rope r) {
  const int chunks = r.head_dim / 2 / V;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= p.total * chunks) return;
  const int64_t n = idx / chunks;
  const int pair = static_cast<int>(idx - n * chunks) * V;  // first pair index in [0, D/2)

  int axis = 0, start = 0, pair0 = 0;  // the section holding this chunk (sections may be empty)
  while (axis < 2 && pair >= pair0 + r.sec[axis] / 2) {
    pair0 += r.sec[axis] / 2;
    start += r.sec[axis];
    ++axis;
  }
  const int d = r.sec[axis], half = d / 2, i0 = pair - pair0;

  const int64_t b = find_sample(p.cu, p.batch, n);
  int64_t pos[3];
  token_thw(n - p.cu[b], p.grid + 3 * b, &pos[0], &pos[1], &pos[2]);
  const float where = static_cast<float>(pos[axis]);

  float c[V], s[V];
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const float inv = powf(r.theta, -static_cast<float>(2 * (i0 + k)) / static_cast<float>(d));
    sincosf(where * inv, &s[k], &c[k]);
    if (r.inverse) s[k] = -s[k];
  }

  const int64_t row = static_cast<int64_t>(r.head_dim);
  const T* xp = x + n * r.heads * row + start + i0;
  T* op = out + n * r.heads * row + start + i0;
  for (int h = 0; h < r.heads; ++h, xp += row, op += row) {
    const Vec<T, V> a1 = load<T, V>(xp), a2 = load<T, V>(xp + half);
    Vec<T, V> y1, y2;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float u = to_f(a1.v[k]), w = to_f(a2.v[k]);
      y1.v[k] = from_f<T>(u * c[k] - w * s[k]);
      y2.v[k] = from_f<T>(w * c[k] + u * s[k]);
    }
    store<T, V>(op, y1);
    store<T, V>(op + half, y2);
  }
}

template <typename T, int V>
void launch_rope(const void* x, void* out, const Packing& p, const Rope& r, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t work = p.total * (r.head_dim / 2 / V);
  rope_kernel<T, V><<<blocks_for(work, kThreads), kThreads, 0, stream>>>(static_cast<const T*>(x),
                                                                          static_cast<T*>(out), p, r);
}

}  // namespace

namespace cuda {

int rope(const void* x, void* out, DType dtype, const Packing& p, const Rope& r, void* stream) {
  if (p.total == 0 || r.heads == 0 || r.head_dim == 0) return 0;
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  const bool known = cuda_detail::dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t halves[3] = {r.sec[0] / 2, r.sec[1] / 2, r.sec[2] / 2};
    const void* ptrs[2] = {x, out};
    switch (cuda_detail::pick_vec<T>(halves, 3, ptrs, 2)) {
      case 8: launch_rope<T, 8>(x, out, p, r, st); break;
      case 4: launch_rope<T, 4>(x, out, p, r, st); break;
      case 2: launch_rope<T, 2>(x, out, p, r, st); break;
      default: launch_rope<T, 1>(x, out, p, r, st); break;
    }
  });
  if (!known) return static_cast<int>(cudaErrorInvalidValue);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace cuda
}  // namespace sora
