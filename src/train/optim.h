#pragma once
// AdamW (decoupled weight decay, as torch.optim.AdamW) over named fp32 master parameters, with its state
// held as plain tensors so checkpoints can save it and data-parallel ranks can shard it (ZeRO-1).
#include <torch/torch.h>

#include <string>
#include <vector>

#include "io/safetensors.h"

namespace mha2mla::train {

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.0;
};

class AdamW {
 public:
  // params: the parameters this optimizer updates (a rank's shard under ZeRO-1); decay: per param,
  // whether weight decay applies (matrices yes; norms and biases no).
  AdamW(std::vector<std::pair<std::string, torch::Tensor>> params, std::vector<bool> decay, AdamWOptions opt);
  void step(double lr);  // uses each param's .grad(); params without a grad are skipped
  int64_t steps() const { return t_; }
  // State as named tensors ("exp_avg.NAME", "exp_avg_sq.NAME") plus the step count.
  io::NamedTensors state() const;
  void load_state(const io::SafetensorsFile& f, int64_t steps);
  const std::vector<std::pair<std::string, torch::Tensor>>& params() const { return params_; }

 private:
  std::vector<std::pair<std::string, torch::Tensor>> params_;
  std::vector<bool> decay_;
  std::vector<torch::Tensor> m_, v_;
  AdamWOptions opt_;
  int64_t t_ = 0;
};

// Learning rate at step t (0-based) for a warmup-stable-decay schedule: linear warmup over `warmup` steps,
// flat until `decay_start`, then down to `min_lr` over the remaining steps by "1-sqrt" or "cosine".
struct Schedule {
  double lr = 1e-3, min_lr = 0.0;
  int64_t warmup = 0, decay_start = 0, total = 1;
  std::string decay = "1-sqrt";  // 1-sqrt | cosine | none
  double at(int64_t t) const;
};

// Scales all gradients so their global L2 norm is at most max_norm; returns the norm before clipping.
double clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm);

}  // namespace mha2mla::train
