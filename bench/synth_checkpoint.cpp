// Writes a Llama-2-7B-shaped checkpoint with random weights, for real-size runs of calibrate, convert, ppl and
// generate (bench/real_size.sh): config.json, HF-style fp16 shards with their index, and a tokenizer.json whose
// vocabulary is padded to the model's. Matrices are N(0, 0.02) with input columns scaled by a decaying profile,
// so their singular values fall off as trained projections' do instead of being flat; norms are near 1.
// One tensor is generated and written at a time, so memory stays at the largest tensor (the embedding).
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "infer/runtime.h"
#include "io/safetensors.h"
#include "model/runtime_options.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/publish_dir.h"

using namespace mha2mla;
namespace fs = std::filesystem;

namespace {

struct Shape {
  int64_t layers = 32, hidden = 4096, heads = 32, kv_heads = 0 /* = heads */, inter = 11008, vocab = 32000, max_pos = 4096;
};

void usage() {
  std::printf(
      "usage: synth_checkpoint --out DIR --tokenizer FILE [--layers N] [--hidden D] [--heads H] [--kv-heads K (= H)]\n"
      "                        [--intermediate I] [--vocab V] [--shards S] [--dtype f16|bf16|f32] [--seed N]\n"
      "Defaults are Llama-2-7B's: 32 layers, hidden 4096, 32/32 heads, intermediate 11008, vocab 32000, 2 fp16\n"
      "shards. The tokenizer's vocabulary is padded with unreachable tokens up to the model's.\n");
}

// The tokenizer's BPE vocabulary padded to `vocab` entries: the extra tokens are never produced by encoding
// (no merge leads to them) but decode to plain text, so sampling any id of the model stays printable.
nlohmann::json padded_tokenizer(const std::string& path, int64_t vocab) {
  auto tj = nlohmann::json::parse(read_text_file(path));
  check(tj.contains("model") && tj["model"].contains("vocab") && tj["model"]["vocab"].is_object(),
        path + " is not a BPE tokenizer.json with a model.vocab object");
  auto& v = tj["model"]["vocab"];
  int64_t next = 0;
  for (auto it = v.begin(); it != v.end(); ++it) next = std::max<int64_t>(next, it->get<int64_t>() + 1);
  if (tj.contains("added_tokens"))
    for (const auto& a : tj["added_tokens"]) next = std::max<int64_t>(next, a["id"].get<int64_t>() + 1);
  check(next <= vocab, path + " has " + std::to_string(next) + " tokens, more than the model's " + std::to_string(vocab));
  for (int64_t id = next; id < vocab; ++id) {
    // "Ġ" is the byte-level form of a space: the token decodes to " x<id>".
    std::string s = "\xC4\xA0x" + std::to_string(id);
    check(!v.contains(s), "padding token " + s + " already exists in " + path);
    v[s] = id;
  }
  return tj;
}

}  // namespace

