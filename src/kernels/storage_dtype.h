#pragma once
// The kernels' storage type (attention_args.h) of a libtorch dtype, for the libtorch-side front ends. Callers
// have checked that it is f32, bf16 or f16.
#include <torch/torch.h>

#include "kernels/attention_args.h"

namespace mha2mla::kernels {

inline DType storage_dtype(torch::ScalarType t) {
  return t == torch::kFloat32 ? DType::F32 : t == torch::kBFloat16 ? DType::BF16 : DType::F16;
}

}  // namespace mha2mla::kernels
