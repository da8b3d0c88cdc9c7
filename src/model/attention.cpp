#include "model/attention.h"

#include <cmath>
#include <tuple>

#include "kernels/attention.h"
#include "kernels/gemv.h"
#include "model/causal_attention.h"
#include "model/mla_attention.h"
#include "model/paged_cache.h"
#include "model/rope.h"

namespace mha2mla::model {

namespace {
void sync_device(const torch::Device& d) {
  if (d.is_cuda()) torch::cuda::synchronize(d.index());
}
// Additive mask [B, 1, T, S], built on the device: slot s is visible to new token t when it is valid, not in the
// future, and (with a sliding window) not too far in the past. Slot offsets equal position offsets within a row.
torch::Tensor build_mask(const torch::Tensor& valid_slots, int64_t start, int64_t t, int64_t window,
                         torch::ScalarType dtype, torch::Device device) {
  const int64_t S = start + t;
  auto iopt = torch::TensorOptions().dtype(torch::kInt64).device(device);
  auto q_slot = torch::arange(start, S, iopt).view({t, 1});
  auto k_slot = torch::arange(0, S, iopt).view({1, S});
  auto allowed = k_slot <= q_slot;
  if (window > 0) allowed = allowed & (k_slot > q_slot - window);
  allowed = allowed.view({1, 1, t, S});
  if (valid_slots.defined()) allowed = allowed & valid_slots.to(device).view({valid_slots.size(0), 1, 1, S});
  // A large finite negative rather than -inf, so a fully masked (padding) row never yields NaN.
  const double neg = dtype == torch::kFloat16 ? -65504.0 : -1e30;
  auto mask = torch::zeros(allowed.sizes(), torch::TensorOptions().dtype(dtype).device(device));
  return mask.masked_fill_(allowed.logical_not(), neg);
}

}  // namespace

const torch::Tensor& AttnContext::mask() const {
  if (need_mask && !mask_.defined()) mask_ = build_mask(slot_valid, start, new_tokens, window, dtype, device);
  return mask_;
}

AttnTimer::AttnTimer(double* acc, const torch::Device& d) : acc_(acc), dev_(d) {
  if (!acc_) return;
  sync_device(dev_);
  t0_ = std::chrono::steady_clock::now();
}

AttnTimer::~AttnTimer() {
  if (!acc_) return;
  sync_device(dev_);
  *acc_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
}

torch::Tensor grouped_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                const torch::Tensor& mask, double scale) {
  const int64_t B = q.size(0), Hq = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), S = k.size(2), Dv = v.size(3);
  const int64_t g = Hq / Hkv;
  // [B, Hkv, g*T, D]: the g query heads of a group become extra rows, so K/V are never copied per head.
  auto qg = q.reshape({B, Hkv, g * T, D});
  auto scores = kernels::matmul(qg, k.transpose(2, 3)) * scale;  // [B, Hkv, g*T, S]
  if (mask.defined()) {
    scores = (scores.view({B, Hkv, g, T, S}) + mask.view({mask.size(0), 1, 1, T, S})).view({B, Hkv, g * T, S});
  }
  auto probs = torch::softmax(scores, -1, torch::kFloat32).to(q.scalar_type());
  auto out = kernels::matmul(probs, v);  // [B, Hkv, g*T, Dv]
  return out.view({B, Hq, T, Dv});
}

torch::Tensor attention_core(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                             const AttnContext& ctx, double scale) {
  const bool blockwise = !ctx.fused && ctx.causal && torch::GradMode::is_enabled();
  if (!ctx.fused && !blockwise) return grouped_attention(q, k, v, ctx.mask(), scale);
  // Under autocast (bf16 in training) q comes out of a linear in bf16 while rotated keys may be f32: compute in
  // q's type, as the reference's autocast matmuls would. Under f32 the kernels widen a narrower cache themselves
  // (SlotBuffer::read_for_kernels), to the same values.
  const auto t = q.scalar_type();
  const bool widened_by_kernels = !blockwise && t == torch::kFloat32 && k.scalar_type() == v.scalar_type();
  auto as_q = [&](const torch::Tensor& x) { return x.scalar_type() == t || widened_by_kernels ? x : x.to(t); };
  const auto kt = as_q(k), vt = as_q(v);
  if (blockwise) return causal_attention_blockwise(q, kt, vt, scale);
  return kernels::attention(q, kt, vt, ctx.start, ctx.slot_valid, ctx.window, scale);
}

