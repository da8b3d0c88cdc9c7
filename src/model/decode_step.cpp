#include "model/decode_step.h"

#include <ATen/Parallel.h>
#include <omp.h>

#include <chrono>
#include <cmath>
#include <cstring>

#include "kernels/decode_splits.h"
#include "kernels/elementwise.h"
#include "kernels/gemv.h"
#include "kernels/storage_dtype.h"
#include "model/transformer.h"

namespace mha2mla::model {
namespace {

const GQAAttentionImpl* gqa_of(const TransformerImpl& m, int64_t layer) {
  return dynamic_cast<const GQAAttentionImpl*>(m.model->layers->at<DecoderLayerImpl>(layer).self_attn.get());
}

bool float_storage_of(CacheType c, torch::ScalarType t) {
  return (c == CacheType::F32 && t == torch::kFloat32) || (c == CacheType::BF16 && t == torch::kBFloat16) ||
         (c == CacheType::F16 && t == torch::kFloat16);
}

// A matrix the GEMV kernel can stream: rows contiguous, in the compute dtype (parameters always are, unless
// a caller swapped in a view of another layout).
bool streamable(const Dense& d, torch::ScalarType t) {
  return d->weight.scalar_type() == t && d->weight.dim() == 2 && d->weight.stride(1) == 1 &&
         (!d->bias.defined() || (d->bias.scalar_type() == t && d->bias.is_contiguous()));
}

kernels::GemvArgs gemv(const Dense& d, kernels::DType t, const void* x, void* y, const void* residual = nullptr) {
  kernels::GemvArgs a;
  a.dtype = t;
  a.n = 1, a.in = d->weight.size(1), a.x = x, a.w = d->weight.data_ptr(), a.w_stride = d->weight.stride(0);
  a.bias = d->bias.defined() ? d->bias.data_ptr() : nullptr;
  a.y = y, a.out = d->weight.size(0), a.residual = residual;
  return a;
}

void reset(kernels::GemvGroup& g, kernels::GemvRows rows) {
  g.rows = rows;
  g.args.clear();
  g.start.assign(1, 0);
}

// What one layer's step reads and writes; pointers into the weights, the cache and DecodeStep's scratch.
struct LayerPlan {
  const void* norm1 = nullptr;  // input_layernorm weight [d]
  const void* norm2 = nullptr;  // post_attention_layernorm weight [d]
  float eps1 = 0, eps2 = 0;
  kernels::GemvGroup qkv;       // xn -> q | k | v
  kernels::GemvGroup o;         // att -> h = x + o_proj(att)
  kernels::GemvGroup gate_up;   // xn -> gate | up
  kernels::GemvGroup down;      // act -> x = h + down_proj(act)
  kernels::AttnArgs attn;       // q (rotated) against the cached keys and values, this token's slot included
  char* k_slot = nullptr;       // this token's slot of KV head 0 in the k / v buffers
  char* v_slot = nullptr;
  int64_t k_head = 0, v_head = 0;  // bytes from one KV head's slot to the next
};

// Rebuilt at every step (weights may be reloaded and cache buffers move as they grow), into vectors kept per
// thread so that a warm step allocates nothing.
thread_local std::vector<LayerPlan> t_plans;

}  // namespace

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
  for (int64_t i = 0; i < m.config().num_layers; ++i) {
    const auto* a = gqa_of(m, i);
    const std::string layer = "layer " + std::to_string(i);
    if (!a) return layer + " is not MHA/GQA";
    if (a->q_norm) return layer + " normalises q and k per head";
    const auto& mlp = m.model->layers->at<DecoderLayerImpl>(i).mlp;
    for (const auto* d : {&a->q_proj, &a->k_proj, &a->v_proj, &a->o_proj, &mlp->gate_proj, &mlp->up_proj,
                          &mlp->down_proj})
      if (!streamable(*d, t)) return layer + " has a matrix the GEMV cannot stream";
    for (const auto& b : cache.layer(i))
      if (!float_storage_of(b.storage().type, t)) return "the cache is not stored in the compute dtype";
  }
  return "";
}

