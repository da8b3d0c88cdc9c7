#include "model/transformer.h"

#include <filesystem>
#include <set>
#include <sstream>

#include "kernels/gemv.h"
#include "model/execution_plan.h"
#include "model/rope.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/text.h"

namespace mha2mla::model {
namespace {

}  // namespace

DecoderLayerImpl::DecoderLayerImpl(const io::ModelConfig& c, int64_t layer, const torch::TensorOptions& opt) {
  self_attn = register_module("self_attn", make_attention(c, layer, opt));
  mlp = register_module("mlp", MLP(c.hidden_size, c.intermediate_size, c.mlp_bias, opt));
  input_layernorm = register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps, opt));
  post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps, opt));
}

torch::Tensor DecoderLayerImpl::forward(const torch::Tensor& x, const AttnContext& ctx) {
  auto xn = input_layernorm(x);
  if (ctx.on_attn_input && *ctx.on_attn_input) (*ctx.on_attn_input)(ctx.layer, xn);
  auto h = self_attn->forward(xn, ctx, x);  // x + attention(xn)
  return mlp->forward(post_attention_layernorm(h), h);
}

BackboneImpl::BackboneImpl(const io::ModelConfig& c, const torch::TensorOptions& opt) {
  embed_tokens = register_module("embed_tokens", Embedding(c.vocab_size, c.hidden_size, opt));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_layers; ++i) layers->push_back(DecoderLayer(c, i, opt));
  norm = register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps, opt));
}

TransformerImpl::TransformerImpl(const io::ModelConfig& cfg, torch::ScalarType dtype, torch::Device device)
    : cfg_(cfg), dtype_(dtype), device_(device) {
  runtime_.dtype = dtype;
  runtime_.device = device;
  auto opt = torch::TensorOptions().dtype(dtype).device(device);
  model = register_module("model", Backbone(cfg, opt));
  if (!cfg.tie_word_embeddings) lm_head = register_module("lm_head", Dense(cfg.hidden_size, cfg.vocab_size, false, opt));
  inv_freq_ = rope_inv_freq(cfg).to(device);
}

const torch::Tensor& TransformerImpl::lm_head_weight() const {
  return lm_head ? lm_head->weight : model->embed_tokens->weight;
}

std::vector<std::vector<BufferSpec>> TransformerImpl::cache_specs() const {
  std::vector<std::vector<BufferSpec>> specs;
  for (int64_t i = 0; i < cfg_.num_layers; ++i) specs.push_back(model->layers->at<DecoderLayerImpl>(i).self_attn->cache_spec());
  return specs;
}

std::unique_ptr<KVCache> TransformerImpl::make_cache(int64_t batch, const CacheOptions& opt) const {
  return std::make_unique<KVCache>(batch, cache_specs(), opt, dtype_, device_);
}

void check_token_ids(const torch::Tensor& ids, int64_t vocab_size) {
  if (ids.numel() == 0) return;
  auto h = ids.to(torch::kCPU, torch::kInt64);
  const int64_t mx = h.max().item<int64_t>(), mn = h.min().item<int64_t>();
  check(mn >= 0 && mx < vocab_size, "token id " + std::to_string(mn < 0 ? mn : mx) +
                                        " is outside the vocabulary (size " + std::to_string(vocab_size) + ")");
}

AttnContext TransformerImpl::context(int64_t B, int64_t T, KVCache* cache, const torch::Tensor& valid) {
  AttnContext ctx;
  ctx.on_attn_input = &attn_input_hook;
  ctx.attn = runtime_.attn;
  ctx.attn_seconds = attn_seconds;
  // The fused kernels have no backward: autograd (training) takes the reference.
  ctx.fused = !runtime_.reference_attention && !torch::GradMode::is_enabled();
  // Positions are counted on the host, where the validity flags arrive, then copied to the device.
  torch::Tensor positions, slots_valid;
  bool all_valid = true;
  int64_t last_pos = T - 1;
  if (cache) {
    check(cache->batch() == B, "cache batch size does not match the input");
    ctx.start = cache->filled();
    auto v = valid.defined() ? valid.to(torch::kCPU, torch::kBool) : torch::ones({B, T}, torch::kBool);
    last_pos = (cache->next_positions() + v.to(torch::kInt64).sum(1)).max().item<int64_t>() - 1;
    positions = cache->begin_step(v);
    slots_valid = cache->valid();
    all_valid = cache->all_valid();
    ctx.cache = cache;
  } else if (valid.defined()) {
    auto v = valid.to(torch::kCPU, torch::kBool);
    auto pos = (v.to(torch::kInt64).cumsum(1) - 1).clamp_min(0);
    last_pos = pos.max().item<int64_t>();
    positions = pos.to(device_);
    slots_valid = v;
    all_valid = v.all().item<bool>();
  } else {
    positions = torch::arange(T, torch::TensorOptions().dtype(torch::kInt64).device(device_)).unsqueeze(0).expand({B, T});
  }
  check(last_pos < cfg_.max_position_embeddings,
        "sequence position " + std::to_string(last_pos) + " exceeds max_position_embeddings (" +
            std::to_string(cfg_.max_position_embeddings) + ")");
  // A single new token with all slots valid sees everything: no mask needed.
  ctx.need_mask = !ctx.fused &&
                  (T > 1 || !all_valid || (cfg_.sliding_window > 0 && ctx.start + T > cfg_.sliding_window));
  if (!all_valid) ctx.slot_valid = slots_valid.to(device_);
  ctx.window = cfg_.sliding_window;
  ctx.causal = !cache && all_valid && (ctx.window <= 0 || T <= ctx.window);
  ctx.new_tokens = T, ctx.dtype = dtype_, ctx.device = device_;
  std::tie(ctx.cos, ctx.sin) = rope_cos_sin(inv_freq_, positions, dtype_);
  return ctx;
}

