#pragma once
// Rotary position embedding in the Hugging Face rotate-half layout: dim j pairs with j + d/2.
#include <torch/torch.h>

#include <utility>

#include "io/config.h"

namespace mha2mla::model {

// Inverse frequencies [head_dim/2] in fp32, with linear or llama3 scaling applied.
torch::Tensor rope_inv_freq(const io::ModelConfig& cfg);

// cos/sin tables [B, T, head_dim] for integer positions [B, T], computed in fp32 and cast to `dtype`.
std::pair<torch::Tensor, torch::Tensor> rope_cos_sin(const torch::Tensor& inv_freq, const torch::Tensor& positions,
                                                     torch::ScalarType dtype);

torch::Tensor rotate_half(const torch::Tensor& x);

// x: [B, H, T, D]; cos/sin: [B, T, D].
torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

}  // namespace mha2mla::model