torch::Tensor DecodeStep::run(TransformerImpl& m, int64_t id, KVCache& cache, const AttnContext& ctx) {
  const auto& cfg = m.config();
  const int64_t L = cfg.num_layers, d = cfg.hidden_size, I = cfg.intermediate_size;
  const int64_t Hq = cfg.num_heads, Hkv = cfg.num_kv_heads, D = cfg.head_dim, qkv_n = (Hq + 2 * Hkv) * D;
  const auto dt = kernels::storage_dtype(m.dtype());
  const int64_t es = static_cast<int64_t>(c10::elementSize(m.dtype()));
  const int64_t threads = at::get_num_threads();
  const auto variant = kernels::resolve_variant(kernels::Variant::Auto);
  const auto rows = kernels::elementwise_rows(variant);
  const auto gemv_rows = kernels::gemv_rows_for(variant);
  const auto& kern = kernels::kernels_for(variant);

  // Scratch, compute dtype: x [d] (the residual stream), xn [d] (normed), h [d] (after attention),
  // qkv [(Hq + 2 Hkv) D], qr [Hq D] (rotated q), att [Hq D] (attention output, heads in o_proj's order),
  // gu [2 I] (gate | up), act [I].
  const int64_t need = 3 * d + qkv_n + 2 * Hq * D + 3 * I;
  if (!scratch_.defined() || scratch_.numel() < need || scratch_.scalar_type() != m.dtype())
    scratch_ = torch::empty({need}, torch::TensorOptions().dtype(m.dtype()));
  char* base = static_cast<char*>(scratch_.data_ptr());
  char* x = base;
  char* xn = x + d * es;
  char* h = xn + d * es;
  char* qkv = h + d * es;
  char* qr = qkv + qkv_n * es;
  char* att = qr + Hq * D * es;
  char* gu = att + Hq * D * es;
  char* act = gu + 2 * I * es;
  auto out = torch::empty({1, 1, d}, torch::TensorOptions().dtype(m.dtype()));

  const auto& emb = m.model->embed_tokens->weight;
  std::memcpy(x, static_cast<const char*>(emb.data_ptr()) + id * emb.stride(0) * es, static_cast<size_t>(d * es));
  const char* cos = static_cast<const char*>(ctx.cos.data_ptr());  // [1, 1, D]
  const char* sin = static_cast<const char*>(ctx.sin.data_ptr());
  auto valid = ctx.slot_valid.defined() ? ctx.slot_valid.contiguous() : torch::Tensor();  // [1, S] bool

  auto& plans = t_plans;
  plans.resize(static_cast<size_t>(L));
  for (int64_t i = 0; i < L; ++i) {
    auto& layer = m.model->layers->at<DecoderLayerImpl>(i);
    const auto* a = gqa_of(m, i);
    auto& p = plans[static_cast<size_t>(i)];
    p.norm1 = layer.input_layernorm->weight.data_ptr(), p.eps1 = static_cast<float>(layer.input_layernorm->eps);
    p.norm2 = layer.post_attention_layernorm->weight.data_ptr();
    p.eps2 = static_cast<float>(layer.post_attention_layernorm->eps);
    reset(p.qkv, gemv_rows);
    p.qkv.add(gemv(a->q_proj, dt, xn, qkv));
    p.qkv.add(gemv(a->k_proj, dt, xn, qkv + Hq * D * es));
    p.qkv.add(gemv(a->v_proj, dt, xn, qkv + (Hq + Hkv) * D * es));
    reset(p.o, gemv_rows);
    p.o.add(gemv(a->o_proj, dt, att, h, x));
    reset(p.gate_up, gemv_rows);
    p.gate_up.add(gemv(layer.mlp->gate_proj, dt, xn, gu));
    p.gate_up.add(gemv(layer.mlp->up_proj, dt, xn, gu + I * es));
    reset(p.down, gemv_rows);
    p.down.add(gemv(layer.mlp->down_proj, dt, act, x, h));

    auto& kb = cache.buffer(i, 0);
    auto& vb = cache.buffer(i, 1);
    kb.reserve(1);  // may move the buffer: pointers are taken after
    vb.reserve(1);
    const auto &kf = kb.full(), &vf = vb.full();  // [1, Hkv, capacity, D]
    p.k_slot = static_cast<char*>(kf.data_ptr()) + kb.tokens() * kf.stride(2) * es;
    p.v_slot = static_cast<char*>(vf.data_ptr()) + vb.tokens() * vf.stride(2) * es;
    p.k_head = kf.stride(1) * es, p.v_head = vf.stride(1) * es;
    auto& at = p.attn;
    at = kernels::AttnArgs{};
    at.dtype = dt;
    at.B = 1, at.Hq = Hq, at.Hkv = Hkv, at.groups = Hkv, at.T = 1, at.S = kb.tokens() + 1;
    at.D1 = D, at.Dv = D, at.start = ctx.start, at.window = ctx.window;
    at.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
    at.q1 = kernels::Operand{qr, Hq * D, D, D};
    at.k1 = kernels::Operand{kf.data_ptr(), kf.stride(0), kf.stride(1), kf.stride(2)};
    at.v = kernels::Operand{vf.data_ptr(), vf.stride(0), vf.stride(1), vf.stride(2)};
    at.valid = valid.defined() ? valid.data_ptr<bool>() : nullptr;
    at.out = att;
  }
  const auto splits = kernels::DecodeSplits::plan(plans[0].attn, threads);
  const size_t part = static_cast<size_t>(splits.partial_floats());
  if (partials_.size() < part + static_cast<size_t>((threads + 1) * D)) partials_.resize(part + (threads + 1) * D);

  // Counters per layer: the GEMV tails of qkv, o, gate_up and down, the next attention item, then one per
  // attention group (splits done).
  const int64_t per_layer = 5 + splits.groups;
  const size_t n_counters = static_cast<size_t>(L * per_layer);
  if (n_counters_ < n_counters) {
    counters_.reset(new std::atomic<int64_t>[n_counters]);
    n_counters_ = n_counters;
  }
  for (int64_t i = 0; i < L; ++i) {
    const auto& p = plans[static_cast<size_t>(i)];
    std::atomic<int64_t>* c = counters_.get() + i * per_layer;
    const kernels::GemvGroup* groups[4] = {&p.qkv, &p.o, &p.gate_up, &p.down};
    for (int g = 0; g < 4; ++g) c[g].store(groups[g]->tail_start(groups[g]->threads(threads)), std::memory_order_relaxed);
    for (int64_t j = 4; j < per_layer; ++j) c[j].store(0, std::memory_order_relaxed);
  }

  const void* final_w = m.model->norm->weight.data_ptr();
  const float final_eps = static_cast<float>(m.model->norm->eps);
  void* out_p = out.data_ptr();
  double attn_seconds = 0;
  const bool timed = ctx.attn_seconds != nullptr;
  float* partials = partials_.data();
  float* merge_scratch = partials + part;
  using Clock = std::chrono::steady_clock;

#pragma omp parallel num_threads(static_cast<int>(threads))
  {
    // The plans were made for `threads` threads; a smaller team (nested or throttled) takes over the shares
    // of the missing ones, so the results stay the same.
    const int64_t tid = omp_get_thread_num(), team = omp_get_num_threads();
    auto gemv_phase = [&](const kernels::GemvGroup& g, std::atomic<int64_t>& next) {
      const int64_t k = g.threads(threads);
      for (int64_t s = tid; s < k; s += team) g.run_thread(s, k, next);
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
      // RoPE of the q heads into qr, of the k heads straight into their cache slot; v copied to its slot.
      for (int64_t j = tid; j < Hq + 2 * Hkv; j += team) {
        if (j < Hq) {
          kernels::rope_row(dt, qkv + j * D * es, cos, sin, qr + j * D * es, D);
        } else if (j < Hq + Hkv) {
          kernels::rope_row(dt, qkv + j * D * es, cos, sin, p.k_slot + (j - Hq) * p.k_head, D);
        } else {
          std::memcpy(p.v_slot + (j - Hq - Hkv) * p.v_head, qkv + j * D * es, static_cast<size_t>(D * es));
        }
      }
#pragma omp barrier
      for (int64_t item; (item = c[4].fetch_add(1)) < splits.items();)
        splits.run(p.attn, kern, item, partials, c + 5, merge_scratch + std::min(tid, threads) * D);
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
