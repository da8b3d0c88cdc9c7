#pragma once
// MHA/GQA -> MLA weight surgery (MHA2MLA): partial-RoPE row permutation plus a low-rank latent for the
// non-rotated key dims and the values.
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include "convert/calibrate.h"
#include "convert/lowrank.h"
#include "convert/rope_select.h"

namespace mha2mla::convert {

struct ConvertOptions {
  RopeStrategy rope = RopeStrategy::High;
  int64_t rope_dims = 0;   // r
  int64_t uniform_start = 0;
  bool score_sum = false;  // 2-norm: paper-era sum rule instead of the product
  std::string svd = "joint";  // joint | split | activation | none
  int64_t dkv = 0;            // latent rank per KV head
  SvdAlgo algo = SvdAlgo::Auto;
  std::string out_dtype;      // "" = the source checkpoint's dtype per tensor; else f32 | bf16
  // Output files hold at most this much data each (HF's default for save_pretrained); 0 = one file.
  uint64_t max_shard_bytes = 5'000'000'000ull;
};

// One layer's attention weights in HF layout, fp32. Biases are undefined when absent.
struct AttnWeights {
  torch::Tensor wq, bq, wk, bk, wv, bv;
};

// The converted layer, named as the reference's refactored checkpoints ("self_attn." + key).
struct MlaLayer {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  double k_err = 0, v_err = 0;                    // relative Frobenius error of the weight reconstruction
  double k_err_heldout = -1, v_err_heldout = -1;  // on held-out activations (when a covariance is given)
  double k_err_heldout_svd = -1, v_err_heldout_svd = -1;  // plain joint SVD on the same activations (activation method)
};

struct LayerShape {
  int64_t hidden, n_h, n_kv, d_h;
};

// freqs: per KV head, the kept frequency indices. cov / cov_heldout: [d, d] or undefined.
// heldout_rows: the held-out inputs themselves [N, d] instead of cov_heldout (C = XᵀX / N), for files that
// store them so (fewer held-out tokens than d); the held-out errors are then computed from them.
MlaLayer convert_layer(const AttnWeights& w, const LayerShape& s, const std::vector<std::vector<int64_t>>& freqs,
                       const ConvertOptions& opt, const torch::Tensor& cov = {}, const torch::Tensor& cov_heldout = {},
                       const torch::Tensor& heldout_rows = {});

// Cache values per token per layer: before (2·n_kv·d_h) and after (n_kv·r + latent width).
std::pair<int64_t, int64_t> kv_values_per_token(const LayerShape& s, const ConvertOptions& opt);

// Checks r, d_kv and the method against the model shape; clear errors, before any work is done.
void validate_options(const LayerShape& s, const ConvertOptions& opt);

// Converts model_dir into out_dir (written under a temporary name, then renamed; nothing is left on
// failure). Streamed: each layer is read, converted, written and its source pages released before the next, so
// memory holds a layer or so, never the model. Returns the report as JSON (documented in docs/architecture.md).
nlohmann::json convert_model(const std::string& model_dir, const std::string& out_dir, const ConvertOptions& opt,
                             const std::string& calib_path,
                             const std::function<void(int64_t done, int64_t total)>& progress = {});

}  // namespace mha2mla::convert
