#pragma once
// The kernels' storage type (attention_args.h) of a libtorch dtype and back, for the libtorch-side front ends
// and the cache. Callers of storage_dtype have checked is_float_storage.
#include <torch/torch.h>

#include "kernels/attention_args.h"

namespace mha2mla::kernels {

// Whether t is defined and stored as one of the kernels' float types (f32, bf16, f16).
inline bool is_float_storage(const torch::Tensor& t) {
  if (!t.defined()) return false;
  const auto s = t.scalar_type();
  return s == torch::kFloat32 || s == torch::kBFloat16 || s == torch::kFloat16;
}

inline DType storage_dtype(torch::ScalarType t) {
  return t == torch::kFloat32 ? DType::F32 : t == torch::kBFloat16 ? DType::BF16 : DType::F16;
}

// The libtorch dtype of a kernel storage type.
inline torch::ScalarType torch_dtype(DType t) {
  return t == DType::F32 ? torch::kFloat32 : t == DType::BF16 ? torch::kBFloat16 : torch::kFloat16;
}

}  // namespace mha2mla::kernels
