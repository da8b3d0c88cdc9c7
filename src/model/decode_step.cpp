#include "model/decode_step.h"

#include <ATen/Parallel.h>
#include <omp.h>

#include <chrono>
#include <cmath>
#include <cstring>

#include "kernels/cpu_kernels.h"
#include "kernels/decode_splits.h"
#include "kernels/elementwise.h"
#include "kernels/gemv.h"
#include "kernels/storage_dtype.h"
#include "model/mla_attention.h"
#include "model/transformer.h"

namespace mha2mla::model {
namespace {

const GQAAttentionImpl* gqa_of(const TransformerImpl& m, int64_t layer) {
  return dynamic_cast<const GQAAttentionImpl*>(m.model->layers->at<DecoderLayerImpl>(layer).self_attn.get());
}

MLAAttentionImpl* mla_of(const TransformerImpl& m, int64_t layer) {
  return dynamic_cast<MLAAttentionImpl*>(m.model->layers->at<DecoderLayerImpl>(layer).self_attn.get());
}

// A matrix the GEMV kernel can stream: rows contiguous, in the compute dtype (parameters always are, unless
// a caller swapped in a view of another layout).
bool streamable(const Dense& d, torch::ScalarType t) {
  return d->weight.scalar_type() == t && d->weight.dim() == 2 && d->weight.stride(1) == 1 &&
         (!d->bias.defined() || (d->bias.scalar_type() == t && d->bias.is_contiguous()));
}

kernels::GemvArgs gemv(const torch::Tensor& w, const torch::Tensor& b, kernels::DType t, const void* x, void* y,
                       const void* residual = nullptr) {
  return kernels::gemv_args(t, 1, x, w, b.defined() ? b.data_ptr() : nullptr, y, residual);
}
kernels::GemvArgs gemv(const Dense& d, kernels::DType t, const void* x, void* y, const void* residual = nullptr) {
  return gemv(d->weight, d->bias, t, x, y, residual);
}

void reset(kernels::GemvGroup& g, kernels::GemvRows rows) {
  g.rows = rows;
  g.args.clear();
  g.start.assign(1, 0);
}

// One row of the step between the projections and attention: a head of q or k rotated (into scratch or straight
// into its cache slot), or a row copied into its cache slot (v, the MLA latent).
struct RowOp {
  const char* src;
  char* dst;
  const char* cos;  // null: a plain copy
  const char* sin;
  int64_t width;
};

// What one layer's step reads and writes; pointers into the weights, the cache and DecodeStep's scratch.
struct LayerPlan {
  const void* norm1 = nullptr;  // input_layernorm weight [d]
  const void* norm2 = nullptr;  // post_attention_layernorm weight [d]
  float eps1 = 0, eps2 = 0;
  kernels::GemvGroup qkv;       // xn -> the projections attention needs (GQA: q | k | v; MLA: q | k_r | c)
  std::vector<RowOp> rows;      // RoPE and cache appends
  kernels::AttnArgs attn;       // the rotated queries against the cache, this token's slot included
  kernels::DecodeSplits splits;
  kernels::GemvGroup o;         // att -> h = x + o_proj(att)
  kernels::GemvGroup gate_up;   // xn -> gate | up
  kernels::GemvGroup down;      // act -> x = h + down_proj(act)
};

// Slot `slot` of head h of a float cache buffer [1, heads, capacity, width].
char* slot_of(const SlotBuffer& b, int64_t h, int64_t slot, int64_t es) {
  const auto& f = b.full();
  return static_cast<char*>(f.data_ptr()) + (h * f.stride(1) + slot * f.stride(2)) * es;
}

kernels::Operand operand_of(const SlotBuffer& b, bool shared_head) {
  const auto& f = b.full();
  return kernels::Operand{f.data_ptr(), f.stride(0), shared_head ? 0 : f.stride(1), f.stride(2)};
}

}  // namespace

struct DecodeStep::Plans {
  std::vector<LayerPlan> layers;
};

DecodeStep::DecodeStep() : plans_(std::make_unique<Plans>()) {}
DecodeStep::~DecodeStep() = default;

std::string DecodeStep::unsupported(const TransformerImpl& m, const KVCache& cache, const AttnContext& ctx) {
  if (!ctx.device.is_cpu()) return "the model is not on the CPU";
  if (!ctx.fused) return "the reference attention or autograd is on";
  if (cache.batch() != 1) return "the batch has " + std::to_string(cache.batch()) + " rows";
  if (m.attn_input_hook) return "an attention-input hook is set";
  const auto v = kernels::resolve_variant(kernels::Variant::Auto);
  if (v == kernels::Variant::Reference) return "the kernels are the libtorch reference";
  const auto t = m.dtype();
  if (t != torch::kFloat32 && t != torch::kBFloat16 && t != torch::kFloat16) return "the dtype has no kernels";
  if (m.config().head_dim % 2 != 0) return "the head dimension is odd";
  if (m.model->embed_tokens->weight.stride(1) != 1) return "the embedding rows are not contiguous";
  // Runs before every step: no allocation unless it fails.
  auto layer = [](int64_t i) { return "layer " + std::to_string(i); };
  for (int64_t i = 0; i < m.config().num_layers; ++i) {
    const auto& mlp = m.model->layers->at<DecoderLayerImpl>(i).mlp;
    bool ok = streamable(mlp->gate_proj, t) && streamable(mlp->up_proj, t) && streamable(mlp->down_proj, t);
    if (const auto* a = gqa_of(m, i)) {
      if (a->q_norm) return layer(i) + " normalises q and k per head";
      ok = ok && streamable(a->q_proj, t) && streamable(a->k_proj, t) && streamable(a->v_proj, t) &&
           streamable(a->o_proj, t);
    } else if (const auto* a = mla_of(m, i)) {
      AttnContext c = ctx;
      c.cache = const_cast<KVCache*>(&cache);
      if (!a->decodes_absorbed(c)) return layer(i) + " decodes MLA without absorbed weights";
      const auto& kv = a->kv_proj;
      ok = ok && streamable(a->k_r_proj, t);
      for (const auto* d : {&kv->down_kv, &kv->down_k, &kv->down_v}) ok = ok && (!*d || streamable(*d, t));
    } else {
      return layer(i) + " is neither MHA/GQA nor MLA";
    }
    if (!ok) return layer(i) + " has a matrix the GEMV cannot stream";
    for (const auto& b : cache.layer(i))
      if (b.storage().type != compute_cache_type(t)) return "the cache is not stored in the compute dtype";
  }
  return "";
}

torch::Tensor DecodeStep::run(TransformerImpl& m, int64_t id, KVCache& cache, const AttnContext& ctx) {
  const auto& cfg = m.config();
  const int64_t L = cfg.num_layers, d = cfg.hidden_size, I = cfg.intermediate_size;
  const int64_t Hq = cfg.num_heads, Hkv = cfg.num_kv_heads, D = cfg.head_dim, g = Hq / Hkv;
  const bool mla = cfg.is_mla;
  const int64_t r = mla ? cfg.mla.rope_dim : 0, Lat = mla ? cfg.mla.latent_dim(Hkv, D) : 0;
  const auto dt = kernels::storage_dtype(m.dtype());
  const int64_t es = static_cast<int64_t>(c10::elementSize(m.dtype()));
  const int64_t threads = at::get_num_threads();
  const auto variant = kernels::resolve_variant(kernels::Variant::Auto);
  const auto& cpu = kernels::cpu_kernels(variant);  // the variant's one row of kernels
  const auto rows = cpu.rows;
  const auto gemv_rows = cpu.gemv;
  const auto& kern = *cpu.attn;

  // Scratch, compute dtype: x [d] (the residual stream), xn [d] (normed), h [d] (after attention), the
  // projections qkv (GQA: q | k | v, [(Hq + 2 Hkv) D]; MLA: q (RoPE rows, then latent queries) | k_r | c,
  // [Hq (r + Lat) + Hkv r + Lat]), qr (rotated queries, [Hq D] or [Hq r]), att (attention output in o_proj's
  // order, [Hq D] or [Hq Lat]), gu [2 I] (gate | up), act [I], and for MLA each layer's cos/sin gathered at
  // its kept RoPE dims, [L][Hkv][2][r].
  const int64_t qkv_n = mla ? Hq * (r + Lat) + Hkv * r + Lat : (Hq + 2 * Hkv) * D;
  const int64_t qr_n = mla ? Hq * r : Hq * D, att_n = mla ? Hq * Lat : Hq * D, cs_n = mla ? L * Hkv * 2 * r : 0;
  const int64_t need = 3 * d + qkv_n + qr_n + att_n + 3 * I + cs_n;
  if (!scratch_.defined() || scratch_.numel() < need || scratch_.scalar_type() != m.dtype())
    scratch_ = torch::empty({need}, torch::TensorOptions().dtype(m.dtype()));
  char* x = static_cast<char*>(scratch_.data_ptr());
  char* xn = x + d * es;
  char* h = xn + d * es;
  char* qkv = h + d * es;
  char* qr = qkv + qkv_n * es;
  char* att = qr + qr_n * es;
  char* gu = att + att_n * es;
  char* act = gu + 2 * I * es;
  char* cs = act + I * es;
  auto out = torch::empty({1, 1, d}, torch::TensorOptions().dtype(m.dtype()));

  const auto& emb = m.model->embed_tokens->weight;
  std::memcpy(x, static_cast<const char*>(emb.data_ptr()) + id * emb.stride(0) * es, static_cast<size_t>(d * es));
  const char* cos = static_cast<const char*>(ctx.cos.data_ptr());  // [1, 1, D]
  const char* sin = static_cast<const char*>(ctx.sin.data_ptr());
  auto valid = ctx.slot_valid.defined() ? ctx.slot_valid.contiguous() : torch::Tensor();  // [1, S] bool
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));

  auto& plans = plans_->layers;
  plans.resize(static_cast<size_t>(L));
  int64_t max_groups = 1;
  size_t max_partials = 0;
  for (int64_t i = 0; i < L; ++i) {
    auto& layer = m.model->layers->at<DecoderLayerImpl>(i);
    auto& p = plans[static_cast<size_t>(i)];
    p.norm1 = layer.input_layernorm->weight.data_ptr(), p.eps1 = static_cast<float>(layer.input_layernorm->eps);
    p.norm2 = layer.post_attention_layernorm->weight.data_ptr();
    p.eps2 = static_cast<float>(layer.post_attention_layernorm->eps);
    reset(p.qkv, gemv_rows);
    reset(p.o, gemv_rows);
    reset(p.gate_up, gemv_rows);
    p.gate_up.add(gemv(layer.mlp->gate_proj, dt, xn, gu));
    p.gate_up.add(gemv(layer.mlp->up_proj, dt, xn, gu + I * es));
    reset(p.down, gemv_rows);
    p.down.add(gemv(layer.mlp->down_proj, dt, act, x, h));
    p.rows.clear();

    auto& b0 = cache.buffer(i, 0);  // GQA: k; MLA: c
    auto& b1 = cache.buffer(i, 1);  // GQA: v; MLA: k_r
    b0.reserve(1);  // may move the buffer: pointers are taken after
    b1.reserve(1);
    const int64_t slot = b0.tokens();
    auto& at = p.attn;
    at = kernels::AttnArgs{};
    at.dtype = dt;
    at.B = 1, at.Hq = Hq, at.Hkv = Hkv, at.T = 1, at.S = slot + 1;
    at.start = ctx.start, at.window = ctx.window, at.scale = scale;
    at.valid = valid.defined() ? valid.data_ptr<bool>() : nullptr;
    at.out = att;
    if (!mla) {
      const auto* a = gqa_of(m, i);
      char *q = qkv, *k = q + Hq * D * es, *v = k + Hkv * D * es;
      p.qkv.add(gemv(a->q_proj, dt, xn, q));
      p.qkv.add(gemv(a->k_proj, dt, xn, k));
      p.qkv.add(gemv(a->v_proj, dt, xn, v));
      p.o.add(gemv(a->o_proj, dt, att, h, x));
      for (int64_t j = 0; j < Hq; ++j) p.rows.push_back({q + j * D * es, qr + j * D * es, cos, sin, D});
      for (int64_t j = 0; j < Hkv; ++j) p.rows.push_back({k + j * D * es, slot_of(b0, j, slot, es), cos, sin, D});
      for (int64_t j = 0; j < Hkv; ++j) p.rows.push_back({v + j * D * es, slot_of(b1, j, slot, es), nullptr, nullptr, D});
      at.groups = Hkv, at.D1 = D, at.Dv = D;
      at.q1 = kernels::Operand{qr, Hq * D, D, D};
      at.k1 = operand_of(b0, false);
      at.v = operand_of(b1, false);
    } else {
      auto* a = mla_of(m, i);
      const auto& aw = a->absorbed_weights();  // rebuilt here, outside the region, if a source weight changed
      char *q = qkv, *kr = q + Hq * (r + Lat) * es, *c = kr + Hkv * r * es;
      p.qkv.add(gemv(aw.w_q, aw.b_q, dt, xn, q));
      p.qkv.add(gemv(a->k_r_proj, dt, xn, kr));
      const auto& kv = a->kv_proj;
      if (kv->down_kv) {
        p.qkv.add(gemv(kv->down_kv, dt, xn, c));
      } else {  // split latent: c = [c_k | c_v]
        p.qkv.add(gemv(kv->down_k, dt, xn, c));
        p.qkv.add(gemv(kv->down_v, dt, xn, c + kv->down_k->weight.size(0) * es));
      }
      p.o.add(gemv(aw.w_o, aw.b_o, dt, att, h, x));
      // cos/sin at each KV head's kept dims (query head j rotates as KV head j / g).
      char* csl = cs + i * Hkv * 2 * r * es;
      const auto dims = a->k_rope_dims().accessor<int64_t, 2>();  // [Hkv, r]
      for (int64_t kh = 0; kh < Hkv; ++kh)
        for (int64_t e = 0; e < r; ++e) {
          std::memcpy(csl + (kh * 2 * r + e) * es, cos + dims[kh][e] * es, static_cast<size_t>(es));
          std::memcpy(csl + ((kh * 2 + 1) * r + e) * es, sin + dims[kh][e] * es, static_cast<size_t>(es));
        }
      auto cos_of = [&](int64_t kh) { return csl + kh * 2 * r * es; };
      auto sin_of = [&](int64_t kh) { return csl + (kh * 2 + 1) * r * es; };
      for (int64_t j = 0; j < Hq; ++j) p.rows.push_back({q + j * r * es, qr + j * r * es, cos_of(j / g), sin_of(j / g), r});
      for (int64_t j = 0; j < Hkv; ++j) p.rows.push_back({kr + j * r * es, slot_of(b1, j, slot, es), cos_of(j), sin_of(j), r});
      p.rows.push_back({c, slot_of(b0, 0, slot, es), nullptr, nullptr, Lat});
      // Every head scores against the one latent c; the RoPE part against its KV head's k_r.
      at.groups = 1, at.D1 = Lat, at.D2 = r, at.Dv = Lat;
      at.q1 = kernels::Operand{q + Hq * r * es, Hq * (r + Lat), Lat, Hq * (r + Lat)};
      at.q2 = kernels::Operand{qr, Hq * r, r, r};
      at.k1 = operand_of(b0, true);
      at.v = at.k1;
      at.k2 = operand_of(b1, false);
    }
    p.splits = kernels::DecodeSplits::plan(at, threads);
    max_groups = std::max(max_groups, p.splits.groups);
    max_partials = std::max(max_partials, static_cast<size_t>(p.splits.partial_floats()));
  }
  const int64_t Dv = mla ? Lat : D;
  if (partials_.size() < max_partials + static_cast<size_t>((threads + 1) * Dv))
    partials_.resize(max_partials + static_cast<size_t>((threads + 1) * Dv));

  // Counters per layer: the GEMV tails of qkv, o, gate_up and down, the next attention item, then one per
  // attention group (splits done).
  const int64_t per_layer = 5 + max_groups;
  const size_t n_counters = static_cast<size_t>(L * per_layer);
  if (n_counters_ < n_counters) {
    counters_.reset(new std::atomic<int64_t>[n_counters]);
    n_counters_ = n_counters;
  }
  for (int64_t i = 0; i < L; ++i) {
    const auto& p = plans[static_cast<size_t>(i)];
    std::atomic<int64_t>* c = counters_.get() + i * per_layer;
    const kernels::GemvGroup* groups[4] = {&p.qkv, &p.o, &p.gate_up, &p.down};
    for (int k = 0; k < 4; ++k) c[k].store(groups[k]->next_start(threads), std::memory_order_relaxed);
    for (int64_t j = 4; j < per_layer; ++j) c[j].store(0, std::memory_order_relaxed);
  }

  const void* final_w = m.model->norm->weight.data_ptr();
  const float final_eps = static_cast<float>(m.model->norm->eps);
  void* out_p = out.data_ptr();
  double attn_seconds = 0;
  const bool timed = ctx.attn_seconds != nullptr;
  float* partials = partials_.data();
  float* merge_scratch = partials + max_partials;
  using Clock = std::chrono::steady_clock;