namespace {

// Whether the quantized decode kernels can read b where it lies: as codes, or, stored as floats in the compute dtype
// (fp8-flashmla's bf16 rotary keys beside E4M3 latents), as a buffer that is all residual.
bool readable_in_place(const SlotBuffer& b) {
  return is_quantized(b.storage().type) || b.storage().type == compute_cache_type(b.compute_dtype());
}

}  // namespace

bool reads_quantized_in_place(const AttnContext& ctx, int64_t T, const SlotBuffer& a, const SlotBuffer& b) {
  if (!ctx.fused || T > 4 || !readable_in_place(a) || !readable_in_place(b)) return false;
  // Codes to read somewhere, and in each quantized buffer (with none yet, the float path is faster).
  auto codes_or_float = [](const SlotBuffer& x) { return !is_quantized(x.storage().type) || x.quantized_tokens() > 0; };
  return (a.quantized_tokens() > 0 || b.quantized_tokens() > 0) && codes_or_float(a) && codes_or_float(b);
}

kernels::QuantizedKV quantized_kv(const SlotBuffer& b) {
  kernels::QuantizedKV kv;
  if (!is_quantized(b.storage().type)) {  // floats in the compute dtype: no codes, every slot in the residual
    const auto& full = b.full();
    const int64_t B = full.size(0), H = full.size(1), W = full.size(3);
    kv.residual = full.narrow(2, 0, b.tokens());
    kv.data = torch::empty({B, H, 0, W}, full.options().dtype(torch::kUInt8));
    kv.scale = torch::empty({B, H, 0, 1}, full.options().dtype(torch::kFloat16));
    kv.zero = kv.scale;
    kv.group = W;
    return kv;
  }
  auto q = b.quantized_view();
  kv.data = q.data;
  kv.scale = q.scale;
  kv.zero = q.zero;
  kv.residual = b.residual_view();
  const auto& f = kernels::cache_format(b.storage().type);
  kv.codes = f.codes;
  kv.bits = f.bits;
  kv.group = b.storage().group;
  kv.per_channel = b.storage().axis == QuantAxis::Channel;
  kv.n_quant = b.quantized_tokens();
  return kv;
}

GQAAttentionImpl::GQAAttentionImpl(const io::ModelConfig& c, const torch::TensorOptions& opt)
    : n_h_(c.num_heads), n_kv_(c.num_kv_heads), d_h_(c.head_dim) {
  q_proj = register_module("q_proj", Dense(c.hidden_size, n_h_ * d_h_, c.qkv_bias, opt));
  k_proj = register_module("k_proj", Dense(c.hidden_size, n_kv_ * d_h_, c.qkv_bias, opt));
  v_proj = register_module("v_proj", Dense(c.hidden_size, n_kv_ * d_h_, c.qkv_bias, opt));
  o_proj = register_module("o_proj", Dense(n_h_ * d_h_, c.hidden_size, c.o_bias, opt));
  if (c.qk_norm) {
    q_norm = register_module("q_norm", RMSNorm(d_h_, c.rms_norm_eps, opt));
    k_norm = register_module("k_norm", RMSNorm(d_h_, c.rms_norm_eps, opt));
  }
}

