#include "convert/rope_select.h"

#include <algorithm>
#include <numeric>

#include "util/error.h"

namespace mha2mla::convert {

RopeStrategy parse_rope_strategy(const std::string& s) {
  if (s == "high") return RopeStrategy::High;
  if (s == "low") return RopeStrategy::Low;
  if (s == "uniform") return RopeStrategy::Uniform;
  if (s == "2-norm") return RopeStrategy::TwoNorm;
  fail("unknown partial-RoPE strategy \"" + s + "\" (use high, low, uniform or 2-norm)");
}

std::string rope_strategy_name(RopeStrategy s) {
  switch (s) {
    case RopeStrategy::High: return "high";
    case RopeStrategy::Low: return "low";
    case RopeStrategy::Uniform: return "uniform";
    case RopeStrategy::TwoNorm: return "2-norm";
  }
  fail("invalid partial-RoPE strategy");
}

namespace {

std::vector<int64_t> range(int64_t from, int64_t n, int64_t step = 1) {
  std::vector<int64_t> v(n);
  for (int64_t k = 0; k < n; ++k) v[k] = from + k * step;
  return v;
}

// Frequency indices sorted by descending score; std::stable_sort keeps equal scores in index order.
std::vector<int64_t> order_desc(const float* s, int64_t n) {
  std::vector<int64_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return s[a] > s[b]; });
  return idx;
}

void check_scores(const torch::Tensor& scores, int64_t layers, int64_t n_kv, int64_t half) {
  check(scores.defined(), "2-norm partial RoPE needs calibration scores (run mha2mla calibrate)");
  auto shape = [](const std::vector<int64_t>& v) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
    return s + "]";
  };
  std::vector<int64_t> want{layers, n_kv, half};
  check(scores.sizes().vec() == want,
        "2-norm scores have shape " + shape(scores.sizes().vec()) + ", the model needs " + shape(want));
}

}  // namespace

FreqSelection select_frequencies(RopeStrategy s, int64_t r, int64_t head_dim, int64_t layers, int64_t n_kv,
                                 int64_t uniform_start, const torch::Tensor& scores) {
  const std::string rs = std::to_string(r), hs = std::to_string(head_dim);
  check(head_dim >= 2 && head_dim % 2 == 0, "head_dim " + hs + " must be even for RoPE");
  check(r % 2 == 0, "rope dims r = " + rs + " must be even (r/2 frequency pairs are kept)");
  check(r >= 2, "rope dims r = " + rs + " must be at least 2");
  check(r <= head_dim, "rope dims r = " + rs + " exceeds head_dim " + hs);
  check(layers >= 1 && n_kv >= 1, "need at least one layer and one KV head");
  const int64_t half = head_dim / 2, keep = r / 2;

  std::vector<int64_t> shared;
  switch (s) {
    case RopeStrategy::High:
      shared = range(0, keep);
      break;
    case RopeStrategy::Low:
      shared = range(half - keep, keep);
      break;
    case RopeStrategy::Uniform: {
      const int64_t step = head_dim / r;
      // The step is d_h/r rounded down, as the reference computes it; it must tile the d_h/2 frequencies.
      check(half % step == 0, "uniform partial RoPE needs the step head_dim/r = " + std::to_string(step) +
                                  " to divide head_dim/2 = " + std::to_string(half) + " (head_dim " + hs + ", r " +
                                  rs + ")");
      check(uniform_start >= 0 && uniform_start < step,
            "uniform start " + std::to_string(uniform_start) + " must be in [0, " + std::to_string(step) +
                ") for head_dim " + hs + " and r " + rs);
      shared = range(uniform_start, keep, step);
      break;
    }
    case RopeStrategy::TwoNorm: {
      check_scores(scores, layers, n_kv, half);
      auto sc = scores.to(torch::kCPU, torch::kFloat32).contiguous();
      const float* p = sc.data_ptr<float>();
      FreqSelection out(layers, std::vector<std::vector<int64_t>>(n_kv));
      for (int64_t l = 0; l < layers; ++l)
        for (int64_t h = 0; h < n_kv; ++h) {
          auto idx = order_desc(p + (l * n_kv + h) * half, half);
          std::vector<int64_t> kept(idx.begin(), idx.begin() + keep);
          std::sort(kept.begin(), kept.end());
          out[l][h] = std::move(kept);
        }
      return out;
    }
  }
  return FreqSelection(layers, std::vector<std::vector<int64_t>>(n_kv, shared));
}

torch::Tensor ranks_from_scores(const torch::Tensor& scores) {
  check(scores.defined() && scores.dim() == 3, "2-norm scores must be [layers, kv_heads, head_dim/2]");
  auto sc = scores.to(torch::kCPU, torch::kFloat32).contiguous();
  const int64_t L = sc.size(0), H = sc.size(1), half = sc.size(2);
  auto ranks = torch::empty({L, H, 2 * half}, torch::kInt64);
  const float* p = sc.data_ptr<float>();
  int64_t* r = ranks.data_ptr<int64_t>();
  for (int64_t lh = 0; lh < L * H; ++lh) {
    auto idx = order_desc(p + lh * half, half);
    for (int64_t k = 0; k < half; ++k) {
      r[lh * 2 * half + idx[k]] = k;
      r[lh * 2 * half + half + idx[k]] = k;
    }
  }
  return ranks;
}

std::vector<int64_t> rope_dims(const std::vector<int64_t>& freqs, int64_t head_dim) {
  const int64_t half = head_dim / 2;
  std::vector<int64_t> f(freqs);
  std::sort(f.begin(), f.end());
  for (size_t i = 0; i < f.size(); ++i) {
    check(f[i] >= 0 && f[i] < half, "frequency index " + std::to_string(f[i]) + " out of range for head_dim " +
                                        std::to_string(head_dim));
    check(i == 0 || f[i] != f[i - 1], "frequency index " + std::to_string(f[i]) + " listed twice");
  }
  std::vector<int64_t> d(f);
  for (int64_t x : f) d.push_back(x + half);
  return d;
}

std::vector<int64_t> nope_dims(const std::vector<int64_t>& freqs, int64_t head_dim) {
  auto rope = rope_dims(freqs, head_dim);
  std::vector<bool> is_rope(head_dim, false);
  for (int64_t x : rope) is_rope[x] = true;
  std::vector<int64_t> d;
  for (int64_t j = 0; j < head_dim; ++j)
    if (!is_rope[j]) d.push_back(j);
  return d;
}

}  // namespace mha2mla::convert
