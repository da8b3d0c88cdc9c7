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
#include "model/step_plan.h"
#include "model/transformer.h"

namespace mha2mla::model {
namespace {

AttentionImpl& attention_of(const TransformerImpl& m, int64_t layer) {
  return *m.model->layers->at<DecoderLayerImpl>(layer).self_attn;
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
  kernels::GemvGroup qkv;       // xn -> the projections attention needs (GQA: q | k | v; MLA: q | k_r | c)
  std::vector<RowOp> rows;      // RoPE and cache appends
  kernels::AttnArgs attn;       // the rotated queries against the cache, this token's slot included
  kernels::DecodeSplits splits;
  kernels::GemvGroup o;         // att -> h = x + o_proj(att)
  kernels::GemvGroup gate_up;   // xn -> gate | up
  kernels::GemvGroup down;      // act -> x = h + down_proj(act)
};

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
  AttnContext c = ctx;
  c.cache = const_cast<KVCache*>(&cache);
  for (int64_t i = 0; i < m.config().num_layers; ++i) {
    const auto& mlp = m.model->layers->at<DecoderLayerImpl>(i).mlp;
    if (!streamable(mlp->gate_proj, t) || !streamable(mlp->up_proj, t) || !streamable(mlp->down_proj, t))
      return layer(i) + " has a matrix the GEMV cannot stream";
    c.layer = i;
    if (auto why = attention_of(m, i).step_unsupported(c, t); !why.empty()) return layer(i) + " " + why;
    if (cache.layer(i).size() != 2) return layer(i) + " caches " + std::to_string(cache.layer(i).size()) + " buffers";
    for (const auto& b : cache.layer(i))
      if (b.storage().type != compute_cache_type(t)) return "the cache is not stored in the compute dtype";
  }
  return "";
}

torch::Tensor DecodeStep::run(TransformerImpl& m, int64_t id, KVCache& cache, const AttnContext& ctx) {
  const auto& cfg = m.config();
  const int64_t L = cfg.num_layers, d = cfg.hidden_size, I = cfg.intermediate_size;
  const int64_t Hq = cfg.num_heads, Hkv = cfg.num_kv_heads, D = cfg.head_dim;
  const auto dt = kernels::storage_dtype(m.dtype());
  const int64_t es = static_cast<int64_t>(c10::elementSize(m.dtype()));
  const int64_t threads = at::get_num_threads();
  const auto variant = kernels::resolve_variant(kernels::Variant::Auto);
  const auto& cpu = kernels::cpu_kernels(variant);  // the variant's one row of kernels
  const auto rows = cpu.rows;
  const auto gemv_rows = cpu.gemv;
  const auto& kern = *cpu.attn;

  // Scratch, compute dtype: x [d] (the residual stream), xn [d] (normed), h [d] (after attention), then what the
  // layers' attentions ask for (StepScratch: their projections qkv, rotated queries qr and output att, shared by
  // the layers, the largest of each), gu [2 I] (gate | up), act [I], and the attentions' cos/sin, a slab per layer.
  StepScratch need_attn;
  cs_at_.assign(static_cast<size_t>(L) + 1, 0);  // layer i's cos/sin slab: [cs_at_[i], cs_at_[i + 1])
  for (int64_t i = 0; i < L; ++i) {
    const auto s = attention_of(m, i).step_scratch();
    need_attn.qkv = std::max(need_attn.qkv, s.qkv);
    need_attn.qr = std::max(need_attn.qr, s.qr);
    need_attn.att = std::max(need_attn.att, s.att);
    cs_at_[static_cast<size_t>(i) + 1] = cs_at_[static_cast<size_t>(i)] + s.cs;
  }
  const int64_t need = 3 * d + need_attn.qkv + need_attn.qr + need_attn.att + 3 * I + cs_at_.back();
  if (!scratch_.defined() || scratch_.numel() < need || scratch_.scalar_type() != m.dtype())
    scratch_ = torch::empty({need}, torch::TensorOptions().dtype(m.dtype()));
  char* x = static_cast<char*>(scratch_.data_ptr());
  char* xn = x + d * es;
  char* h = xn + d * es;
  char* qkv = h + d * es;
  char* qr = qkv + need_attn.qkv * es;
  char* att = qr + need_attn.qr * es;
  char* gu = att + need_attn.att * es;
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
  int64_t max_groups = 1, Dv = 1;
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
    p.gate_up.add(step_gemv(layer.mlp->gate_proj, dt, xn, gu));
    p.gate_up.add(step_gemv(layer.mlp->up_proj, dt, xn, gu + I * es));
    reset(p.down, gemv_rows);
    p.down.add(step_gemv(layer.mlp->down_proj, dt, act, x, h));
    p.rows.clear();

    auto& b0 = cache.buffer(i, 0);  // GQA: k; MLA: c
    auto& b1 = cache.buffer(i, 1);  // GQA: v; MLA: k_r
    b0.reserve(1);  // may move the buffer: pointers are taken after
    b1.reserve(1);
    const int64_t slot = b0.tokens();
    auto& at = p.attn;
    at = kernels::AttnArgs{};
    at.dtype = at.kv_dtype = dt;  // step_unsupported: the cache is stored in the compute dtype
    at.B = 1, at.Hq = Hq, at.Hkv = Hkv, at.T = 1, at.S = slot + 1;
    at.start = ctx.start, at.window = ctx.window, at.scale = scale;
    at.valid = valid.defined() ? valid.data_ptr<bool>() : nullptr;
    at.out = att;
    StepIO io;
    io.dt = dt, io.es = es, io.xn = xn, io.x = x, io.h = h;
    io.qkv = qkv, io.qr = qr, io.att = att, io.cs = cs + cs_at_[static_cast<size_t>(i)] * es;
    io.cos = cos, io.sin = sin, io.slot = slot;
    layer.self_attn->plan_step(io, b0, b1, AttnStepPlan{&p.qkv, &p.o, &p.rows, &at});
    p.splits = kernels::DecodeSplits::plan(at, threads);
    max_groups = std::max(max_groups, p.splits.groups);
    max_partials = std::max(max_partials, static_cast<size_t>(p.splits.partial_floats()));
    Dv = std::max(Dv, at.Dv);
  }
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
