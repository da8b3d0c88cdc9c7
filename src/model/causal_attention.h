#pragma once
// Causal attention for training at long sequence length: the forward keeps only the output and each row's
// log-sum-exp, and the backward recomputes the scores one query block at a time (flash-attention's recurrence,
// with libtorch matmuls inside a block). Memory is O(block · T) instead of the O(T²) that autograd would keep
// through grouped_attention, and blocks skip the keys after their last query, which halves the work.
#include <torch/torch.h>

namespace mha2mla::model {

// q [B, Hq, T, D], k [B, Hkv, T, D], v [B, Hkv, T, Dv] -> [B, Hq, T, Dv]; query head j reads KV head j / (Hq/Hkv).
// Position t sees keys 0..t (no padding, no window): the same values as grouped_attention with a causal mask,
// differentiable in q, k and v. Scores and softmax are in fp32; the matmuls run in the inputs' dtype.
torch::Tensor causal_attention_blockwise(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                         double scale, int64_t block = 256);

}  // namespace mha2mla::model
