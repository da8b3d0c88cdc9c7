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

// Per-layer means of x xᵀ over a layer's attention inputs, fp64 [d, d]. While accumulating, a layer keeps the
// inputs themselves as long as they take less memory than the matrix (a few windows at 7B width: 8 MiB of
// rows instead of 128 MiB), then folds them into an fp64 sum; either way the mean is computed in fp64. Loaded
// ones are zero-copy views of the calibration file, whose pages release() gives back.
class Covariances {
 public:
  Covariances() = default;
  Covariances(int64_t layers, int64_t dim);
  size_t size() const { return layers_.size(); }
  bool empty() const { return layers_.empty(); }
  int64_t dim() const { return dim_; }
  torch::Tensor operator[](size_t l) const;  // [d, d] fp64 on the CPU; zeros for a layer that saw no rows
  torch::Tensor at(size_t l) const;          // operator[] with a bounds check
  void add(size_t l, const torch::Tensor& x);  // rows x [n, d], any dtype/device (kept exactly as given)
  void push_back(torch::Tensor mean, std::function<void()> release = {});  // a finished mean
  // A layer given by its inputs [n, d] (n ≥ 1): the mean is XᵀX / n, formed in fp64 only when asked for.
  void push_rows(torch::Tensor rows, std::function<void()> release = {});
  // The inputs [n, d] of a layer held as rows, never folded into a sum (fewer rows than fit in the matrix's
  // memory); undefined otherwise. The calibration file stores such a layer as its rows.
  torch::Tensor inputs(size_t l) const;
  void release(size_t l);  // drops what layer l holds (for loaded ones: gives the file's pages back)
  int64_t rows(size_t l) const { return layers_.at(l).count; }

 private:
  struct Layer {
    torch::Tensor mean;               // finished (pushed/loaded), else undefined
    torch::Tensor sum;                // fp64 [d, d] once rows were folded, else undefined
    std::vector<torch::Tensor> rows;  // not yet folded, each [n, d]
    int64_t pending_bytes = 0;
    int64_t count = 0;                // rows seen
    std::function<void()> on_release;
  };
  std::vector<Layer> layers_;
  int64_t dim_ = 0;
};

struct CalibStats {
  torch::Tensor q_norm;  // [layers, n_h, d_h/2] fp32: mean over tokens of ||(q[i], q[i+d_h/2])||, pre-RoPE, with bias
  torch::Tensor k_norm;  // [layers, n_kv, d_h/2] fp32
  Covariances cov;          // per layer [d, d] fp64: mean of x xᵀ over calibration tokens
  Covariances cov_heldout;  // per layer [d, d] fp64, over the held-out samples (zeros if none)
  int64_t tokens = 0, heldout_tokens = 0;
  int64_t samples = 0, ctx = 0;  // windows used (held-out ones included) and their length
  std::string fingerprint;  // model_fingerprint() of the checkpoint it was computed on
};

// Identifies a checkpoint (a model folder or file) by its tensors' names, dtypes and shapes and a hash of the
// bytes of a few of them (layer 0's q/k projections, the first embedding rows), without loading the model:
// cheap at any size. A calibration file must match the model it converts.
std::string model_fingerprint(const std::string& model_dir);

// ids are cut into up to `samples` consecutive windows of `ctx` tokens; the last ~10% (at least one, when
// there are 2 or more) are held out for cov_heldout only. Errors on too little text. The model runs in its own
// dtype; the statistics are accumulated in fp64 whatever it is. The result's fingerprint is left empty: set it
// with model_fingerprint(dir) of the checkpoint the model came from.
CalibStats calibrate(model::TransformerImpl& m, const std::vector<int64_t>& ids, int64_t samples, int64_t ctx,
                     const std::function<void(int64_t done, int64_t total)>& progress = {});

// 2-norm scores [layers, n_kv, d_h/2], summed over the g query heads of each group:
// product rule (current reference) q̄·k̄, or the paper-era sum q̄ + k̄.
torch::Tensor two_norm_scores(const CalibStats& s, int64_t n_kv, bool product = true);

// Our own file: safetensors holding q_norm, k_norm, scores, ranks, per layer either cov.{l} [d, d] fp64 or,
// when the layer saw fewer inputs than its matrix would take in memory, the inputs cov_rows.{l} [n, d] in
// the dtype the model computed in (C = XᵀX / n; 8 MiB instead of 128 MiB for 512 tokens at 7B width), the
// same for cov_heldout, and metadata (fingerprint, tokens, samples, ctx). Written atomically, one covariance
// at a time; loading validates shapes with clear errors and maps the tensors without copying them.
void save_calib(const std::string& path, const CalibStats& s);
CalibStats load_calib(const std::string& path);

// Throws Error "calibration file PATH was made for another model" unless s was computed on model_dir's weights.
void check_calib_matches(const CalibStats& s, const std::string& model_dir, const std::string& path);

}  // namespace mha2mla::convert