int main(int argc, char** argv) {
  infer::init_runtime();
  Shape sh;
  std::string out, tokenizer, dtype_name = "f16";
  int64_t shards = 2, seed = 1;
  try {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "--help" || a == "-h") {
        usage();
        return 0;
      }
      check(i + 1 < argc, "missing value for " + a);
      std::string v = argv[++i];
      auto num = [&] {
        try {
          size_t pos = 0;
          long long n = std::stoll(v, &pos);
          if (pos == v.size() && n > 0) return static_cast<int64_t>(n);
        } catch (...) {
        }
        fail(a + " needs a positive integer, got \"" + v + "\"");
      };
      if (a == "--out") out = v;
      else if (a == "--tokenizer") tokenizer = v;
      else if (a == "--layers") sh.layers = num();
      else if (a == "--hidden") sh.hidden = num();
      else if (a == "--heads") sh.heads = num();
      else if (a == "--kv-heads") sh.kv_heads = num();
      else if (a == "--intermediate") sh.inter = num();
      else if (a == "--vocab") sh.vocab = num();
      else if (a == "--shards") shards = num();
      else if (a == "--seed") seed = num();
      else if (a == "--dtype") dtype_name = v;
      else fail("unknown option " + a);
    }
    check(!out.empty() && !tokenizer.empty(), "--out and --tokenizer are required (see --help)");
    if (sh.kv_heads == 0) sh.kv_heads = sh.heads;
    check(sh.hidden % sh.heads == 0 && sh.heads % sh.kv_heads == 0, "hidden must divide into heads, heads into kv-heads");
    check(!fs::exists(out) || fs::is_empty(out), out + " already exists and is not empty");
    const auto dtype = model::parse_compute_dtype(dtype_name);
    const int64_t d = sh.hidden, d_h = d / sh.heads, kv = sh.kv_heads * d_h;

    // name -> [rows, cols] (cols = 0: a vector), in HF's order.
    std::vector<std::pair<std::string, std::vector<int64_t>>> plan{{"model.embed_tokens.weight", {sh.vocab, d}}};
    for (int64_t l = 0; l < sh.layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      plan.push_back({p + "self_attn.q_proj.weight", {d, d}});
      plan.push_back({p + "self_attn.k_proj.weight", {kv, d}});
      plan.push_back({p + "self_attn.v_proj.weight", {kv, d}});
      plan.push_back({p + "self_attn.o_proj.weight", {d, d}});
      plan.push_back({p + "mlp.gate_proj.weight", {sh.inter, d}});
      plan.push_back({p + "mlp.up_proj.weight", {sh.inter, d}});
      plan.push_back({p + "mlp.down_proj.weight", {d, sh.inter}});
      plan.push_back({p + "input_layernorm.weight", {d}});
      plan.push_back({p + "post_attention_layernorm.weight", {d}});
    }
    plan.push_back({"model.norm.weight", {d}});
    plan.push_back({"lm_head.weight", {sh.vocab, d}});
    uint64_t total = 0, largest = 0;
    for (const auto& [n, s] : plan) {
      const uint64_t nb = static_cast<uint64_t>(s[0]) * (s.size() > 1 ? s[1] : 1) * c10::elementSize(dtype);
      total += nb;
      largest = std::max(largest, nb);
    }

    PublishDir pub(out);
    const std::string& tmp = pub.tmp();
    {
      // Room for one more tensor per shard, so greedy packing gives exactly `shards` files.
      io::CheckpointWriter w(tmp, shards > 1 ? (total + shards - 1) / shards + largest : 0);
      auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(seed));
      torch::NoGradGuard ng;
      int64_t done = 0;
      for (const auto& [name, s] : plan) {
        torch::Tensor t;
        if (s.size() == 1) {
          t = 1.0 + 0.05 * at::normal(0.0, 1.0, {s[0]}, gen, torch::TensorOptions());
        } else {
          const int64_t cols = s[1];
          auto decay = torch::exp(-torch::arange(cols, torch::kFloat32) / (cols / 6.0)) + 0.05;
          t = at::normal(0.0, 0.02, {s[0], cols}, gen, torch::TensorOptions()).mul_(decay.unsqueeze(0));
        }
        w.add(name, t.to(dtype));
        std::fprintf(stderr, "\rsynth_checkpoint: %lld/%zu tensors", static_cast<long long>(++done), plan.size());
      }
      std::fprintf(stderr, "\n");
      w.finish();
    }
    nlohmann::json cfg{{"architectures", {"LlamaForCausalLM"}},
                       {"model_type", "llama"},
                       {"hidden_size", d},
                       {"intermediate_size", sh.inter},
                       {"num_hidden_layers", sh.layers},
                       {"num_attention_heads", sh.heads},
                       {"num_key_value_heads", sh.kv_heads},
                       {"max_position_embeddings", sh.max_pos},
                       {"rms_norm_eps", 1e-5},
                       {"rope_theta", 10000.0},
                       {"hidden_act", "silu"},
                       {"tie_word_embeddings", false},
                       {"vocab_size", sh.vocab},
                       {"bos_token_id", 0},
                       {"eos_token_id", 0},
                       {"torch_dtype", io::torch_dtype_name(dtype)}};
    write_text_atomic((fs::path(tmp) / "config.json").string(), cfg.dump(2) + "\n");
    write_text_atomic((fs::path(tmp) / "tokenizer.json").string(), padded_tokenizer(tokenizer, sh.vocab).dump() + "\n");
    pub.commit();
    std::printf("wrote %s: %lld layers, hidden %lld, %.2f GiB of %s weights\n", out.c_str(),
                static_cast<long long>(sh.layers), static_cast<long long>(d), total / double(1ull << 30),
                dtype_name.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
