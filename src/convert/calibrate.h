#pragma once
// Calibration statistics from running a model over text: per (layer, head, frequency) mean 2-norms of the
// q and k pairs (for 2-norm partial RoPE), and per-layer covariances of the attention inputs (for
// activation-aware low-rank factorisation), with a held-out share kept separately for evaluation.
#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include "model/transformer.h"

namespace mha2mla::convert {

struct CalibStats {
  torch::Tensor q_norm;  // [layers, n_h, d_h/2] fp32: mean over tokens of ||(q[i], q[i+d_h/2])||, pre-RoPE, with bias
  torch::Tensor k_norm;  // [layers, n_kv, d_h/2] fp32
  std::vector<torch::Tensor> cov;          // per layer [d, d] fp64: mean of x xᵀ over calibration tokens
  std::vector<torch::Tensor> cov_heldout;  // per layer [d, d] fp64, over the held-out samples (zeros if none)
  int64_t tokens = 0, heldout_tokens = 0;
  int64_t samples = 0, ctx = 0;  // windows used (held-out ones included) and their length
  std::string fingerprint;  // model_fingerprint() of the model it was computed on
};

// Identifies a model by its shape and a checksum of some weights; a calibration file must match.
std::string model_fingerprint(model::TransformerImpl& m);

// ids are cut into up to `samples` consecutive windows of `ctx` tokens; the last ~10% (at least one, when
// there are 2 or more) are held out for cov_heldout only. Errors on too little text.
CalibStats calibrate(model::TransformerImpl& m, const std::vector<int64_t>& ids, int64_t samples, int64_t ctx,
                     const std::function<void(int64_t done, int64_t total)>& progress = {});

// 2-norm scores [layers, n_kv, d_h/2], summed over the g query heads of each group:
// product rule (current reference) q̄·k̄, or the paper-era sum q̄ + k̄.
torch::Tensor two_norm_scores(const CalibStats& s, int64_t n_kv, bool product = true);

// Our own file: safetensors holding q_norm, k_norm, scores, ranks, cov.{l}, cov_heldout.{l}, metadata
// (fingerprint, tokens, samples, ctx). Written atomically; loading validates shapes with clear errors.
void save_calib(const std::string& path, const CalibStats& s);
CalibStats load_calib(const std::string& path);

// Throws Error "calibration file PATH was made for another model" unless s was computed on m.
void check_calib_matches(const CalibStats& s, model::TransformerImpl& m, const std::string& path);

}  // namespace mha2mla::convert
