// dtype -> C++ type dispatch and the compute type used for each storage type (CPU kernels).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "../sora_kernels.h"

namespace sora::cpu {

template <typename T> struct Acc { using type = float; };   // fp32, fp16, bf16 compute in fp32
template <> struct Acc<double> { using type = double; };

template <typename F>
void dispatch_dtype(DType t, F&& f) {
  switch (t) {
    case DType::F32: f(float{}); break;
    case DType::F64: f(double{}); break;
    case DType::F16: f(c10::Half{}); break;
    case DType::BF16: f(c10::BFloat16{}); break;
  }
}

}  // namespace sora::cpu
