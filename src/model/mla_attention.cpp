#include "model/mla_attention.h"

#include <cmath>
#include <tuple>
#include <cstring>

#include "kernels/attention.h"
#include "kernels/gemv.h"
#include "model/paged_cache.h"
#include "model/rope.h"
#include "util/error.h"

namespace mha2mla::model {
namespace {

// cos/sin [B, T, d_h] gathered at per-head dims [H, r] -> [B, H, T, r].
torch::Tensor gather_heads(const torch::Tensor& table, const torch::Tensor& dims) {
  const int64_t B = table.size(0), T = table.size(1), H = dims.size(0), r = dims.size(1);
  auto idx = dims.to(table.device()).view({1, H, 1, r}).expand({B, H, T, r});
  return table.unsqueeze(1).expand({B, H, T, table.size(2)}).gather(3, idx);
}

torch::Tensor rope_sel(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  return x * cos + rotate_half(x) * sin;  // pairs (k, k + r/2) = frequency f_k at dims (f_k, f_k + d_h/2)
}

}  // namespace

LowRankKVImpl::LowRankKVImpl(const io::ModelConfig& c, const torch::TensorOptions& opt)
    : method_(c.mla.svd_init_method), latent_dim_(c.mla.latent_dim(c.num_kv_heads, c.head_dim)) {
  const int64_t d = c.hidden_size, n_kv = c.num_kv_heads, d_h = c.head_dim, r = c.mla.rope_dim;
  const int64_t d_c = d_h - r, L = c.mla.low_rank * n_kv;
  const bool bias = c.qkv_bias;
  if (method_ == "none") {
    up_k = register_module("up_k", Dense(d, n_kv * d_c, bias, opt));
    up_v = register_module("up_v", Dense(d, n_kv * d_h, bias, opt));
    split_ = n_kv * d_c;
  } else if (method_ == "split") {
    down_k = register_module("down_k", Dense(d, L, false, opt));
    down_v = register_module("down_v", Dense(d, L, false, opt));
    up_k = register_module("up_k", Dense(L, n_kv * d_c, bias, opt));
    up_v = register_module("up_v", Dense(L, n_kv * d_h, bias, opt));
    split_ = L;
  } else {
    down_kv = register_module("down_kv", Dense(d, L, false, opt));
    up_k = register_module("up_k", Dense(L, n_kv * d_c, bias, opt));
    up_v = register_module("up_v", Dense(L, n_kv * d_h, bias, opt));
  }
}

torch::Tensor LowRankKVImpl::latent(const torch::Tensor& x) {
  if (method_ == "none") return torch::cat({up_k(x), up_v(x)}, -1);
  if (method_ == "split") return torch::cat({down_k(x), down_v(x)}, -1);
  return down_kv(x);
}

std::pair<torch::Tensor, torch::Tensor> LowRankKVImpl::up(const torch::Tensor& c) {
  if (method_ == "none") return {c.narrow(-1, 0, split_), c.narrow(-1, split_, c.size(-1) - split_)};
  if (method_ == "split") return {up_k(c.narrow(-1, 0, split_)), up_v(c.narrow(-1, split_, split_))};
  return {up_k(c), up_v(c)};
}

torch::Tensor LowRankKVImpl::key_part(const torch::Tensor& c) const {
  return method_ == "split" ? c.narrow(-1, 0, split_) : c;
}

torch::Tensor LowRankKVImpl::value_part(const torch::Tensor& c) const {
  return method_ == "split" ? c.narrow(-1, split_, split_) : c;
}

MLAAttentionImpl::MLAAttentionImpl(const io::ModelConfig& c, int64_t layer, const torch::TensorOptions& opt)
    : n_h_(c.num_heads), n_kv_(c.num_kv_heads), d_h_(c.head_dim), r_(c.mla.rope_dim), spec_(spec(c)) {
  check(!c.qk_norm, "MLA attention does not support qk-norm models (qwen3)");
  check(layer < static_cast<int64_t>(c.mla.freqs.size()), "mha2mla config lists no frequencies for layer " +
                                                               std::to_string(layer));
  q_proj = register_module("q_proj", Dense(c.hidden_size, n_h_ * d_h_, c.qkv_bias, opt));
  k_r_proj = register_module("k_r_proj", Dense(c.hidden_size, n_kv_ * r_, c.qkv_bias, opt));
  kv_proj = register_module("kv_proj", LowRankKV(c, opt));
  o_proj = register_module("o_proj", Dense(n_h_ * d_h_, c.hidden_size, c.o_bias, opt));
  const auto& freqs = c.mla.freqs[layer];
  const int64_t half = d_h_ / 2, g = n_h_ / n_kv_;
  k_dims_ = torch::empty({n_kv_, r_}, torch::kInt64);
  for (int64_t h = 0; h < n_kv_; ++h) {
    const auto& f = freqs.at(h);
    for (int64_t i = 0; i < r_ / 2; ++i) {
      k_dims_[h][i] = f[i];
      k_dims_[h][i + r_ / 2] = f[i] + half;
    }
  }
  q_dims_ = k_dims_.repeat_interleave(g, 0);  // query head j uses KV head j / g, as HF repeat_kv
}

torch::Tensor MLAAttentionImpl::forward(const torch::Tensor& x, const AttnContext& ctx, const torch::Tensor& residual) {
  const int64_t B = x.size(0), T = x.size(1), d_c = d_h_ - r_;
  if (folds_weights() && ctx.fused && (ctx.cache || ctx.paged) && use_absorbed(ctx, T) && !torch::GradMode::is_enabled())
    return decode_absorbed(x, ctx, residual);
  check(!ctx.paged || use_absorbed(ctx, T),
        "the paged cache decodes MLA absorbed: this model caches no latent to absorb (--svd none), or --attn "
        "materialize is set");
  auto q = q_proj(x);
  auto q_r = rotated_queries(q, ctx.cos, ctx.sin);                                         // [B, n_h, T, r]
  auto q_c = q.narrow(-1, n_h_ * r_, n_h_ * d_c).view({B, T, n_h_, d_c}).transpose(1, 2);  // [B, n_h, T, d_c]
  auto k_r = rotated_keys(x, ctx);                                                         // [B, n_kv, T, r]
  auto c = kv_proj->latent(x);  // [B, T, L]
  torch::Tensor o;  // [B, n_h, T, d_h]
  {
    AttnTimer timer(ctx.attn_seconds, x.device());
    if (ctx.paged) {
      ctx.paged->append(ctx.layer, 0, c.unsqueeze(1));
      ctx.paged->append(ctx.layer, 1, k_r);
    } else if (ctx.cache) {
      auto& cb = ctx.cache->buffer(ctx.layer, 0);
      auto& kb = ctx.cache->buffer(ctx.layer, 1);
      cb.append(c.unsqueeze(1));
      kb.append(k_r);
      if (use_absorbed(ctx, T) && reads_quantized_in_place(ctx, T, cb, kb)) {
        o = attend_absorbed(q_r, q_c, {}, {}, ctx, &cb, &kb);
      } else {
        // mla_decode_attention widens a narrower cache in registers.
        std::tie(c, k_r) = ctx.fused && use_absorbed(ctx, T) ? read_for_kernels(cb, kb)
                                                             : std::make_pair(cb.read(), kb.read());
        c = c.squeeze(1);  // [B, S, L]; k_r [B, n_kv, S, r]
      }
    }
    if (!o.defined())
      o = use_absorbed(ctx, T) ? attend_absorbed(q_r, q_c, c, k_r, ctx) : attend_materialized(q_r, q_c, c, k_r, ctx);
  }
  return o_proj->forward_add(o.transpose(1, 2).reshape({B, T, n_h_ * d_h_}), residual);
}

torch::Tensor MLAAttentionImpl::rotated_queries(const torch::Tensor& q, const torch::Tensor& cos,
                                                const torch::Tensor& sin) const {
  const int64_t B = q.size(0), T = q.size(1);
  auto q_r = q.narrow(-1, 0, n_h_ * r_).view({B, T, n_h_, r_}).transpose(1, 2);
  return rope_sel(q_r, gather_heads(cos, q_dims_), gather_heads(sin, q_dims_));
}

torch::Tensor MLAAttentionImpl::rotated_keys(const torch::Tensor& x, const AttnContext& ctx) {
  return rotate_keys(k_r_proj(x), ctx.cos, ctx.sin);
}

torch::Tensor MLAAttentionImpl::rotate_keys(const torch::Tensor& k_r_lin, const torch::Tensor& cos,
                                            const torch::Tensor& sin) const {
  const int64_t B = k_r_lin.size(0), T = k_r_lin.size(1);
  auto k_r = k_r_lin.view({B, T, n_kv_, r_}).transpose(1, 2);
  return rope_sel(k_r, gather_heads(cos, k_dims_), gather_heads(sin, k_dims_));
}

const MLAAttentionImpl::AbsorbedWeights& MLAAttentionImpl::absorbed_weights() {
  const std::vector<torch::Tensor> src = {q_proj->weight, q_proj->bias, kv_proj->up_k->weight, kv_proj->up_v->weight,
                                          kv_proj->up_v->bias, o_proj->weight, o_proj->bias};
  std::vector<int64_t> stamp;
  for (const auto& t : src) {
    stamp.push_back(t.defined() ? static_cast<int64_t>(t._version()) : -1);
    stamp.push_back(t.defined() ? reinterpret_cast<int64_t>(t.data_ptr()) : 0);
    stamp.push_back(t.defined() ? static_cast<int64_t>(t.scalar_type()) : -1);
  }
  if (stamp == absorbed_.stamp) return absorbed_;
  torch::NoGradGuard ng;
  const int64_t hidden = q_proj->weight.size(1), out = o_proj->weight.size(0), d_c = d_h_ - r_, g = n_h_ / n_kv_;
  const int64_t L = kv_proj->latent_dim(), Lk = kv_proj->up_k->weight.size(1), Lv = kv_proj->up_v->weight.size(1);
  auto f32 = [](const torch::Tensor& t) { return t.to(torch::kFloat32); };
  // Query: q_lat,h = W_uk,kv(h)ᵀ (W_q,h x + b_q,h); c_v's columns (split latent) score zero.
  auto w_uk = f32(kv_proj->up_k->weight).view({n_kv_, d_c, Lk}).repeat_interleave(g, 0).transpose(1, 2);  // [n_h, Lk, d_c]
  auto wq = f32(q_proj->weight);
  auto w_qlat = torch::bmm(w_uk, wq.narrow(0, n_h_ * r_, n_h_ * d_c).view({n_h_, d_c, hidden}));  // [n_h, Lk, hidden]
  if (Lk < L) w_qlat = torch::cat({w_qlat, torch::zeros({n_h_, L - Lk, hidden})}, 1);
  AbsorbedWeights a;
  a.w_q = torch::cat({wq.narrow(0, 0, n_h_ * r_), w_qlat.reshape({n_h_ * L, hidden})}, 0);
  if (q_proj->bias.defined()) {
    auto bq = f32(q_proj->bias);
    auto b_qlat = torch::bmm(w_uk, bq.narrow(0, n_h_ * r_, n_h_ * d_c).view({n_h_, d_c, 1}));  // [n_h, Lk, 1]
    if (Lk < L) b_qlat = torch::cat({b_qlat, torch::zeros({n_h_, L - Lk, 1})}, 1);
    a.b_q = torch::cat({bq.narrow(0, 0, n_h_ * r_), b_qlat.reshape({n_h_ * L})}, 0);
  }
  // Output: o = Σ_h W_o,h (W_uv,kv(h) o_lat,h + b_uv) + b_o; c_k's columns (split latent) contribute nothing.
  auto wo = f32(o_proj->weight).view({out, n_h_, d_h_}).permute({1, 0, 2});                       // [n_h, out, d_h]
  auto w_uv = f32(kv_proj->up_v->weight).view({n_kv_, d_h_, Lv}).repeat_interleave(g, 0);        // [n_h, d_h, Lv]
  auto w_olat = torch::bmm(wo, w_uv);                                                              // [n_h, out, Lv]
  if (Lv < L) w_olat = torch::cat({torch::zeros({n_h_, out, L - Lv}), w_olat}, 2);
  a.w_o = w_olat.permute({1, 0, 2}).reshape({out, n_h_ * L});
  if (o_proj->bias.defined()) a.b_o = f32(o_proj->bias);
  if (kv_proj->up_v->bias.defined()) {
    auto b_uv = f32(kv_proj->up_v->bias).view({n_kv_, d_h_, 1}).repeat_interleave(g, 0);          // [n_h, d_h, 1]
    auto extra = torch::bmm(wo, b_uv).sum(0).view({out});
    a.b_o = a.b_o.defined() ? a.b_o + extra : extra;
  }
  const auto opt = q_proj->weight.options();
  a.w_q = a.w_q.to(opt).contiguous();
  a.w_o = a.w_o.to(opt).contiguous();
  if (a.b_q.defined()) a.b_q = a.b_q.to(opt);
  if (a.b_o.defined()) a.b_o = a.b_o.to(opt);
  a.stamp = std::move(stamp);
  absorbed_ = std::move(a);
  return absorbed_;
}

torch::Tensor MLAAttentionImpl::decode_absorbed(const torch::Tensor& x, const AttnContext& ctx, const torch::Tensor& residual) {
  const auto& aw = absorbed_weights();
  auto q = kernels::linear(x, aw.w_q, aw.b_q);  // [B, T, n_h·(r + L)]
  auto o_lat = absorbed_attend(q, k_r_proj(x), kv_proj->latent(x), ctx);
  return kernels::linear_add(o_lat, aw.w_o, aw.b_o, residual);  // [B, T, hidden]
}

torch::Tensor MLAAttentionImpl::absorbed_attend(const torch::Tensor& q, const torch::Tensor& k_r_lin,
                                                const torch::Tensor& c, const AttnContext& ctx) {
  return absorbed_cached(q, rotated_queries(q, ctx.cos, ctx.sin), rotate_keys(k_r_lin, ctx.cos, ctx.sin), c, ctx);
}

torch::Tensor MLAAttentionImpl::absorbed_cached(const torch::Tensor& q, const torch::Tensor& q_r,
                                                const torch::Tensor& k_r, const torch::Tensor& c, const AttnContext& ctx) {
  const int64_t B = q.size(0), T = q.size(1), L = kv_proj->latent_dim();
  auto q_lat = q.narrow(-1, n_h_ * r_, n_h_ * L).view({B, T, n_h_, L}).transpose(1, 2);        // [B, n_h, T, L]
  const double scale = 1.0 / std::sqrt(static_cast<double>(d_h_));
  torch::Tensor o_lat;                                                                          // [B, n_h, T, L]
  {
    AttnTimer timer(ctx.attn_seconds, q.device());
    if (ctx.paged) {
      ctx.paged->append(ctx.layer, 0, c.unsqueeze(1));
      ctx.paged->append(ctx.layer, 1, k_r);
      return ctx.paged->attend_mla(ctx.layer, q_lat, q_r, ctx.window, scale).transpose(1, 2).reshape({B, T, n_h_ * L});
    }
    auto& cb = ctx.cache->buffer(ctx.layer, 0);
    auto& kb = ctx.cache->buffer(ctx.layer, 1);
    cb.append(c.unsqueeze(1));
    kb.append(k_r);
    if (reads_quantized_in_place(ctx, T, cb, kb)) {
      o_lat = kernels::quantized_mla_decode_attention(q_lat, q_r.contiguous(), quantized_kv(cb), quantized_kv(kb),
                                                      ctx.start, ctx.slot_valid, ctx.window, scale);
    } else {
      auto [c_all, k_r_all] = read_for_kernels(cb, kb);  // [B, 1, S, L], [B, n_kv, S, r]
      o_lat = kernels::mla_decode_attention(q_lat, q_r, c_all.squeeze(1), k_r_all, ctx.start, ctx.slot_valid,
                                            ctx.window, scale);
    }
  }
  return o_lat.transpose(1, 2).reshape({B, T, n_h_ * L});
}

bool MLAAttentionImpl::use_absorbed(const AttnContext& ctx, int64_t T) const {
  if (!kv_proj->absorbable() || ctx.attn == AttnMode::Materialize) return false;
  if (ctx.attn == AttnMode::Absorbed) return true;
  // auto: absorbing costs ~2·T·n_h·L per cached token, materialising ~n_kv·(d_c + d_h)·L; the latter also
  // writes K and V. So absorb for decoding and short chunks, materialise for prefill, as DeepSeek does.
  return (ctx.cache || ctx.paged) && 2 * T * n_h_ <= n_kv_ * (2 * d_h_ - r_);
}

torch::Tensor MLAAttentionImpl::attend_materialized(const torch::Tensor& q_r, const torch::Tensor& q_c,
                                                    const torch::Tensor& c, const torch::Tensor& k_r,
                                                    const AttnContext& ctx) {
  const int64_t B = c.size(0), S = c.size(1), d_c = d_h_ - r_;
  auto kv = kv_proj->up(c);
  auto k_c = kv.first.reshape({B, S, n_kv_, d_c}).transpose(1, 2);  // [B, n_kv, S, d_c]
  auto v = kv.second.reshape({B, S, n_kv_, d_h_}).transpose(1, 2);   // [B, n_kv, S, d_h]
  auto qf = torch::cat({q_r, q_c}, -1);
  auto kf = torch::cat({k_r, k_c}, -1);
  // The scale stays 1/sqrt(d_h): the score is the same dot product as before conversion, reordered.
  return attention_core(qf, kf, v, ctx, 1.0 / std::sqrt(static_cast<double>(d_h_)));
}

torch::Tensor MLAAttentionImpl::attend_absorbed(const torch::Tensor& q_r, const torch::Tensor& q_c,
                                                const torch::Tensor& c, const torch::Tensor& k_r,
                                                const AttnContext& ctx, const SlotBuffer* cb, const SlotBuffer* kb) {
  const int64_t B = q_c.size(0), T = q_c.size(2), d_c = d_h_ - r_, g = n_h_ / n_kv_, L = kv_proj->latent_dim();
  const int64_t Lk = kv_proj->up_k->weight.size(1), Lv = kv_proj->up_v->weight.size(1);  // widths of c_k, c_v
  auto w_uk = kv_proj->up_k->weight.view({n_kv_, d_c, Lk});  // per KV head: k_nope = W_uk c
  auto w_uv = kv_proj->up_v->weight.view({n_kv_, d_h_, Lv});  // per KV head: v = W_uv c
  // Query heads of a group become rows of their KV head, as in grouped_attention.
  auto q_nope_absorbed = kernels::matmul(q_c.reshape({B, n_kv_, g * T, d_c}), w_uk);         // [B, n_kv, g·T, Lk]
  const double scale = 1.0 / std::sqrt(static_cast<double>(d_h_));
  torch::Tensor o_latent;  // [B, n_kv, g·T, Lv]
  if (ctx.fused) {
    // The kernel scores and sums one latent: for a split latent, score against [c_k | c_v] with zeros over c_v
    // and keep the c_v part of the output.
    auto q_lat = q_nope_absorbed.reshape({B, n_h_, T, Lk});
    const bool split = kv_proj->split();
    if (split) q_lat = torch::cat({q_lat, torch::zeros({B, n_h_, T, L - Lk}, q_lat.options())}, -1);
    auto out = ctx.paged ? ctx.paged->attend_mla(ctx.layer, q_lat, q_r, ctx.window, scale)
               : cb ? kernels::quantized_mla_decode_attention(q_lat, q_r.contiguous(), quantized_kv(*cb), quantized_kv(*kb),
                                                              ctx.start, ctx.slot_valid, ctx.window, scale)
                    : kernels::mla_decode_attention(q_lat, q_r, c, k_r, ctx.start, ctx.slot_valid, ctx.window, scale);
    if (split) out = out.narrow(-1, L - Lv, Lv);
    o_latent = out.reshape({B, n_kv_, g * T, Lv});
  } else {
    const int64_t S = c.size(1);
    auto c_k = kv_proj->key_part(c);    // [B, S, Lk]
    auto c_v = kv_proj->value_part(c);  // [B, S, Lv]
    auto scores_nope = kernels::matmul(q_nope_absorbed.reshape({B, n_h_ * T, Lk}), c_k.transpose(1, 2))
                           .view({B, n_kv_, g * T, S});                                         // [B, n_kv, g·T, S]
    auto scores_rope = kernels::matmul(q_r.reshape({B, n_kv_, g * T, r_}), k_r.transpose(2, 3));  // [B, n_kv, g·T, S]
    auto scores = (scores_nope + scores_rope) * scale;
    const auto& mask = ctx.mask();
    if (mask.defined())
      scores = (scores.view({B, n_kv_, g, T, S}) + mask.view({mask.size(0), 1, 1, T, S})).view({B, n_kv_, g * T, S});
    auto probs = torch::softmax(scores, -1, torch::kFloat32).to(c.scalar_type());
    o_latent = kernels::matmul(probs.view({B, n_h_ * T, S}), c_v).view({B, n_kv_, g * T, Lv});
  }
  auto o = kernels::matmul(o_latent, w_uv.transpose(1, 2));                                       // [B, n_kv, g·T, d_h]
  if (kv_proj->up_v->bias.defined()) o = o + kv_proj->up_v->bias.view({1, n_kv_, 1, d_h_});
  return o.view({B, n_h_, T, d_h_});
}

std::string MLAAttentionImpl::step_unsupported(const AttnContext& ctx, torch::ScalarType t) {
  if (!decodes_absorbed(ctx)) return "decodes MLA without absorbed weights";
  bool ok = streamable(k_r_proj, t);
  for (const auto* d : {&kv_proj->down_kv, &kv_proj->down_k, &kv_proj->down_v}) ok = ok && (!*d || streamable(*d, t));
  return ok ? "" : "has a matrix the GEMV cannot stream";
}

StepScratch MLAAttentionImpl::step_scratch() const {
  const int64_t Lat = kv_proj->latent_dim();
  // q (RoPE rows, then latent queries) | k_r | c; rotated RoPE queries; the latent output per head; cos/sin at
  // each KV head's kept dims.
  return {n_h_ * (r_ + Lat) + n_kv_ * r_ + Lat, n_h_ * r_, n_h_ * Lat, n_kv_ * 2 * r_};
}

// q (absorbed), k_r and c by one GEMV group; the RoPE rows of q and k_r rotated at each head's kept dims, c copied
// into its slot; every head scores against the one latent c and, for the RoPE part, its KV head's k_r.
void MLAAttentionImpl::plan_step(const StepIO& io, SlotBuffer& b0, SlotBuffer& b1, const AttnStepPlan& p) {
  const int64_t Hq = n_h_, Hkv = n_kv_, r = r_, g = Hq / Hkv, es = io.es, Lat = kv_proj->latent_dim();
  const auto& aw = absorbed_weights();  // rebuilt here, outside the step's parallel region, if a weight changed
  char *q = io.qkv, *kr = q + Hq * (r + Lat) * es, *c = kr + Hkv * r * es;
  p.qkv->add(step_gemv(aw.w_q, aw.b_q, io.dt, io.xn, q));
  p.qkv->add(step_gemv(k_r_proj, io.dt, io.xn, kr));
  const auto& kv = kv_proj;
  if (kv->down_kv) {
    p.qkv->add(step_gemv(kv->down_kv, io.dt, io.xn, c));
  } else {  // split latent: c = [c_k | c_v]
    p.qkv->add(step_gemv(kv->down_k, io.dt, io.xn, c));
    p.qkv->add(step_gemv(kv->down_v, io.dt, io.xn, c + kv->down_k->weight.size(0) * es));
  }
  p.o->add(step_gemv(aw.w_o, aw.b_o, io.dt, io.att, io.h, io.x));
  // cos/sin at each KV head's kept dims (query head j rotates as KV head j / g).
  char* csl = io.cs;
  const auto dims = k_dims_.accessor<int64_t, 2>();  // [Hkv, r]
  for (int64_t kh = 0; kh < Hkv; ++kh)
    for (int64_t e = 0; e < r; ++e) {
      std::memcpy(csl + (kh * 2 * r + e) * es, io.cos + dims[kh][e] * es, static_cast<size_t>(es));
      std::memcpy(csl + ((kh * 2 + 1) * r + e) * es, io.sin + dims[kh][e] * es, static_cast<size_t>(es));
    }
  auto cos_of = [&](int64_t kh) { return csl + kh * 2 * r * es; };
  auto sin_of = [&](int64_t kh) { return csl + (kh * 2 + 1) * r * es; };
  for (int64_t j = 0; j < Hq; ++j)
    p.rows->push_back({q + j * r * es, io.qr + j * r * es, cos_of(j / g), sin_of(j / g), r});
  for (int64_t j = 0; j < Hkv; ++j)
    p.rows->push_back({kr + j * r * es, slot_of(b1, j, io.slot, es), cos_of(j), sin_of(j), r});
  p.rows->push_back({c, slot_of(b0, 0, io.slot, es), nullptr, nullptr, Lat});
  auto& at = *p.attn;
  at.groups = 1, at.D1 = Lat, at.D2 = r, at.Dv = Lat;
  at.q1 = kernels::Operand{q + Hq * r * es, Hq * (r + Lat), Lat, Hq * (r + Lat)};
  at.q2 = kernels::Operand{io.qr, Hq * r, r, r};
  at.k1 = operand_of(b0, true);
  at.v = at.k1;
  at.k2 = operand_of(b1, false);
}

}  // namespace mha2mla::model