torch::Tensor TransformerImpl::hidden(const torch::Tensor& ids, KVCache* cache, const torch::Tensor& valid) {
  check(ids.dim() == 2, "token ids must be [batch, time]");
  const int64_t B = ids.size(0), T = ids.size(1);
  check(T > 0, "no tokens to run");
  // Ids still on the host are checked here at no cost; ids already on the device were checked by whoever put
  // them there (check_token_ids), so a decode step never waits for the device.
  if (ids.device().is_cpu()) check_token_ids(ids, cfg_.vocab_size);
  auto dev_ids = ids.to(device_, torch::kInt64);
  AttnContext ctx = context(B, T, cache, valid);

  if (cache && B == 1 && T == 1) {
    std::string why = runtime_.decode_step == DecodeStepMode::Fused ? DecodeStep::unsupported(*this, *cache, ctx)
                                                                    : "--decode-step layers";
    if (why.empty()) {
      if (!decode_step_) decode_step_ = std::make_unique<DecodeStep>();
      auto out = decode_step_->run(*this, dev_ids.item<int64_t>(), *cache, ctx);
      cache->end_step(T);
      ++fused_decode_steps;
      return out;
    }
    ++layer_decode_steps;
    layer_decode_reason = std::move(why);
  }
  auto h = model->embed_tokens(dev_ids);
  for (int64_t i = 0; i < cfg_.num_layers; ++i) {
    ctx.layer = i;
    h = model->layers->at<DecoderLayerImpl>(i).forward(h, ctx);
  }
  if (cache) cache->end_step(T);
  return model->norm(h);
}

static_assert(TransformerImpl::kMaxDecodeBatch <= kernels::kGemvMaxRows,
              "a batched step's matrices must go through the GEMV, whose rows do not depend on each other");

torch::Tensor TransformerImpl::decode_paged(const std::vector<int64_t>& ids, const PagedBatch& batch) {
  const int64_t B = static_cast<int64_t>(ids.size());
  check(B > 0 && B <= kMaxDecodeBatch && batch.seqs.size() == ids.size() && batch.pool,
        "decode_paged: 1 to " + std::to_string(kMaxDecodeBatch) + " sequences of one pool");
  check(!runtime_.reference_attention && !torch::GradMode::is_enabled(),
        "decode_paged: the paged cache runs the fused kernels (no --reference-attention, no autograd)");
  auto id_t = torch::tensor(ids, torch::kInt64).view({B, 1});
  check_token_ids(id_t, cfg_.vocab_size);
  std::vector<int64_t> pos;
  for (const auto* s : batch.seqs) {
    check(s->tokens() < s->capacity(), "decode_paged: a sequence has no room left in its blocks");
    check(s->tokens() < cfg_.max_position_embeddings,
          "sequence position " + std::to_string(s->tokens()) + " exceeds max_position_embeddings (" +
              std::to_string(cfg_.max_position_embeddings) + ")");
    pos.push_back(s->tokens());
  }
  AttnContext ctx;
  ctx.attn = runtime_.attn;
  ctx.attn_seconds = attn_seconds;
  ctx.fused = true;
  ctx.paged = &batch;
  ctx.window = cfg_.sliding_window;
  ctx.new_tokens = 1, ctx.dtype = dtype_, ctx.device = device_;
  std::tie(ctx.cos, ctx.sin) = rope_cos_sin(inv_freq_, torch::tensor(pos, torch::kInt64).view({B, 1}).to(device_), dtype_);
  auto h = model->embed_tokens(id_t.to(device_));  // [B, 1, d]
  for (int64_t i = 0; i < cfg_.num_layers; ++i) {
    ctx.layer = i;
    h = model->layers->at<DecoderLayerImpl>(i).forward(h, ctx);
  }
  for (auto* s : batch.seqs) s->end_step();
  return model->norm(h);
}

