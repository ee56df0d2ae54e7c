// Shared device helpers for the plain-CUDA kernels (no torch headers: `nvcc` alone compiles them).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../sora_kernels.h"

namespace sora::cuda_detail {

// Storage <-> fp32 compute.
__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// V values of T moved as one aligned load/store (16 bytes at the widest: V = 16 / sizeof(T)).
template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

template <typename T, int V>
__device__ __forceinline__ Vec<T, V> load(const T* p) { return *reinterpret_cast<const Vec<T, V>*>(p); }
template <typename T, int V>
__device__ __forceinline__ void store(T* p, const Vec<T, V>& v) { *reinterpret_cast<Vec<T, V>*>(p) = v; }

// Widest V (values per vector, at most 16 bytes) such that every `counts[i]` is a multiple of V
// and every pointer is aligned to V values.
template <typename T>
inline int pick_vec(const int64_t* counts, int n_counts, const void* const* ptrs, int n_ptrs) {
  for (int v = 16 / static_cast<int>(sizeof(T)); v > 1; v /= 2) {
    bool ok = true;
    for (int i = 0; i < n_counts; ++i) ok = ok && counts[i] % v == 0;
    for (int i = 0; i < n_ptrs; ++i) ok = ok && reinterpret_cast<uintptr_t>(ptrs[i]) % (v * sizeof(T)) == 0;
    if (ok) return v;
  }
  return 1;
}

inline unsigned int blocks_for(int64_t work, int threads) {
  return static_cast<unsigned int>((work + threads - 1) / threads);
}

// Call f(T{}) with the CUDA storage type of `dtype`; false for a dtype without CUDA kernels.
template <typename F>
bool dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::F32: f(float{}); return true;
    case DType::F16: f(__half{}); return true;
    case DType::BF16: f(__nv_bfloat16{}); return true;
    default: return false;
  }
}

}  // namespace sora::cuda_detail
