#include "model/kv_cache.h"

#include <cstring>

#include "kernels/storage_dtype.h"
#include "util/error.h"

namespace mha2mla::model {
namespace {

torch::ScalarType float_storage(CacheType t) { return kernels::torch_dtype(kernels::cache_format(t).dtype); }

// `buf` with room for at least `need` entries on dim 2 (shaped like `like` otherwise), copying the first
// `keep`; capacity doubles, so appends are amortised O(1).
torch::Tensor grow(const torch::Tensor& buf, const torch::Tensor& like, int64_t need, int64_t keep, int64_t min_cap) {
  if (buf.defined() && buf.size(2) >= need) return buf;
  int64_t cap = buf.defined() ? buf.size(2) : 0;
  int64_t new_cap = std::max<int64_t>(need, std::max<int64_t>(cap * 2, min_cap));
  auto sizes = like.sizes().vec();
  sizes[2] = new_cap;
  auto out = torch::empty(sizes, like.options());
  if (keep > 0) out.narrow(2, 0, keep).copy_(buf.narrow(2, 0, keep));
  return out;
}

// dst[:, :, at:at+t] = x [B, H, t, W] for a contiguous host buffer of x's dtype, with rows of x contiguous:
// a decode step appends one token per head, which copy_ serves through its general machinery at several
// times the cost of the copy. Returns false (nothing written) for anything else.
bool copy_rows(const torch::Tensor& x, const torch::Tensor& dst, int64_t at) {
  if (!x.device().is_cpu() || !dst.device().is_cpu() || x.scalar_type() != dst.scalar_type() ||
      x.stride(3) != 1 || !dst.is_contiguous())
    return false;
  const int64_t B = x.size(0), H = x.size(1), T = x.size(2), W = x.size(3), cap = dst.size(2);
  const size_t es = x.element_size(), row = static_cast<size_t>(W) * es;
  const char* src = static_cast<const char*>(x.data_ptr());
  char* out = static_cast<char*>(dst.data_ptr());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < T; ++t)
        std::memcpy(out + (((b * H + h) * cap) + at + t) * row,
                    src + (b * x.stride(0) + h * x.stride(1) + t * x.stride(2)) * static_cast<int64_t>(es), row);
  return true;
}

}  // namespace

CacheType compute_cache_type(torch::ScalarType t) {
  return t == torch::kFloat32 ? CacheType::F32 : t == torch::kBFloat16 ? CacheType::BF16 : CacheType::F16;
}

Storage resolve_storage(const BufferSpec& spec, const CacheOptions& opt, torch::ScalarType compute) {
  Storage s;
  if (auto t = opt.type_of.find(spec.name); t != opt.type_of.end()) {
    s.type = t->second;
  } else if (opt.type) {
    const auto& f = kernels::cache_format(*opt.type);
    s.type = spec.role == BufferRole::RotaryKey ? f.rotary : f.type;
  } else {
    s.type = compute_cache_type(compute);
  }
  const auto& f = kernels::cache_format(s.type);
  check(f.buffers == kernels::Buffers::Any || spec.role == BufferRole::Latent || spec.role == BufferRole::RotaryKey,
        std::string("cache type ") + f.name + " stores MLA caches only (the latent c and rotary keys k_r), and this " +
            "model caches \"" + spec.name + "\": use fp8 or another type");
  auto a = opt.axis_of.find(spec.name);
  s.axis = a != opt.axis_of.end() ? a->second : spec.axis;
  s.group = f.group > 0 ? f.group : opt.group;
  s.residual = opt.residual;
  s.quant = opt.quant;
  check(s.group >= 1, "--cache-group must be at least 1");
  check(s.residual >= 0, "--cache-residual must not be negative");
  check_quantizer(s.type, s.quant);
  if (is_quantized(s.type) && s.axis == QuantAxis::Channel)
    check(s.residual > 0 && s.residual % s.group == 0,
          "cache buffer \"" + spec.name + "\" is quantized per channel in groups of " + std::to_string(s.group) +
              " tokens, so --cache-residual (" + std::to_string(s.residual) +
              ") must be a positive multiple of " +
              (f.group > 0 ? std::string("the group ") + f.name + " fixes" : std::string("--cache-group")) +
              "; or use --cache-axis " + spec.name + "=token");
  return s;
}

