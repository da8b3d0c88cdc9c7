#include "train/optim.h"

#include <cmath>

#include "util/error.h"

namespace mha2mla::train {

AdamW::AdamW(std::vector<std::pair<std::string, torch::Tensor>> params, std::vector<bool> decay, AdamWOptions opt)
    : params_(std::move(params)), decay_(std::move(decay)), opt_(opt) {
  check(decay_.size() == params_.size(), "AdamW: one decay flag per parameter");
  for (const auto& [n, p] : params_) {
    m_.push_back(torch::zeros_like(p, torch::MemoryFormat::Contiguous));
    v_.push_back(torch::zeros_like(p, torch::MemoryFormat::Contiguous));
  }
}

void AdamW::step(double lr) {
  torch::NoGradGuard ng;
  ++t_;
  const double bc1 = 1.0 - std::pow(opt_.beta1, static_cast<double>(t_));
  const double bc2 = 1.0 - std::pow(opt_.beta2, static_cast<double>(t_));
  const double step_size = lr / bc1;
  const double bc2_sqrt = std::sqrt(bc2);
  for (size_t i = 0; i < params_.size(); ++i) {
    auto& p = params_[i].second;
    const auto& g = p.grad();
    if (!g.defined()) continue;
    if (decay_[i] && opt_.weight_decay != 0.0) p.mul_(1.0 - lr * opt_.weight_decay);
    m_[i].mul_(opt_.beta1).add_(g, 1.0 - opt_.beta1);
    v_[i].mul_(opt_.beta2).addcmul_(g, g, 1.0 - opt_.beta2);
    auto denom = (v_[i].sqrt() / bc2_sqrt).add_(opt_.eps);
    p.addcdiv_(m_[i], denom, -step_size);
  }
}

io::NamedTensors AdamW::state() const {
  io::NamedTensors out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out.emplace_back("exp_avg." + params_[i].first, m_[i]);
    out.emplace_back("exp_avg_sq." + params_[i].first, v_[i]);
  }
  return out;
}

void AdamW::load_state(const io::SafetensorsFile& f, int64_t steps) {
  torch::NoGradGuard ng;
  for (size_t i = 0; i < params_.size(); ++i) {
    for (auto [prefix, dst] : {std::pair<const char*, torch::Tensor*>{"exp_avg.", &m_[i]}, {"exp_avg_sq.", &v_[i]}}) {
      const std::string name = prefix + params_[i].first;
      const io::TensorInfo* ti = f.find(name);
      check(ti != nullptr, f.path() + ": optimizer state has no " + name + " (another model?)");
      // Exact resume needs the fp32 moments as saved; anything else is another file.
      check(ti->dtype == io::DType::F32,
            f.path() + ": optimizer state " + name + " has dtype " + io::dtype_name(ti->dtype) + ", expected F32");
      auto t = f.tensor(name);
      check(t.sizes() == dst->sizes(), f.path() + ": optimizer state " + name + " has the wrong shape");
      dst->copy_(t);
    }
  }
  t_ = steps;
}

double Schedule::at(int64_t t) const {
  if (warmup > 0 && t < warmup) return lr * static_cast<double>(t + 1) / static_cast<double>(warmup);
  if (decay == "none" || t < decay_start) return lr;
  const int64_t span = std::max<int64_t>(1, total - decay_start);
  const double x = std::min(1.0, static_cast<double>(t - decay_start) / static_cast<double>(span));
  if (decay == "cosine") return min_lr + (lr - min_lr) * 0.5 * (1.0 + std::cos(M_PI * x));
  return min_lr + (lr - min_lr) * (1.0 - std::sqrt(x));
}

double clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm) {
  torch::NoGradGuard ng;
  std::vector<torch::Tensor> norms;
  for (const auto& p : params)
    if (p.grad().defined()) norms.push_back(p.grad().to(torch::kFloat64).pow(2).sum());
  if (norms.empty()) return 0.0;
  const double norm = std::sqrt(torch::stack(norms).sum().item<double>());  // one sync, not one per tensor
  if (max_norm > 0 && norm > max_norm) {
    const double scale = max_norm / (norm + 1e-6);
    for (const auto& p : params)
      if (p.grad().defined()) p.grad().mul_(scale);
  }
  return norm;
}

}  // namespace mha2mla::train
