// Packing index, CPU: cu_seqlens + grid -> per-token sample id and (t, h, w), parallel over tokens.
#include <ATen/Parallel.h>

#include "../sora_kernels.h"

namespace sora::cpu {

void packing_index(const Packing& p, int64_t* sample_id, int64_t* pos) {
  at::parallel_for(0, p.total, 4096, [&](int64_t begin, int64_t end) {
    int64_t b = find_sample(p.cu, p.batch, begin);
    for (int64_t n = begin; n < end; ++n) {
      while (n >= p.cu[b + 1]) ++b;
      sample_id[n] = b;
      token_thw(n - p.cu[b], p.grid + 3 * b, pos + 3 * n, pos + 3 * n + 1, pos + 3 * n + 2);
    }
  });
}

}  // namespace sora::cpu