torch::Tensor GQAAttentionImpl::forward(const torch::Tensor& x, const AttnContext& ctx, const torch::Tensor& residual) {
  auto qkv = kernels::linear_many(x, {q_proj->weight, k_proj->weight, v_proj->weight},
                                  {q_proj->bias, k_proj->bias, v_proj->bias});
  auto o = attend(qkv[0], qkv[1], qkv[2], ctx);
  return o_proj->forward_add(o, residual);
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> GQAAttentionImpl::rotated(
    const torch::Tensor& q_in, const torch::Tensor& k_in, const torch::Tensor& v_in, const torch::Tensor& cos,
    const torch::Tensor& sin) {
  const int64_t B = q_in.size(0), T = q_in.size(1);
  auto q = q_in.view({B, T, n_h_, d_h_});
  auto k = k_in.view({B, T, n_kv_, d_h_});
  auto v = v_in.view({B, T, n_kv_, d_h_}).transpose(1, 2);
  if (q_norm) {  // qwen3 normalises each head before RoPE
    q = q_norm(q);
    k = k_norm(k);
  }
  return {apply_rope(q.transpose(1, 2), cos, sin), apply_rope(k.transpose(1, 2), cos, sin), v};
}

torch::Tensor GQAAttentionImpl::attend(const torch::Tensor& q_in, const torch::Tensor& k_in, const torch::Tensor& v_in,
                                       const AttnContext& ctx) {
  auto [q, k, v] = rotated(q_in, k_in, v_in, ctx.cos, ctx.sin);
  return cached_attention(q, k, v, ctx);
}

torch::Tensor GQAAttentionImpl::cached_attention(const torch::Tensor& q, torch::Tensor k, torch::Tensor v,
                                                 const AttnContext& ctx) {
  const int64_t B = q.size(0), T = q.size(2);
  torch::Tensor o;
  {
    AttnTimer timer(ctx.attn_seconds, q.device());
    const double scale = 1.0 / std::sqrt(static_cast<double>(d_h_));
    if (ctx.paged) {
      ctx.paged->append(ctx.layer, 0, k);
      ctx.paged->append(ctx.layer, 1, v);
      o = ctx.paged->attend(ctx.layer, q, ctx.window, scale);
    } else if (ctx.cache) {
      auto& kb = ctx.cache->buffer(ctx.layer, 0);
      auto& vb = ctx.cache->buffer(ctx.layer, 1);
      kb.append(k);
      vb.append(v);
      // Decoding over a quantized cache: dequantize in registers, never into memory.
      if (reads_quantized_in_place(ctx, T, kb, vb)) {
        o = kernels::quantized_decode_attention(q.contiguous(), quantized_kv(kb), quantized_kv(vb), ctx.start,
                                                ctx.slot_valid, ctx.window, scale);
      } else {
        std::tie(k, v) = ctx.fused ? read_for_kernels(kb, vb) : std::make_pair(kb.read(), vb.read());  // [B, n_kv, S, d_h]
      }
    }
    if (!o.defined()) o = attention_core(q.contiguous(), k, v, ctx, scale);
  }
  return o.transpose(1, 2).reshape({B, T, n_h_ * d_h_});
}

std::vector<BufferSpec> cache_spec_for(const io::ModelConfig& cfg) {
  if (cfg.is_mla) return MLAAttentionImpl::spec(cfg);
  return GQAAttentionImpl::spec(cfg.num_kv_heads, cfg.head_dim);
}

std::shared_ptr<AttentionImpl> make_attention(const io::ModelConfig& cfg, int64_t layer,
                                              const torch::TensorOptions& opt) {
  if (cfg.is_mla) return std::make_shared<MLAAttentionImpl>(cfg, layer, opt);
  return std::make_shared<GQAAttentionImpl>(cfg, opt);
}

std::string GQAAttentionImpl::step_unsupported(const AttnContext& ctx, torch::ScalarType t) {
  (void)ctx;
  if (q_norm) return "normalises q and k per head";
  if (!streamable(q_proj, t) || !streamable(k_proj, t) || !streamable(v_proj, t) || !streamable(o_proj, t))
    return "has a matrix the GEMV cannot stream";
  return "";
}

StepScratch GQAAttentionImpl::step_scratch() const {
  return {(n_h_ + 2 * n_kv_) * d_h_, n_h_ * d_h_, n_h_ * d_h_, 0};  // q | k | v, rotated q, output
}

// q, k, v by one GEMV group; q rotated into scratch, k rotated and v copied into the token's cache slots; split-KV
// attention of every query head against its KV head.
void GQAAttentionImpl::plan_step(const StepIO& io, SlotBuffer& b0, SlotBuffer& b1, const AttnStepPlan& p) {
  const int64_t Hq = n_h_, Hkv = n_kv_, D = d_h_, es = io.es;
  char *q = io.qkv, *k = q + Hq * D * es, *v = k + Hkv * D * es;
  p.qkv->add(step_gemv(q_proj, io.dt, io.xn, q));
  p.qkv->add(step_gemv(k_proj, io.dt, io.xn, k));
  p.qkv->add(step_gemv(v_proj, io.dt, io.xn, v));
  p.o->add(step_gemv(o_proj, io.dt, io.att, io.h, io.x));
  for (int64_t j = 0; j < Hq; ++j) p.rows->push_back({q + j * D * es, io.qr + j * D * es, io.cos, io.sin, D});
  for (int64_t j = 0; j < Hkv; ++j) p.rows->push_back({k + j * D * es, slot_of(b0, j, io.slot, es), io.cos, io.sin, D});
  for (int64_t j = 0; j < Hkv; ++j) p.rows->push_back({v + j * D * es, slot_of(b1, j, io.slot, es), nullptr, nullptr, D});
  auto& at = *p.attn;
  at.groups = Hkv, at.D1 = D, at.Dv = D;
  at.q1 = kernels::Operand{io.qr, Hq * D, D, D};
  at.k1 = operand_of(b0, false);
  at.v = operand_of(b1, false);
}

}  // namespace mha2mla::model