double bytes_per_token(const std::vector<BufferSpec>& specs, const CacheOptions& opt, torch::ScalarType compute) {
  double total = 0;
  for (const auto& b : specs) {
    auto s = resolve_storage(b, opt, compute);
    total += kernels::bytes_per_token(kernels::cache_format(s.type), b.heads, b.width, s.group,
                                      s.axis == QuantAxis::Channel);
  }
  return total;
}

SlotBuffer::SlotBuffer(BufferSpec spec, Storage st, int64_t batch, torch::ScalarType compute, torch::Device device)
    : spec_(std::move(spec)), st_(st), batch_(batch), compute_(compute), device_(device),
      format_(kernels::cache_format(st.type)) {
  if (is_quantized(st_.type) && st_.residual > 0)
    residual_ = torch::empty({batch_, spec_.heads, st_.residual, spec_.width},
                             torch::TensorOptions().dtype(compute_).device(device_));
}

void SlotBuffer::append(const torch::Tensor& x) {
  check(x.dim() == 4 && x.size(0) == batch_ && x.size(1) == spec_.heads && x.size(3) == spec_.width,
        "cache buffer \"" + spec_.name + "\": appended tensor has the wrong shape");
  const int64_t t = x.size(2);
  if (!is_quantized(st_.type)) {
    reserve(t);
    if (!copy_rows(x, full_, full_n_)) full_.narrow(2, full_n_, t).copy_(x);
    full_n_ += t;
    return;
  }
  if (st_.residual == 0) {
    quantize_and_append(x);
    return;
  }
  // Fill the residual; each time it is full, quantize it as one block.
  int64_t done = 0;
  while (done < t) {
    const int64_t take = std::min(t - done, st_.residual - residual_n_);
    residual_.narrow(2, residual_n_, take).copy_(x.narrow(2, done, take));
    residual_n_ += take;
    done += take;
    if (residual_n_ == st_.residual) {
      quantize_and_append(residual_);
      residual_n_ = 0;
    }
  }
}

void SlotBuffer::reserve(int64_t t) {
  check(!is_quantized(st_.type), "cache buffer \"" + spec_.name + "\": reserve() is for float storage");
  if (full_.defined() && full_.size(2) >= full_n_ + t) return;
  auto opts = torch::TensorOptions().dtype(float_storage(st_.type)).device(device_);
  full_ = grow(full_, torch::empty({batch_, spec_.heads, 1, spec_.width}, opts), full_n_ + t, full_n_, 64);
}

void SlotBuffer::advance(int64_t t) {
  check(full_.defined() && full_n_ + t <= full_.size(2), "cache buffer \"" + spec_.name + "\": advance() past the reserved slots");
  full_n_ += t;
}

void SlotBuffer::quantize_and_append(const torch::Tensor& block) {
  const int64_t n = block.size(2);
  auto q = quantize(block, st_.type, st_.group, st_.axis, st_.quant);
  const int64_t rows = scale_rows(st_, quantized_), new_rows = q.scale.size(2);
  data_ = grow(data_, q.data, quantized_ + n, quantized_, 64);
  scale_ = grow(scale_, q.scale, rows + new_rows, rows, 64);
  data_.narrow(2, quantized_, n).copy_(q.data);
  scale_.narrow(2, rows, new_rows).copy_(q.scale);
  if (q.zero.defined()) {
    zero_ = grow(zero_, q.zero, rows + new_rows, rows, 64);
    zero_.narrow(2, rows, new_rows).copy_(q.zero);
  }
  quantized_ += n;
}

torch::Tensor SlotBuffer::residual_view() const {
  if (!residual_.defined())
    return torch::empty({batch_, spec_.heads, 0, spec_.width}, torch::TensorOptions().dtype(compute_).device(device_));
  return residual_.narrow(2, 0, residual_n_);
}

QuantBlock SlotBuffer::quantized_view() const {
  if (quantized_ == 0) return {};
  const int64_t rows = scale_rows(st_, quantized_);
  return {data_.narrow(2, 0, quantized_), scale_.narrow(2, 0, rows),
          zero_.defined() ? zero_.narrow(2, 0, rows) : torch::Tensor()};
}

torch::Tensor SlotBuffer::read() const {
  if (!is_quantized(st_.type)) {
    check(full_.defined(), "cache buffer \"" + spec_.name + "\" is empty");
    return full_.narrow(2, 0, full_n_).to(compute_);
  }
  std::vector<torch::Tensor> parts;
  if (quantized_ > 0) parts.push_back(dequantize(quantized_view(), st_.type, st_.group, st_.axis, spec_.width, compute_));
  if (residual_n_ > 0) parts.push_back(residual_view());
  check(!parts.empty(), "cache buffer \"" + spec_.name + "\" is empty");
  return parts.size() == 1 ? parts[0] : torch::cat(parts, 2);
}

