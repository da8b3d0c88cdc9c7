#include "io/config.h"

#include <filesystem>

#include "io/model_folder.h"
#include "util/error.h"
#include "util/json_read.h"

namespace mha2mla::io {
namespace {

using nlohmann::json;

constexpr int64_t kMaxVocab = (int64_t(1) << 31) - 1;  // token ids are int32
constexpr int64_t kMaxDim = int64_t(1) << 20;
constexpr int64_t kMaxFreqEntries = int64_t(1) << 22;

struct Reader {
  const json& j;
  const std::string& src;

  bool has(const char* k) const { return j.contains(k) && !j.at(k).is_null(); }

  int64_t i64(const char* k) const {
    check(has(k), src + ": missing field \"" + k + "\"");
    const json& v = j.at(k);
    check(v.is_number_integer(), src + ": field \"" + k + "\" must be an integer");
    return v.get<int64_t>();
  }
  int64_t i64_or(const char* k, int64_t def) const { return has(k) ? i64(k) : def; }
  double num_or(const char* k, double def) const {
    if (!has(k)) return def;
    check(j.at(k).is_number(), src + ": field \"" + k + "\" must be a number");
    return j.at(k).get<double>();
  }
  bool bool_or(const char* k, bool def) const {
    if (!has(k)) return def;
    check(j.at(k).is_boolean(), src + ": field \"" + k + "\" must be true or false");
    return j.at(k).get<bool>();
  }
  std::string str_or(const char* k, const std::string& def) const {
    if (!has(k)) return def;
    check(j.at(k).is_string(), src + ": field \"" + k + "\" must be a string");
    return j.at(k).get<std::string>();
  }
  std::vector<int64_t> ids(const char* k) const {
    std::vector<int64_t> out;
    if (!has(k)) return out;
    const json& v = j.at(k);
    if (v.is_number_integer()) return {v.get<int64_t>()};
    check(v.is_array(), src + ": field \"" + k + "\" must be an integer or a list of integers");
    for (const auto& e : v) {
      check(e.is_number_integer(), src + ": field \"" + k + "\" must hold integers");
      out.push_back(e.get<int64_t>());
    }
    return out;
  }
};

RopeScaling parse_rope_scaling(const json& j, const std::string& src) {
  RopeScaling rs;
  if (!j.contains("rope_scaling") || j.at("rope_scaling").is_null()) return rs;
  const json& r = j.at("rope_scaling");
  check(r.is_object(), src + ": rope_scaling must be an object or null");
  Reader rd{r, src};
  // Newer files say "rope_type", older ones "type".
  std::string type = rd.str_or("rope_type", rd.str_or("type", "default"));
  if (type == "default") return rs;
  if (type != "linear" && type != "llama3")
    fail(src + ": rope_scaling type \"" + type + "\" is not supported (supported: default, linear, llama3)");
  rs.type = type;
  rs.factor = rd.num_or("factor", 1.0);
  check(rs.factor > 0, src + ": rope_scaling.factor must be positive");
  if (type == "llama3") {
    rs.low_freq_factor = rd.num_or("low_freq_factor", 1.0);
    rs.high_freq_factor = rd.num_or("high_freq_factor", 4.0);
    rs.original_max_position_embeddings = rd.i64_or("original_max_position_embeddings", 8192);
    check(rs.high_freq_factor > rs.low_freq_factor,
          src + ": rope_scaling needs high_freq_factor > low_freq_factor");
  }
  return rs;
}

std::string dtype_name_of(const json& j, const std::string& src) {
  Reader rd{j, src};
  std::string d = rd.str_or("torch_dtype", rd.str_or("dtype", "float32"));
  if (d.rfind("torch.", 0) == 0) d = d.substr(6);
  return d;
}

// Recomputes kept frequencies for the fixed strategies when a file does not list them (reference checkpoints).
std::vector<int64_t> fixed_freqs(const std::string& v, int64_t r, int64_t dh, int64_t start, const std::string& src) {
  std::vector<int64_t> f;
  const int64_t half = dh / 2, k = r / 2;
  if (v == "high") {
    for (int64_t i = 0; i < k; ++i) f.push_back(i);
  } else if (v == "low") {
    for (int64_t i = half - k; i < half; ++i) f.push_back(i);
  } else if (v == "uniform") {
    // Frequencies start, start + step, ...: the last must still be one of the head's dh/2 pairs.
    const int64_t step = dh / r;
    check(start >= 0 && start < half && start + (k - 1) * step < half,
          src + ": mha2mla.uniform_start_point " + std::to_string(start) + " is out of range: with rope_dim_for_mla " +
              std::to_string(r) + " and head_dim " + std::to_string(dh) + " it must lie in [0, " +
              std::to_string(half - (k - 1) * step) + ")");
    for (int64_t i = 0; i < k; ++i) f.push_back(start + i * step);
  } else {
    fail(src + ": mha2mla.rope_freq_indices is missing, and partial_rope_version \"" + v +
         "\" cannot be recomputed without a rank file");
  }
  return f;
}

MlaConfig parse_mla(const json& j, const ModelConfig& c, const std::string& src) {
  check(j.is_object(), src + ": \"mha2mla\" must be an object");
  const std::string rsrc = src + ": mha2mla";
  Reader rd{j, rsrc};
  MlaConfig m;
  m.partial_rope_version = rd.str_or("partial_rope_version", "");
  m.rope_dim = rd.i64("rope_dim_for_mla");
  m.uniform_start_point = rd.i64_or("uniform_start_point", 0);
  m.svd_init_method = rd.str_or("svd_init_method", "joint");
  m.low_rank = rd.i64_or("low_rank", 0);
  const std::string where = src + ": mha2mla";
  check(m.uniform_start_point >= 0, where + ".uniform_start_point must not be negative");
  check(m.low_rank >= 0 && m.low_rank <= c.head_dim * 2, where + ".low_rank must lie in [0, 2 * head_dim]");
  check(m.rope_dim >= 2 && m.rope_dim % 2 == 0 && m.rope_dim <= c.head_dim,
        where + ".rope_dim_for_mla must be even and in [2, head_dim]");
  const auto& sm = m.svd_init_method;
  check(sm == "joint" || sm == "split" || sm == "activation" || sm == "none",
        where + ".svd_init_method \"" + sm + "\" is not supported (joint, split, activation, none)");
  if (sm != "none") check(m.low_rank > 0, where + ".low_rank must be positive");
  if (j.contains("rope_freq_indices") && !j.at("rope_freq_indices").is_null()) {
    const json& f = j.at("rope_freq_indices");
    check(f.is_array() && static_cast<int64_t>(f.size()) == c.num_layers,
          where + ".rope_freq_indices must list one entry per layer");
    for (const auto& layer : f) {
      check(layer.is_array() && static_cast<int64_t>(layer.size()) == c.num_kv_heads,
            where + ".rope_freq_indices must list one entry per KV head in each layer");
      std::vector<std::vector<int64_t>> heads;
      for (const auto& h : layer) {
        check(h.is_array() && static_cast<int64_t>(h.size()) == m.rope_dim / 2,
              where + ".rope_freq_indices entries must hold rope_dim_for_mla/2 indices");
        std::vector<int64_t> v;
        for (const auto& e : h) {
          check(e.is_number_integer(), where + ".rope_freq_indices must hold integers");
          int64_t x = e.get<int64_t>();
          check(x >= 0 && x < c.head_dim / 2, where + ".rope_freq_indices holds an index outside [0, head_dim/2)");
          check(v.empty() || x > v.back(), where + ".rope_freq_indices must be strictly ascending");
          v.push_back(x);
        }
        heads.push_back(std::move(v));
      }
      m.freqs.push_back(std::move(heads));
    }
  } else {
    check(c.num_layers * c.num_kv_heads * (m.rope_dim / 2) <= kMaxFreqEntries,
          where + ": num_hidden_layers x num_key_value_heads x rope_dim_for_mla/2 exceeds " +
              std::to_string(kMaxFreqEntries) + " kept-frequency entries");
    auto f = fixed_freqs(m.partial_rope_version, m.rope_dim, c.head_dim, m.uniform_start_point, src);
    m.freqs.assign(c.num_layers, std::vector<std::vector<int64_t>>(c.num_kv_heads, f));
  }
  return m;
}

}  // namespace

ModelConfig ModelConfig::from_json(const json& j, const std::string& src) {
  check(j.is_object(), src + ": config must be a JSON object");
  Reader rd{j, src};
  ModelConfig c;
  c.raw = j;
  c.model_type = rd.str_or("model_type", "");
  if (c.model_type.empty()) fail(src + ": missing field \"model_type\"");
  if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2" && c.model_type != "qwen3")
    fail(src + ": unsupported architecture \"" + c.model_type + "\" (supported: llama, mistral, qwen2, qwen3)");

  c.vocab_size = rd.i64("vocab_size");
  c.hidden_size = rd.i64("hidden_size");
  c.intermediate_size = rd.i64("intermediate_size");
  c.num_layers = rd.i64("num_hidden_layers");
  c.num_heads = rd.i64("num_attention_heads");
  c.num_kv_heads = rd.i64_or("num_key_value_heads", c.num_heads);
  check(c.vocab_size > 0 && c.hidden_size > 0 && c.intermediate_size > 0 && c.num_layers > 0 && c.num_heads > 0 &&
            c.num_kv_heads > 0,
        src + ": sizes must be positive");
  // Far above any real model, low enough that sizes derived from them cannot overflow or exhaust memory.
  check(c.vocab_size <= kMaxVocab, src + ": vocab_size " + std::to_string(c.vocab_size) + " exceeds " +
                                       std::to_string(kMaxVocab));
  for (auto [name, v] : {std::pair<const char*, int64_t>{"hidden_size", c.hidden_size},
                         {"intermediate_size", c.intermediate_size},
                         {"num_hidden_layers", c.num_layers},
                         {"num_attention_heads", c.num_heads},
                         {"num_key_value_heads", c.num_kv_heads}})
    check(v <= kMaxDim, src + ": " + name + " " + std::to_string(v) + " exceeds " + std::to_string(kMaxDim));
  check(c.num_heads % c.num_kv_heads == 0,
        src + ": num_attention_heads (" + std::to_string(c.num_heads) + ") is not a multiple of num_key_value_heads (" +
            std::to_string(c.num_kv_heads) + ")");
  if (rd.has("head_dim")) {
    c.head_dim = rd.i64("head_dim");
  } else {
    check(c.hidden_size % c.num_heads == 0, src + ": hidden_size is not a multiple of num_attention_heads");
    c.head_dim = c.hidden_size / c.num_heads;
  }
  check(c.head_dim > 0 && c.head_dim % 2 == 0 && c.head_dim <= kMaxDim, src + ": head_dim must be positive, even and at most " + std::to_string(kMaxDim));

  c.rms_norm_eps = rd.num_or("rms_norm_eps", 1e-6);
  c.rope_theta = rd.num_or("rope_theta", 10000.0);
  check(c.rope_theta > 0, src + ": rope_theta must be positive");
  c.rope_scaling = parse_rope_scaling(j, src);
  c.tie_word_embeddings = rd.bool_or("tie_word_embeddings", false);
  c.max_position_embeddings = rd.i64_or("max_position_embeddings", 2048);
  check(c.max_position_embeddings > 0, src + ": max_position_embeddings must be positive");
  c.bos_token_ids = rd.ids("bos_token_id");
  c.eos_token_ids = rd.ids("eos_token_id");
  c.torch_dtype = dtype_name_of(j, src);
  c.hidden_act = rd.str_or("hidden_act", "silu");
  check(c.hidden_act == "silu", src + ": hidden_act \"" + c.hidden_act + "\" is not supported (only silu)");

  if (c.model_type == "qwen2") {
    c.qkv_bias = true;  // Qwen2 always has q/k/v biases and no o bias
  } else {
    bool ab = rd.bool_or("attention_bias", false);
    c.qkv_bias = ab;
    c.o_bias = ab && c.model_type != "qwen3";  // Qwen3's o_proj has no bias either way
  }
  c.mlp_bias = rd.bool_or("mlp_bias", false);
  c.qk_norm = c.model_type == "qwen3";
  if (c.model_type == "mistral") {
    c.sliding_window = rd.i64_or("sliding_window", 0);
  } else if (c.model_type == "qwen2" || c.model_type == "qwen3") {
    if (rd.bool_or("use_sliding_window", false)) c.sliding_window = rd.i64_or("sliding_window", 0);
  }
  if (j.contains("mha2mla") && !j.at("mha2mla").is_null()) {
    c.is_mla = true;
    c.mla = parse_mla(j.at("mha2mla"), c, src);
  }
  return c;
}

ModelConfig ModelConfig::load(const std::string& dir) {
  namespace fs = std::filesystem;
  fs::path p = fs::path(dir) / "config.json";
  check_model_folder(dir, kModelConfig);
  return from_json(read_json_file(p.string()), p.string());
}

json ModelConfig::to_json() const {
  json j = raw.is_object() ? raw : json::object();
  j["model_type"] = model_type;
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_layers;
  j["num_attention_heads"] = num_heads;
  j["num_key_value_heads"] = num_kv_heads;
  j["head_dim"] = head_dim;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_theta"] = rope_theta;
  if (rope_scaling.type == "default") {
    j["rope_scaling"] = nullptr;
  } else {
    json r{{"rope_type", rope_scaling.type}, {"factor", rope_scaling.factor}};
    if (rope_scaling.type == "llama3") {
      r["low_freq_factor"] = rope_scaling.low_freq_factor;
      r["high_freq_factor"] = rope_scaling.high_freq_factor;
      r["original_max_position_embeddings"] = rope_scaling.original_max_position_embeddings;
    }
    j["rope_scaling"] = r;
  }
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["max_position_embeddings"] = max_position_embeddings;
  auto ids = [](const std::vector<int64_t>& v) -> json {
    if (v.empty()) return nullptr;
    if (v.size() == 1) return v[0];
    return v;
  };
  j["bos_token_id"] = ids(bos_token_ids);
  j["eos_token_id"] = ids(eos_token_ids);
  j["torch_dtype"] = torch_dtype;
  j["hidden_act"] = hidden_act;
  if (model_type != "qwen2") j["attention_bias"] = qkv_bias;
  if (mlp_bias) j["mlp_bias"] = true;
  if (sliding_window > 0) j["sliding_window"] = sliding_window;
  if (is_mla) {
    json m = j.contains("mha2mla") && j["mha2mla"].is_object() ? j["mha2mla"] : json::object();
    m["partial_rope_version"] = mla.partial_rope_version;
    m["rope_dim_for_mla"] = mla.rope_dim;
    m["uniform_start_point"] = mla.uniform_start_point;
    m["svd_init_method"] = mla.svd_init_method;
    m["low_rank"] = mla.low_rank;
    m["rope_freq_indices"] = mla.freqs;
    j["mha2mla"] = m;
  } else {
    j.erase("mha2mla");
  }
  return j;
}

}  // namespace mha2mla::io
