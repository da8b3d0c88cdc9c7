#include "model/kv_cache.h"

namespace mha2mla::model {
torch::Tensor grow_slots(const torch::Tensor& buf, const torch::Tensor& like, int64_t need, int64_t keep) {
  if (buf.defined() && buf.size(2) >= need) return buf;
  int64_t cap = buf.defined() ? buf.size(2) : 0;
  int64_t new_cap = std::max<int64_t>(need, std::max<int64_t>(cap * 2, 64));
  auto sizes = like.sizes().vec();
  sizes[2] = new_cap;
  auto out = torch::empty(sizes, like.options());
  if (keep > 0) out.narrow(2, 0, keep).copy_(buf.narrow(2, 0, keep));
  return out;
}

std::pair<torch::Tensor, torch::Tensor> KVLayerCache::append(const torch::Tensor& k, const torch::Tensor& v,
                                                             int64_t start) {
  const int64_t t = k.size(2);
  k_ = grow_slots(k_, k, start + t, start);
  v_ = grow_slots(v_, v, start + t, start);
  k_.narrow(2, start, t).copy_(k);
  v_.narrow(2, start, t).copy_(v);
  return {k_.narrow(2, 0, start + t), v_.narrow(2, 0, start + t)};
}

int64_t KVLayerCache::bytes_for(int64_t slots) const {
  if (!k_.defined()) return 0;
  return slots * (k_.size(0) * k_.size(1) * k_.size(3) * k_.element_size() +
                  v_.size(0) * v_.size(1) * v_.size(3) * v_.element_size());
}

KVCache::KVCache(int64_t batch, int64_t num_layers) : batch_(batch), layers_(num_layers) {
  valid_ = torch::zeros({batch, 0}, torch::kBool);
  next_pos_ = torch::zeros({batch}, torch::kInt64);
}

int64_t KVCache::bytes() const {
  int64_t total = 0;
  for (const auto& l : layers_)
    if (l) total += l->bytes_for(filled_);
  return total;
}

torch::Tensor KVCache::begin_step(const torch::Tensor& new_valid) {
  auto nv = new_valid.to(torch::kCPU, torch::kBool);
  valid_ = torch::cat({valid_.narrow(1, 0, filled_), nv}, 1);
  auto steps = nv.to(torch::kInt64).cumsum(1);
  auto pos = (next_pos_.unsqueeze(1) + steps - 1).clamp_min(0);
  next_pos_ = next_pos_ + nv.to(torch::kInt64).sum(1);
  return pos;
}

}  // namespace mha2mla::model
