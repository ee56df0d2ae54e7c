// Patchify / unpatchify between per-sample latents and packed tokens, CPU: parallel over tokens;
// each token is C*pt*ph rows of pw contiguous values on both sides (the inner copy).
//
// Sample b's latent [C, T'pt, H'ph, W'pw] starts at element cu[b] * P of the latent buffer
// (P = C*pt*ph*pw values per token, so latent and token buffers have the same size).
#include <ATen/Parallel.h>

#include <algorithm>

#include "dispatch.h"

namespace sora::cpu {

namespace {

template <typename T, bool kInverse>
void patchify_impl(const T* src, T* dst, const Packing& p, const Patch& q) {
  const int64_t C = q.channels, pt = q.pt, ph = q.ph, pw = q.pw;
  const int64_t P = C * pt * ph * pw;
  at::parallel_for(0, p.total, std::max<int64_t>(1, 8192 / std::max<int64_t>(1, P)),
                   [&](int64_t begin, int64_t end) {
    int64_t b = find_sample(p.cu, p.batch, begin);
    for (int64_t n = begin; n < end; ++n) {
      while (n >= p.cu[b + 1]) ++b;
      const int32_t* g = p.grid + 3 * b;
      int64_t t, h, w;
      token_thw(n - p.cu[b], g, &t, &h, &w);
      const int64_t W = int64_t(g[2]) * pw, HW = int64_t(g[1]) * ph * W, THW = int64_t(g[0]) * pt * HW;
      const int64_t base = int64_t(p.cu[b]) * P + (t * pt) * HW + (h * ph) * W + w * pw;
      int64_t o = n * P;
      for (int64_t c = 0; c < C; ++c)
        for (int64_t i = 0; i < pt; ++i)
          for (int64_t j = 0; j < ph; ++j) {
            const int64_t l = base + c * THW + i * HW + j * W;
            for (int64_t k = 0; k < pw; ++k) {
              if constexpr (kInverse) dst[l + k] = src[o + k];
              else dst[o + k] = src[l + k];
            }
            o += pw;
          }
    }
  });
}

}  // namespace

void patchify(const void* src, void* dst, DType dtype, const Packing& p, const Patch& q, bool inverse) {
  if (p.total == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (inverse) patchify_impl<T, true>(static_cast<const T*>(src), static_cast<T*>(dst), p, q);
    else patchify_impl<T, false>(static_cast<const T*>(src), static_cast<T*>(dst), p, q);
  });
}

}  // namespace sora::cpu
