#include "infer/sampling.h"

#include "util/error.h"

namespace mha2mla::infer {

Sampler::Sampler(const SamplingParams& p) : p_(p), rng_(p.seed) {
  check(p.top_p > 0.0 && p.top_p <= 1.0, "--top-p must be in (0, 1]");
  check(p.temperature >= 0.0, "--temperature must be >= 0");
}

int64_t Sampler::sample(const torch::Tensor& logits) {
  // Greedy reads one integer back from the device, nothing more.
  if (p_.temperature <= 0.0) return logits.detach().reshape({-1}).argmax().item<int64_t>();
  auto l = logits.detach().to(torch::kCPU, torch::kFloat64).reshape({-1});
  auto probs = torch::softmax(l / p_.temperature, 0);
  auto sorted = probs.sort(/*dim=*/0, /*descending=*/true);
  auto vals = std::get<0>(sorted).contiguous();
  auto idx = std::get<1>(sorted).contiguous();
  const double* pv = vals.data_ptr<double>();
  const int64_t* pi = idx.data_ptr<int64_t>();
  const int64_t n = vals.numel();
  // Nucleus: the smallest prefix of the sorted distribution whose mass reaches top_p (at least one token).
  int64_t keep = 0;
  double mass = 0.0;
  while (keep < n) {
    mass += pv[keep++];
    if (mass >= p_.top_p) break;
  }
  std::uniform_real_distribution<double> u(0.0, mass);
  double r = u(rng_), acc = 0.0;
  for (int64_t i = 0; i < keep; ++i) {
    acc += pv[i];
    if (r < acc) return pi[i];
  }
  return pi[keep - 1];
}

}  // namespace mha2mla::infer
