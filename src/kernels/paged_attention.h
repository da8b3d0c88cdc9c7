#pragma once
// Decode attention of several sequences whose caches lie in fixed-size blocks of one pool (the server's paged
// cache). Each sequence holds a block table; its slot s lives in block blocks[s / bt] at row s % bt.
//
// A pool buffer stores `N` blocks of `bt` slots:
//   float:     data [N, H, bt, W] in its storage dtype (f32, bf16, f16);
//   quantized: codes [N, H, bt, ceil(W * bits / 8)] and scales (and zeros) [N, H, bt, ceil(W / group)] per token
//              or [N, H, bt / group, W] per channel: kernels/quant_attention.h's layout, block by block.
// A sequence's first `quantized` slots are read from a quantized buffer's codes, the rest from its residual
// ([1, H, >= tokens - quantized, W] in the compute dtype: the newest tokens, not yet quantized); a float buffer
// holds every slot in its blocks.
//
// The key axis of a sequence is split at its blocks: each (sequence, KV group, block) is one call of the
// split-KV decode kernels (AttnKernels::decode_split) with the block as the batch row, and each sequence's
// partial softmaxes are merged in block order. So a sequence's result depends on its own blocks alone, never on
// the sequences beside it or on the thread count: the server's batch invariance.
#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "kernels/attention_args.h"
#include "kernels/cpu_features.h"

namespace mha2mla::kernels {

struct PagedBuffer {
  torch::Tensor data;         // float values, or uint8 codes
  torch::Tensor scale, zero;  // quantized: Uint f16 scale and zero, E4M3 f32 scale (zero undefined)
  Codes codes = Codes::Uint;
  int64_t bits = 8, group = 0;
  bool per_channel = false;
  int64_t width = 0;          // quantized: values per row (what the codes decode to)
  bool quantized() const { return data.defined() && data.scalar_type() == torch::kUInt8; }
  int64_t row_width() const { return quantized() ? width : data.size(3); }
};

// One sequence of the batch. `tokens` counts every slot it holds, the new token's included.
struct PagedSeq {
  const int32_t* blocks = nullptr;  // >= ceil(tokens / bt) block ids
  int64_t tokens = 0;
  int64_t quantized = 0;            // leading slots held as codes by the quantized buffers
  torch::Tensor residual[2];        // per buffer of the pair: [1, H, >= tokens - quantized, W], or undefined (float)
};

// q [B, Hq, 1, D] (row b: sequence b's new token, at slot tokens - 1) against the pool's k and v ([N, Hkv, bt, D],
// [N, Hkv, bt, Dv]) -> [B, Hq, 1, Dv]. Visibility as kernels/attention.h with every slot valid.
torch::Tensor paged_decode_attention(const torch::Tensor& q, const PagedBuffer& k, const PagedBuffer& v,
                                     const std::vector<PagedSeq>& seqs, int64_t block_tokens, int64_t window,
                                     double scale, Variant variant = Variant::Auto);
// Absorbed MLA (kernels/attention.h mla_decode_attention) over a paged latent c ([N, 1, bt, L]) and rotary keys
// k_r ([N, Hkv, bt, r]): q_lat [B, Hq, 1, L], q_rope [B, Hq, 1, r] -> [B, Hq, 1, L].
torch::Tensor paged_mla_decode_attention(const torch::Tensor& q_lat, const torch::Tensor& q_rope,
                                         const PagedBuffer& c, const PagedBuffer& k_r,
                                         const std::vector<PagedSeq>& seqs, int64_t block_tokens, int64_t window,
                                         double scale, Variant variant = Variant::Auto);

// Sequence b's slots of buffer i (0 or 1) of the pair, [1, H, tokens, W] in f32: its blocks gathered and
// dequantized, then its residual. The references below and the tests read the cache through it.
torch::Tensor paged_gather(const PagedBuffer& buf, const PagedSeq& seq, int i, int64_t block_tokens);
// attention_reference / mla_decode_reference per sequence over paged_gather.
torch::Tensor paged_decode_reference(const torch::Tensor& q, const PagedBuffer& k, const PagedBuffer& v,
                                     const std::vector<PagedSeq>& seqs, int64_t block_tokens, int64_t window,
                                     double scale);
torch::Tensor paged_mla_decode_reference(const torch::Tensor& q_lat, const torch::Tensor& q_rope,
                                         const PagedBuffer& c, const PagedBuffer& k_r,
                                         const std::vector<PagedSeq>& seqs, int64_t block_tokens, int64_t window,
                                         double scale);

}  // namespace mha2mla::kernels