#pragma omp parallel num_threads(static_cast<int>(threads))
  {
    // The plans were made for `threads` threads; a smaller team (nested or throttled) takes over the shares
    // of the missing ones, so the results stay the same.
    const int64_t tid = omp_get_thread_num(), team = omp_get_num_threads();
    auto gemv_phase = [&](const kernels::GemvGroup& grp, std::atomic<int64_t>& next) {
      grp.run_team(tid, team, threads, next);
    };
    Clock::time_point t0;
    for (int64_t i = 0; i < L; ++i) {
      const auto& p = plans[static_cast<size_t>(i)];
      std::atomic<int64_t>* c = counters_.get() + i * per_layer;
      if (tid == 0) rows.rms_norm(dt, x, p.norm1, xn, d, p.eps1);
#pragma omp barrier
      gemv_phase(p.qkv, c[0]);
#pragma omp barrier
      if (timed && tid == 0) t0 = Clock::now();
      const int64_t n_rows = static_cast<int64_t>(p.rows.size());
      for (int64_t j = tid; j < n_rows; j += team) {
        const RowOp& op = p.rows[static_cast<size_t>(j)];
        if (op.cos) kernels::rope_row(dt, op.src, op.cos, op.sin, op.dst, op.width);
        else std::memcpy(op.dst, op.src, static_cast<size_t>(op.width * es));
      }
#pragma omp barrier
      for (int64_t item; (item = c[4].fetch_add(1)) < p.splits.items();)
        p.splits.run(p.attn, kern, item, partials, c + 5, merge_scratch + std::min(tid, threads) * Dv);
#pragma omp barrier
      if (timed && tid == 0) attn_seconds += std::chrono::duration<double>(Clock::now() - t0).count();
      gemv_phase(p.o, c[1]);
#pragma omp barrier
      if (tid == 0) rows.rms_norm(dt, h, p.norm2, xn, d, p.eps2);
#pragma omp barrier
      gemv_phase(p.gate_up, c[2]);
#pragma omp barrier
      {
        const int64_t per = (I + team - 1) / team, i0 = std::min(I, tid * per), i1 = std::min(I, i0 + per);
        if (i0 < i1) rows.silu_mul(dt, gu + i0 * es, gu + (I + i0) * es, act + i0 * es, i1 - i0);
      }
#pragma omp barrier
      gemv_phase(p.down, c[3]);
#pragma omp barrier
    }
    if (tid == 0) rows.rms_norm(dt, x, final_w, out_p, d, final_eps);
  }

  for (int64_t i = 0; i < L; ++i) {
    cache.buffer(i, 0).advance(1);
    cache.buffer(i, 1).advance(1);
  }
  if (timed) *ctx.attn_seconds += attn_seconds;
  return out;
}

}  // namespace mha2mla::model