std::unique_ptr<BlockPool> TransformerImpl::make_block_pool(int64_t blocks, int64_t block_tokens) const {
  return std::make_unique<BlockPool>(cache_specs(), runtime_.cache, dtype_, device_, blocks, block_tokens);
}

torch::Tensor TransformerImpl::logits(const torch::Tensor& hidden) {
  // At decode the head is a GEMV over the largest matrix of a small model (SmolLM-135M: 21 % of the weights):
  // the kernel streams it about 3x faster than torch::linear (build/bench_kernels --only gemv, lm_head).
  return kernels::linear(hidden, lm_head_weight(), {}).to(torch::kFloat32);
}

void load_weights(TransformerImpl& m, const io::Checkpoint& ckpt) {
  torch::NoGradGuard ng;
  std::set<std::string> expected;
  for (auto& kv : m.named_parameters(/*recurse=*/true)) {
    const std::string& name = kv.key();
    expected.insert(name);
    if (!ckpt.has(name)) fail("missing tensor " + name + " in " + ckpt.path());
    auto src = ckpt.get_float(name);  // an integer or bool tensor is a different file, not something to cast
    auto& dst = kv.value();
    if (src.sizes() != dst.sizes())
      fail("tensor " + name + " in " + ckpt.path() + " has shape " + shape_str(src.sizes()) +
           " but the config implies " + shape_str(dst.sizes()));
    if (dst.device().is_cpu() && src.scalar_type() == dst.scalar_type() && ckpt.contains(src.data_ptr())) {
      // Stored as computed: the parameter is the mapped file itself, so the weights are never held twice. The
      // mapping is private (copy-on-write), so writes such as training steps get their own pages, never the file's.
      dst.set_data(src);
    } else {
      dst.copy_(src);
      ckpt.release(name);  // converted one tensor at a time: each source page is given back once read
    }
  }
  for (const auto& name : ckpt.names()) {
    if (expected.count(name)) continue;
    if (name.size() > 9 && name.compare(name.size() - 9, 9, ".inv_freq") == 0) continue;  // HF rotary buffers
    if (name == "lm_head.weight" && m.config().tie_word_embeddings) continue;
    fail("unexpected tensor " + name + " in " + ckpt.path() + ": the checkpoint does not match its config");
  }
}

Transformer load_model(const std::string& dir, const RuntimeOptions& rt) {
  plan_execution(rt);  // contradictory runtime choices fail before anything loads
  auto cfg = io::ModelConfig::load(dir);
  auto ckpt = io::Checkpoint::open(dir);
  Transformer m(cfg, rt.dtype, rt.device);
  load_weights(*m, ckpt);
  m->set_cache_options(rt.cache);
  m->set_attn_mode(rt.attn);
  m->set_reference_attention(rt.reference_attention);
  m->set_decode_step(rt.decode_step);
  // Reject a cache layout the model cannot hold before any work starts.
  for (const auto& layer : m->cache_specs())
    for (const auto& spec : layer) resolve_storage(spec, rt.cache, rt.dtype);
  m->eval();
  return m;
}

Transformer load_model(const std::string& dir, torch::ScalarType dtype, torch::Device device) {
  RuntimeOptions rt;
  rt.dtype = dtype;
  rt.device = device;
  return load_model(dir, rt);
}

void init_weights(TransformerImpl& m, uint64_t seed, double std) {
  torch::NoGradGuard ng;
  auto gen = at::detail::createCPUGenerator(seed);
  for (auto& kv : m.named_parameters(true)) {
    const std::string& name = kv.key();
    auto& p = kv.value();
    auto ends_with = [&](const std::string& suf) {
      return name.size() >= suf.size() && name.compare(name.size() - suf.size(), suf.size(), suf) == 0;
    };
    if (ends_with(".bias")) {
      p.zero_();
    } else if (p.dim() == 1) {
      p.fill_(1.0);  // norm weights
    } else {
      auto t = at::normal(0.0, std, p.sizes(), gen, torch::TensorOptions().dtype(torch::kFloat32));
      p.copy_(t);
    }
  }
}

void save_model(TransformerImpl& m, const std::string& dir, uint64_t max_shard_bytes) {
  std::filesystem::create_directories(dir);
  auto cfg = m.config().to_json();
  cfg["torch_dtype"] = io::torch_dtype_name(m.dtype());
  io::save_checkpoint(dir, named_weights(m), max_shard_bytes);
  write_text_atomic((std::filesystem::path(dir) / "config.json").string(), cfg.dump(2) + "\n");
}

io::NamedTensors named_weights(TransformerImpl& m) {
  io::NamedTensors out;
  for (auto& kv : m.named_parameters(true)) out.emplace_back(kv.key(), kv.value().detach());
  return out;
}

}  // namespace mha2mla::model
