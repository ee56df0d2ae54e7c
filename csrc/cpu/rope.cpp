// 3-D RoPE on packed tokens, CPU: parallel over tokens, the inner loop over one section's pairs is
// contiguous and branch-free so the compiler vectorises it.
//
// cos/sin depend only on (axis, position, pair), so they are tabulated once per call for every
// position the grids reach (sum over axes of max grid extent x section/2 entries) and every
// token x head reads them: no trigonometry in the token loop. Angles are float32 as in the
// reference (sora/ops/rope.py): angle = float(pos) * theta ** (-2i / d).
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "dispatch.h"

namespace sora::cpu {

namespace {

template <typename T>
void rope_impl(const T* x, T* out, const Packing& p, const Rope& r, const std::vector<float>* cs) {
  using A = typename Acc<T>::type;
  const int64_t H = r.heads, D = r.head_dim;
  const A sign = r.inverse ? A(-1) : A(1);
  at::parallel_for(0, p.total, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, H * D)),
                   [&](int64_t begin, int64_t end) {
    int64_t b = find_sample(p.cu, p.batch, begin);
    for (int64_t n = begin; n < end; ++n) {
      while (n >= p.cu[b + 1]) ++b;
      int64_t pos[3];
      token_thw(n - p.cu[b], p.grid + 3 * b, &pos[0], &pos[1], &pos[2]);
      for (int64_t h = 0; h < H; ++h) {
        const T* xr = x + (n * H + h) * D;
        T* yr = out + (n * H + h) * D;
        int start = 0;
        for (int a = 0; a < 3; ++a) {
          const int half = r.sec[a] / 2;
          const float* c = cs[2 * a].data() + pos[a] * half;
          const float* s = cs[2 * a + 1].data() + pos[a] * half;
          const T* x1 = xr + start;
          const T* x2 = xr + start + half;
          T* y1 = yr + start;
          T* y2 = yr + start + half;
          for (int i = 0; i < half; ++i) {
            const A a1 = static_cast<A>(x1[i]), a2 = static_cast<A>(x2[i]);
            const A ci = static_cast<A>(c[i]), si = sign * static_cast<A>(s[i]);
            y1[i] = static_cast<T>(a1 * ci - a2 * si);
            y2[i] = static_cast<T>(a2 * ci + a1 * si);
          }
          start += r.sec[a];
        }
      }
    }
  });
}

}  // namespace

void rope(const void* x, void* out, DType dtype, const Packing& p, const Rope& r) {
  if (p.total == 0) return;
  int64_t extent[3] = {0, 0, 0};
  for (int64_t b = 0; b < p.batch; ++b)
    for (int a = 0; a < 3; ++a) extent[a] = std::max<int64_t>(extent[a], p.grid[3 * b + a]);
  std::vector<float> cs[6];  // (cos, sin) per axis: [extent, section / 2]
  for (int a = 0; a < 3; ++a) {
    const int half = r.sec[a] / 2;
    cs[2 * a].resize(extent[a] * half);
    cs[2 * a + 1].resize(extent[a] * half);
    for (int i = 0; i < half; ++i) {
      const float inv = std::pow(r.theta, -static_cast<float>(2 * i) / static_cast<float>(r.sec[a]));
      for (int64_t q = 0; q < extent[a]; ++q) {
        const float ang = static_cast<float>(q) * inv;
        cs[2 * a][q * half + i] = std::cos(ang);
        cs[2 * a + 1][q * half + i] = std::sin(ang);
      }
    }
  }
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    rope_impl<T>(static_cast<const T*>(x), static_cast<T*>(out), p, r, cs);
  });
}

}  // namespace sora::cpu
