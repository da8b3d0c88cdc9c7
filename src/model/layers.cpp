#include "model/layers.h"

#include "kernels/elementwise.h"

namespace mha2mla::model {

DenseImpl::DenseImpl(int64_t in, int64_t out, bool has_bias, const torch::TensorOptions& opt) {
  weight = register_parameter("weight", torch::empty({out, in}, opt));
  if (has_bias) bias = register_parameter("bias", torch::zeros({out}, opt));
}

RMSNormImpl::RMSNormImpl(int64_t dim, double eps_, const torch::TensorOptions& opt) : eps(eps_) {
  weight = register_parameter("weight", torch::ones({dim}, opt));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) { return kernels::rms_norm(x, weight, eps); }

EmbeddingImpl::EmbeddingImpl(int64_t vocab, int64_t dim, const torch::TensorOptions& opt) {
  weight = register_parameter("weight", torch::empty({vocab, dim}, opt));
}

MLPImpl::MLPImpl(int64_t d, int64_t hidden, bool bias, const torch::TensorOptions& opt) {
  gate_proj = register_module("gate_proj", Dense(d, hidden, bias, opt));
  up_proj = register_module("up_proj", Dense(d, hidden, bias, opt));
  down_proj = register_module("down_proj", Dense(hidden, d, bias, opt));
}

torch::Tensor MLPImpl::forward(const torch::Tensor& x, const torch::Tensor& residual) {
  auto gate_up = kernels::linear_many(x, {gate_proj->weight, up_proj->weight}, {gate_proj->bias, up_proj->bias});
  return down_proj->forward_add(kernels::silu_mul(gate_up[0], gate_up[1]), residual);
}

}  // namespace mha2mla::model
