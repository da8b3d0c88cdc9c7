#pragma once
// Next-token choice: greedy, or temperature + nucleus (top-p) sampling from a seeded generator.
#include <torch/torch.h>

#include <cstdint>
#include <random>

namespace mha2mla::infer {

struct SamplingParams {
  double temperature = 0.0;  // <= 0: greedy
  double top_p = 1.0;        // (0, 1]
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p);
  // logits: [V], any float dtype, any device.
  int64_t sample(const torch::Tensor& logits);

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
};

}  // namespace mha2mla::infer
