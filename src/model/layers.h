#pragma once
// Small building blocks whose parameters are created empty: checkpoints fill them, so no random init is wasted.
#include <torch/torch.h>

#include "kernels/gemv.h"

namespace mha2mla::model {

class DenseImpl : public torch::nn::Module {
 public:
  DenseImpl(int64_t in, int64_t out, bool bias, const torch::TensorOptions& opt);
  // Decoding (a few rows, no autograd) streams W with the GEMV kernel; everything else is torch::linear.
  torch::Tensor forward(const torch::Tensor& x) { return kernels::linear(x, weight, bias); }
  // forward(x) + residual, or forward(x) when residual is undefined.
  torch::Tensor forward_add(const torch::Tensor& x, const torch::Tensor& residual) {
    return residual.defined() ? kernels::linear_add(x, weight, bias, residual) : forward(x);
  }
  torch::Tensor weight;  // [out, in], HF layout
  torch::Tensor bias;    // undefined when absent
};
TORCH_MODULE(Dense);

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps, const torch::TensorOptions& opt);
  // Normalises in fp32 and casts back before the weight, as HF Llama does.
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;
  double eps;
};
TORCH_MODULE(RMSNorm);

class EmbeddingImpl : public torch::nn::Module {
 public:
  EmbeddingImpl(int64_t vocab, int64_t dim, const torch::TensorOptions& opt);
  torch::Tensor forward(const torch::Tensor& ids) { return torch::embedding(weight, ids); }
  torch::Tensor weight;
};
TORCH_MODULE(Embedding);

class MLPImpl : public torch::nn::Module {
 public:
  MLPImpl(int64_t d, int64_t hidden, bool bias, const torch::TensorOptions& opt);
  // down(silu(gate(x)) * up(x)), plus residual when it is defined (added by the down projection).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& residual = {});
  Dense gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(MLP);

}  // namespace mha2mla::model