torch::Tensor SlotBuffer::read_for_kernels() const {
  if (is_quantized(st_.type) || compute_ != torch::kFloat32 || !device_.is_cpu() || !full_.defined()) return read();
  return full_.narrow(2, 0, full_n_);
}

std::pair<torch::Tensor, torch::Tensor> read_for_kernels(const SlotBuffer& a, const SlotBuffer& b) {
  if (a.storage().type == b.storage().type) return {a.read_for_kernels(), b.read_for_kernels()};
  return {a.read(), b.read()};
}

int64_t SlotBuffer::bytes() const {
  const int64_t rows = batch_ * spec_.heads;
  if (!is_quantized(st_.type)) return rows * full_n_ * kernels::row_bytes(format_, spec_.width);
  const int64_t groups = st_.axis == QuantAxis::Token ? kernels::token_groups(spec_.width, st_.group) * quantized_
                                                      : spec_.width * (quantized_ / st_.group);
  return rows * (quantized_ * kernels::row_bytes(format_, spec_.width) +
                 (format_.scale_bytes + format_.zero_bytes) * groups +
                 residual_n_ * spec_.width * static_cast<int64_t>(c10::elementSize(compute_)));
}

int64_t SlotBuffer::capacity_bytes() const {
  return tensor_bytes(full_) + tensor_bytes(data_) + tensor_bytes(scale_) + tensor_bytes(zero_) +
         tensor_bytes(residual_);
}

nlohmann::json CacheStats::to_json() const {
  return {{"cache_bytes", bytes},
          {"cache_bytes_per_token", bytes_per_token()},
          {"cache_capacity_bytes", capacity_bytes},
          {"cache_tokens", tokens},
          {"cache_residual_tokens", residual_tokens}};
}

KVCache::KVCache(int64_t batch, const std::vector<std::vector<BufferSpec>>& layer_specs, const CacheOptions& opt,
                 torch::ScalarType compute, torch::Device device)
    : batch_(batch), device_(device) {
  valid_ = torch::zeros({batch, 0}, torch::TensorOptions().dtype(torch::kBool).device(device));
  next_pos_host_ = torch::zeros({batch}, torch::kInt64);
  layers_.resize(layer_specs.size());
  for (size_t i = 0; i < layer_specs.size(); ++i)
    for (const auto& spec : layer_specs[i])
      layers_[i].emplace_back(spec, resolve_storage(spec, opt, compute), batch, compute, device);
}

CacheStats KVCache::stats() const {
  CacheStats s;
  s.tokens = batch_ * filled_;
  for (const auto& layer : layers_)
    for (const auto& b : layer) {
      s.bytes += b.bytes();
      s.capacity_bytes += b.capacity_bytes();
      s.residual_tokens = std::max(s.residual_tokens, batch_ * b.residual_tokens());
    }
  s.capacity_bytes += tensor_bytes(valid_);
  return s;
}

torch::Tensor KVCache::begin_step(const torch::Tensor& new_valid) {
  auto nv = new_valid.to(torch::kCPU, torch::kBool);
  if (all_valid_ && !nv.all().item<bool>()) all_valid_ = false;
  auto nv_i = nv.to(torch::kInt64);
  auto pos = (next_pos_host_.unsqueeze(1) + nv_i.cumsum(1) - 1).clamp_min(0);
  next_pos_host_ = next_pos_host_ + nv_i.sum(1);
  valid_ = torch::cat({valid_, nv.to(device_)}, 1);
  return pos.to(device_);
}

void KVCache::append_synthetic(int64_t t, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  begin_step(torch::ones({batch_, t}, torch::kBool));
  for (auto& layer : layers_)
    for (auto& b : layer) {
      // Chunks bound the temporary f32 tensor for long contexts.
      for (int64_t s = 0; s < t; s += 1024) {
        const int64_t n = std::min<int64_t>(1024, t - s);
        auto x = at::normal(0.0, 1.0, {batch_, b.spec().heads, n, b.spec().width}, gen);
        b.append(x.to(device_));
      }
    }
  end_step(t);
}

}  // namespace mha2mla::model
