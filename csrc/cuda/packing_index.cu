// Packing index, CUDA: cu_seqlens + grid -> per-token sample id [N] and (t, h, w) [N, 3] (int64).
// One thread per token; also home of the error-code -> text helper for the bindings.
#include "common.cuh"

namespace sora {
namespace {

__global__ void __launch_bounds__(256) packing_index_kernel(Packing p, int64_t* __restrict__ sample_id,
                                                            int64_t* __restrict__ pos) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= p.total) return;
  const int64_t b = find_sample(p.cu, p.batch, n);
  int64_t t, h, w;
  token_thw(n - p.cu[b], p.grid + 3 * b, &t, &h, &w);
  sample_id[n] = b;
  pos[3 * n] = t;
  pos[3 * n + 1] = h;
  pos[3 * n + 2] = w;
}

}  // namespace

namespace cuda {

int packing_index(const Packing& p, int64_t* sample_id, int64_t* pos, void* stream) {
  if (p.total == 0) return 0;
  constexpr int kThreads = 256;
  packing_index_kernel<<<cuda_detail::blocks_for(p.total, kThreads), kThreads, 0,
                         static_cast<cudaStream_t>(stream)>>>(p, sample_id, pos);
  return static_cast<int>(cudaGetLastError());
}

const char* error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace cuda
}  // namespace sora
