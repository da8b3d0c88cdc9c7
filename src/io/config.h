#pragma once
// Hugging Face config.json for the Llama family: llama (Llama-2/3, SmolLM), mistral, qwen2, qwen3.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace mha2mla::io {

struct RopeScaling {
  std::string type = "default";  // default | linear | llama3
  double factor = 1.0;
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3
};

// The "mha2mla" section of a converted model's config.json (the reference's refactored field names,
// plus the kept frequencies written out so loading never needs a rank file).
struct MlaConfig {
  std::string partial_rope_version;  // high | low | uniform | 2-norm
  int64_t rope_dim = 0;              // r: rotated dims per head ("rope_dim_for_mla")
  int64_t uniform_start_point = 0;
  std::string svd_init_method;       // joint | split | activation | none
  int64_t low_rank = 0;              // d_kv per KV head; latent width L = low_rank * n_kv
  // rope_freq_indices[layer][kv_head] = kept frequency indices (ascending), r/2 each.
  std::vector<std::vector<std::vector<int64_t>>> freqs;

  bool split() const { return svd_init_method == "split"; }
  // Cached latent width per token and layer: d_kv·n_kv (joint), twice that (split), or n_kv·(d_h − r + d_h)
  // for full-rank K/V ("none").
  int64_t latent_dim(int64_t n_kv, int64_t head_dim) const {
    if (svd_init_method == "none") return n_kv * (2 * head_dim - rope_dim);
    return (split() ? 2 : 1) * low_rank * n_kv;
  }
  bool full_rank() const { return svd_init_method == "none"; }
};

struct ModelConfig {
  std::string model_type;  // llama | mistral | qwen2 | qwen3
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  int64_t max_position_embeddings = 2048;
  std::vector<int64_t> bos_token_ids;
  std::vector<int64_t> eos_token_ids;
  std::string torch_dtype = "float32";
  bool qkv_bias = false;   // qwen2 always; llama/qwen3 via attention_bias
  bool o_bias = false;     // llama attention_bias also biases o_proj
  bool mlp_bias = false;
  bool qk_norm = false;    // qwen3
  int64_t sliding_window = 0;  // 0 = none (mistral sets one)
  std::string hidden_act = "silu";
  bool is_mla = false;
  MlaConfig mla;  // valid when is_mla
  nlohmann::json raw;  // the whole file, so later sections (e.g. "mha2mla") survive a rewrite

  int64_t group_size() const { return num_heads / num_kv_heads; }

  // Throws mha2mla::Error naming `source` on a missing field, a bad value or an unsupported architecture.
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source);
  static ModelConfig load(const std::string& model_dir);  // reads DIR/config.json
  nlohmann::json to_json() const;  // HF field names; starts from `raw`
};

}  // namespace mha2mla::io
