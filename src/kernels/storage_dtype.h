#pragma once
// The kernels' storage type (attention_args.h) of a libtorch dtype and back, for the libtorch-side front ends
// and the cache. Callers have checked that it is f32, bf16 or f16.
#include <torch/torch.h>

#include "kernels/attention_args.h"

namespace mha2mla::kernels {

inline DType storage_dtype(torch::ScalarType t) {
  return t == torch::kFloat32 ? DType::F32 : t == torch::kBFloat16 ? DType::BF16 : DType::F16;
}

// The libtorch dtype of a kernel storage type.
inline torch::ScalarType torch_dtype(DType t) {
  return t == DType::F32 ? torch::kFloat32 : t == DType::BF16 ? torch::kBFloat16 : torch::kFloat16;
}

}  // namespace mha2mla::kernels
