// Plain C++ interface between the torch bindings (csrc/bindings.cpp) and the kernels.
//
// No torch headers here: the CUDA files include this and compile with `nvcc` alone, and the CPU
// files include only ATen/Parallel.h. Tensors cross this boundary as raw pointers; every shape,
// dtype, device and packing check happens in bindings.cpp before a kernel is called.
//
// The packed batch (see docs/DESIGN.md): tokens of B samples concatenated, `cu` = cu_seqlens
// [B+1] int32 prefix sums starting at 0, `grid` [B, 3] int32 (T', H', W') token grid per sample,
// tokens of a sample in row-major (t, h, w) order. Kernels derive each token's sample and (t, h, w)
// from these two arrays (binary search over `cu`); no position tensor is read.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SORA_HD __host__ __device__ __forceinline__
#else
#define SORA_HD inline
#endif

namespace sora {

enum class DType : int { F32 = 0, F16 = 1, BF16 = 2, F64 = 3 };

inline int dtype_size(DType t) { return t == DType::F64 ? 8 : t == DType::F32 ? 4 : 2; }

struct Packing {
  const int32_t* cu;    // [batch + 1]
  const int32_t* grid;  // [batch, 3]
  int64_t batch;        // B
  int64_t total;        // N = cu[B]
};

struct Rope {
  int heads;            // H
  int head_dim;         // D = dt + dh + dw
  int sec[3];           // (dt, dh, dw), each even; pairs (i, i + d/2) within a section
  float theta;          // base; inv_freq[i] = theta ** (-2i / d) per section, in float32
  bool inverse;         // rotate by -angle (the backward: the rotation is orthogonal)
};

struct Patch {
  int channels;         // C
  int pt, ph, pw;       // patch size; a token holds C * pt * ph * pw values, in (c, i, j, k) order
};

// Sample owning token n: the last b with cu[b] <= n (empty samples are skipped). n < cu[batch].
SORA_HD int64_t find_sample(const int32_t* cu, int64_t batch, int64_t n) {
  int64_t lo = 0, hi = batch - 1;
  while (lo < hi) {
    int64_t mid = (lo + hi + 1) >> 1;
    if (static_cast<int64_t>(cu[mid]) <= n) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// (t, h, w) of local token index `local` inside a grid (gt, gh, gw), row-major.
SORA_HD void token_thw(int64_t local, const int32_t* g, int64_t* t, int64_t* h, int64_t* w) {
  const int64_t gh = g[1], gw = g[2];
  *t = local / (gh * gw);
  const int64_t r = local - *t * gh * gw;
  *h = r / gw;
  *w = r - *h * gw;
}

namespace cpu {
// x, out: [N, H, D] contiguous. out may not alias x.
void rope(const void* x, void* out, DType dtype, const Packing& p, const Rope& r);
// patchify (inverse = false): latents (concatenation of each sample's [C, T, H, W], sample b
// starting at element cu[b] * C*pt*ph*pw) -> tokens [N, C*pt*ph*pw]. inverse = true: the other way.
void patchify(const void* src, void* dst, DType dtype, const Packing& p, const Patch& q, bool inverse);
// sample_id [N] int64, pos [N, 3] int64 (t, h, w).
void packing_index(const Packing& p, int64_t* sample_id, int64_t* pos);
}  // namespace cpu

namespace cuda {
// Same contracts as cpu::, on device pointers, launched on `stream` (a cudaStream_t).
// Return 0 or a cudaError_t code; error_string turns it into text. No F64.
int rope(const void* x, void* out, DType dtype, const Packing& p, const Rope& r, void* stream);
int patchify(const void* src, void* dst, DType dtype, const Packing& p, const Patch& q, bool inverse,
             void* stream);
int packing_index(const Packing& p, int64_t* sample_id, int64_t* pos, void* stream);
const char* error_string(int code);
}  // namespace cuda

}  // namespace sora
