#pragma once
// Partial RoPE: which frequency pairs (i, i + d_h/2) each layer and KV head keeps rotating.
// Frequency index 0 is the highest frequency. r counts kept dimensions (r/2 pairs).
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace mha2mla::convert {

enum class RopeStrategy { High, Low, Uniform, TwoNorm };

RopeStrategy parse_rope_strategy(const std::string& s);  // "high" | "low" | "uniform" | "2-norm"; Error otherwise
std::string rope_strategy_name(RopeStrategy s);

// kept[layer][kv_head] = ascending frequency indices, r/2 of them. Query head j uses kv head j / g.
using FreqSelection = std::vector<std::vector<std::vector<int64_t>>>;

// Validates r (even, 2 <= r <= head_dim) and the strategy's own parameters, with clear errors.
// high: {0..r/2-1}; low: {d_h/2-r/2 .. d_h/2-1}; uniform: {s + k*d_h/r}, k < r/2, needs 0 <= s < d_h/r and
// (d_h/2) % (d_h/r) == 0; 2-norm: per (layer, kv head) the r/2 highest `scores` [layers, n_kv, d_h/2]
// (ties to the lower index).
FreqSelection select_frequencies(RopeStrategy s, int64_t r, int64_t head_dim, int64_t layers, int64_t n_kv,
                                 int64_t uniform_start = 0, const torch::Tensor& scores = {});

// Rank of each frequency after a descending sort of its score (0 = best), duplicated to d_h entries as
// the reference's rank files are: [layers, n_kv, d_h]. keep = rank < r/2.
torch::Tensor ranks_from_scores(const torch::Tensor& scores);

// Dimension indices within a head: rope dims [f..., f + d_h/2...] (ascending) and the remaining nope dims (ascending).
std::vector<int64_t> rope_dims(const std::vector<int64_t>& freqs, int64_t head_dim);
std::vector<int64_t> nope_dims(const std::vector<int64_t>& freqs, int64_t head_dim);

}  // namespace mha2mla::convert
