#include "convert/mla_convert.h"

#include <filesystem>
#include <map>
#include <set>
#include <tuple>

#include "io/config.h"
#include "io/model_files.h"
#include "io/safetensors.h"
#include "model/runtime_options.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/memory.h"
#include "util/publish_dir.h"

namespace mha2mla::convert {
namespace fs = std::filesystem;

namespace {

// Row indices, head-major: for each head h (query heads map to KV head h / g), base h*d_h + dims.
torch::Tensor head_rows(int64_t heads, int64_t group, int64_t d_h, const std::vector<std::vector<int64_t>>& freqs,
                        bool rope) {
  std::vector<int64_t> idx;
  for (int64_t h = 0; h < heads; ++h) {
    const auto& f = freqs.at(h / group);
    for (int64_t d : rope ? rope_dims(f, d_h) : nope_dims(f, d_h)) idx.push_back(h * d_h + d);
  }
  return torch::tensor(idx, torch::kInt64);
}

torch::Tensor rows(const torch::Tensor& t, const torch::Tensor& idx) {
  return t.defined() ? t.index_select(0, idx).contiguous() : t;
}

}  // namespace

std::pair<int64_t, int64_t> kv_values_per_token(const LayerShape& s, const ConvertOptions& opt) {
  const int64_t before = 2 * s.n_kv * s.d_h;
  const int64_t r = opt.rope_dims, d_c = s.d_h - r, L = opt.dkv * s.n_kv;
  int64_t latent = opt.svd == "split" ? 2 * L : opt.svd == "none" ? s.n_kv * (d_c + s.d_h) : L;
  return {before, s.n_kv * r + latent};
}

void validate_options(const LayerShape& s, const ConvertOptions& opt) {
  const int64_t r = opt.rope_dims;
  check(r % 2 == 0, "--rope-dims " + std::to_string(r) + " must be even (RoPE rotates pairs)");
  check(r >= 2 && r <= s.d_h, "--rope-dims " + std::to_string(r) + " must be between 2 and head_dim (" +
                                  std::to_string(s.d_h) + ")");
  const auto& m = opt.svd;
  check(m == "joint" || m == "split" || m == "activation" || m == "none",
        "unknown --svd \"" + m + "\" (joint, split, activation, none)");
  if (m == "none") return;
  check(opt.dkv >= 1, "--dkv must be at least 1");
  const int64_t L = opt.dkv * s.n_kv, d_c = s.d_h - r;
  int64_t bound;
  std::string what;
  if (m == "split") {
    bound = std::min(s.n_kv * s.d_h, s.hidden);
    what = "min(n_kv·d_h, hidden) = " + std::to_string(bound) + " for the value matrix";
  } else {
    bound = std::min(s.n_kv * (d_c + s.d_h), s.hidden);
    what = "min(n_kv·(d_h − r + d_h), hidden) = " + std::to_string(bound) + " for [W_k nope; W_v]";
  }
  check(L <= bound, "--dkv " + std::to_string(opt.dkv) + " gives a latent of " + std::to_string(L) +
                        " (d_kv·n_kv), more than the possible rank " + what);
}

MlaLayer convert_layer(const AttnWeights& w, const LayerShape& s, const std::vector<std::vector<int64_t>>& freqs,
                       const ConvertOptions& opt, const torch::Tensor& cov, const torch::Tensor& cov_heldout,
                       const torch::Tensor& heldout_rows) {
  const int64_t g = s.n_h / s.n_kv, L = opt.dkv * s.n_kv;
  MlaLayer out;
  auto q_idx = torch::cat({head_rows(s.n_h, g, s.d_h, freqs, true), head_rows(s.n_h, g, s.d_h, freqs, false)});
  auto kr_idx = head_rows(s.n_kv, 1, s.d_h, freqs, true);
  auto kc_idx = head_rows(s.n_kv, 1, s.d_h, freqs, false);
  out.tensors.emplace_back("q_proj.weight", rows(w.wq, q_idx));
  if (w.bq.defined()) out.tensors.emplace_back("q_proj.bias", rows(w.bq, q_idx));
  out.tensors.emplace_back("k_r_proj.weight", rows(w.wk, kr_idx));
  if (w.bk.defined()) out.tensors.emplace_back("k_r_proj.bias", rows(w.bk, kr_idx));
  auto wkc = rows(w.wk, kc_idx);  // [n_kv·d_c, d]
  auto bkc = rows(w.bk, kc_idx);
  const int64_t nk = wkc.size(0);

  torch::Tensor k_hat, v_hat;  // reconstructions, for the report
  auto add_up = [&](const torch::Tensor& uk, const torch::Tensor& uv) {
    out.tensors.emplace_back("kv_proj.up_k.weight", uk.contiguous());
    if (bkc.defined()) out.tensors.emplace_back("kv_proj.up_k.bias", bkc);
    out.tensors.emplace_back("kv_proj.up_v.weight", uv.contiguous());
    if (w.bv.defined()) out.tensors.emplace_back("kv_proj.up_v.bias", w.bv.contiguous());
  };
  if (opt.svd == "none") {
    add_up(wkc, w.wv);
    k_hat = wkc;
    v_hat = w.wv;
  } else if (opt.svd == "split") {
    auto fk = truncated_svd(wkc, std::min<int64_t>(L, std::min(wkc.size(0), wkc.size(1))), opt.algo);
    auto fv = truncated_svd(w.wv, L, opt.algo);
    // K may have fewer nope rows than L (large r): pad its factors with zeros to the common width.
    auto pad_up = torch::zeros({nk, L}, fk.up.options());
    auto pad_down = torch::zeros({L, wkc.size(1)}, fk.down.options());
    pad_up.narrow(1, 0, fk.up.size(1)).copy_(fk.up);
    pad_down.narrow(0, 0, fk.down.size(0)).copy_(fk.down);
    out.tensors.emplace_back("kv_proj.down_k.weight", pad_down);
    out.tensors.emplace_back("kv_proj.down_v.weight", fv.down.contiguous());
    add_up(pad_up, fv.up);
    k_hat = torch::matmul(pad_up, pad_down);
    v_hat = torch::matmul(fv.up, fv.down);
  } else {
    auto m = torch::cat({wkc, w.wv}, 0);  // [n_kv(d_c + d_h), d]
    LowRank f;
    if (opt.svd == "activation") {
      check(cov.defined(), "--svd activation needs a calibration file (--calib) with activation covariances");
      f = activation_svd(m, cov, L, opt.algo);
    } else {
      f = truncated_svd(m, L, opt.algo);
    }
    out.tensors.emplace_back("kv_proj.down_kv.weight", f.down.contiguous());
    add_up(f.up.narrow(0, 0, nk), f.up.narrow(0, nk, f.up.size(0) - nk));
    auto m_hat = torch::matmul(f.up, f.down);
    k_hat = m_hat.narrow(0, 0, nk);
    v_hat = m_hat.narrow(0, nk, m_hat.size(0) - nk);
    if (cov_heldout.defined()) {
      auto mc = times_cov(m, cov_heldout);
      std::tie(out.k_err_heldout, out.v_err_heldout) = relative_errors_on(m, mc, f, nk, cov_heldout);
      if (opt.svd == "activation")
        std::tie(out.k_err_heldout_svd, out.v_err_heldout_svd) =
            relative_errors_on(m, mc, truncated_svd(m, L, opt.algo), nk, cov_heldout);
    } else if (heldout_rows.defined()) {
      std::tie(out.k_err_heldout, out.v_err_heldout) = relative_errors_on_rows(m, f, nk, heldout_rows);
      if (opt.svd == "activation")
        std::tie(out.k_err_heldout_svd, out.v_err_heldout_svd) =
            relative_errors_on_rows(m, truncated_svd(m, L, opt.algo), nk, heldout_rows);
    }
  }
  out.k_err = relative_error(wkc, k_hat);
  out.v_err = relative_error(w.wv, v_hat);
  if (cov_heldout.defined() && out.k_err_heldout < 0) {
    out.k_err_heldout = relative_error_on(wkc, k_hat, cov_heldout);
    out.v_err_heldout = relative_error_on(w.wv, v_hat, cov_heldout);
  } else if (heldout_rows.defined() && out.k_err_heldout < 0) {
    out.k_err_heldout = relative_error_on_rows(wkc, k_hat, heldout_rows);
    out.v_err_heldout = relative_error_on_rows(w.wv, v_hat, heldout_rows);
  }
  return out;
}

namespace {

nlohmann::json freq_summary(const FreqSelection& sel, int64_t half) {
  std::vector<int64_t> counts(half, 0);
  int64_t slots = 0;
  for (const auto& layer : sel)
    for (const auto& head : layer) {
      ++slots;
      for (auto f : head) ++counts[f];
    }
  bool uniform = true;
  for (const auto& layer : sel)
    for (const auto& head : layer) uniform = uniform && head == sel[0][0];
  nlohmann::json j{{"slots", slots}, {"same_for_all_heads", uniform}, {"count_per_frequency", counts}};
  if (uniform) j["frequencies"] = sel[0][0];
  std::vector<int64_t> order(half);
  for (int64_t i = 0; i < half; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return counts[a] > counts[b]; });
  nlohmann::json top = nlohmann::json::array();
  for (int64_t i = 0; i < std::min<int64_t>(10, half); ++i)
    if (counts[order[i]] > 0) top.push_back({order[i], counts[order[i]]});
  j["most_kept"] = top;
  return j;
}

}  // namespace

nlohmann::json convert_model(const std::string& model_dir, const std::string& out_dir, const ConvertOptions& opt,
                             const std::string& calib_path, const std::function<void(int64_t, int64_t)>& progress) {
  auto cfg = io::ModelConfig::load(model_dir);
  check(!cfg.is_mla, model_dir + " is already converted to MLA (its config.json has an \"mha2mla\" section)");
  check(!cfg.qk_norm, "qwen3 models (qk-norm) are not supported: the norm acts on whole heads before RoPE, "
                      "which partial RoPE and the latent cannot reproduce exactly");
  LayerShape s{cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim};
  validate_options(s, opt);
  check(!fs::exists(out_dir) || (fs::is_directory(out_dir) && fs::is_empty(out_dir)),
        out_dir + " already exists and is not empty");
  if (!opt.out_dtype.empty()) model::parse_compute_dtype(opt.out_dtype);

  const bool need_calib = opt.rope == RopeStrategy::TwoNorm || opt.svd == "activation";
  check(!need_calib || !calib_path.empty(),
        std::string(opt.rope == RopeStrategy::TwoNorm ? "--rope 2-norm" : "--svd activation") +
            " needs --calib FILE (made by 'mha2mla calibrate')");
  CalibStats calib;
  bool have_calib = !calib_path.empty();
  if (have_calib) {
    calib = load_calib(calib_path);
    // The fingerprint is read from the checkpoint: the source model is never loaded.
    check_calib_matches(calib, model_dir, calib_path);
  }
  torch::Tensor scores;
  if (opt.rope == RopeStrategy::TwoNorm) scores = two_norm_scores(calib, s.n_kv, !opt.score_sum);
  auto sel = select_frequencies(opt.rope, opt.rope_dims, s.d_h, cfg.num_layers, s.n_kv, opt.uniform_start, scores);

  auto ckpt = io::Checkpoint::open(model_dir);
  // Source tensors by layer, so each layer is read, converted, written and released before the next is read.
  std::vector<std::vector<std::string>> by_layer(cfg.num_layers);
  std::vector<std::string> head, tail;  // before the layers (embeddings) and after them (final norm, lm_head)
  for (const auto& name : ckpt.names()) {
    if (name.size() > 9 && name.compare(name.size() - 9, 9, ".inv_freq") == 0) continue;  // HF rotary buffers
    const std::string lp = "model.layers.";
    if (name.compare(0, lp.size(), lp) == 0) {
      size_t end = name.find('.', lp.size());
      int64_t l = -1;
      try {
        l = std::stoll(name.substr(lp.size(), end - lp.size()));
      } catch (...) {
      }
      check(l >= 0 && l < cfg.num_layers && end != std::string::npos,
            "tensor " + name + " in " + model_dir + " belongs to no layer of the config's " +
                std::to_string(cfg.num_layers));
      by_layer[l].push_back(name);
    } else {
      (name.find("embed") != std::string::npos ? head : tail).push_back(name);
    }
  }
  nlohmann::json layers = nlohmann::json::array();
  publish_dir(out_dir, [&](const std::string& tmp) {
    torch::NoGradGuard ng;
    auto out_type = [&](const torch::Tensor& src) {
      return opt.out_dtype.empty() ? src.scalar_type() : model::parse_compute_dtype(opt.out_dtype);
    };
    io::CheckpointWriter writer(tmp, opt.max_shard_bytes);
    // Copied as they are (in the output dtype), then their pages given back.
    auto pass = [&](const std::string& name) {
      auto t = ckpt.get_float(name);
      writer.add(name, t.to(out_type(t)));
      t = torch::Tensor();
      ckpt.release(name);
    };
    auto get = [&](const std::string& name) -> torch::Tensor {
      if (!ckpt.has(name)) return {};
      auto t = ckpt.get_float(name).to(torch::kFloat32, /*non_blocking=*/false, /*copy=*/true);
      ckpt.release(name);
      return t;
    };
    auto need = [&](const std::string& name) {
      auto t = get(name);
      check(t.defined(), "missing tensor " + name + " in " + model_dir);
      return t;
    };
    torch::ScalarType attn_dtype = io::to_torch(ckpt.info("model.layers.0.self_attn.q_proj.weight").dtype);
    if (!opt.out_dtype.empty()) attn_dtype = model::parse_compute_dtype(opt.out_dtype);
    HeapGrowthLimit heap_limit(256ll << 20);
    for (const auto& name : head) pass(name);
    for (int64_t l = 0; l < cfg.num_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".self_attn.";
      std::set<std::string> consumed;
      for (const char* k : {"q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias"})
        consumed.insert(p + k);
      AttnWeights w{need(p + "q_proj.weight"), get(p + "q_proj.bias"), need(p + "k_proj.weight"),
                    get(p + "k_proj.bias"),    need(p + "v_proj.weight"), get(p + "v_proj.bias")};
      torch::Tensor cov, cov_h, rows_h;
      if (have_calib) {
        // Only the activation-aware method reads the training covariance (forming it from stored rows costs).
        if (opt.svd == "activation") cov = calib.cov.at(l);
        if (calib.heldout_tokens > 0) {
          rows_h = calib.cov_heldout.inputs(l);
          if (!rows_h.defined()) cov_h = calib.cov_heldout.at(l);
        }
      }
      auto ml = convert_layer(w, s, sel[l], opt, cov, cov_h, rows_h);
      w = AttnWeights{};
      cov = cov_h = rows_h = torch::Tensor();
      if (have_calib) {
        calib.cov.release(l);
        calib.cov_heldout.release(l);
      }
      for (auto& [k, t] : ml.tensors) writer.add(p + k, t.to(attn_dtype));
      for (const auto& name : by_layer[l])
        if (!consumed.count(name)) pass(name);
      nlohmann::json lj{{"layer", l}, {"k_rel_err", ml.k_err}, {"v_rel_err", ml.v_err}};
      if (ml.k_err_heldout >= 0) {
        lj["k_rel_err_heldout"] = ml.k_err_heldout;
        lj["v_rel_err_heldout"] = ml.v_err_heldout;
      }
      if (ml.k_err_heldout_svd >= 0) {
        lj["k_rel_err_heldout_plain_svd"] = ml.k_err_heldout_svd;
        lj["v_rel_err_heldout_plain_svd"] = ml.v_err_heldout_svd;
      }
      layers.push_back(lj);
      heap_limit.step();  // else the freed buffers of every layer stay resident (peak grew with depth)
      if (progress) progress(l + 1, cfg.num_layers);
    }
    for (const auto& name : tail) pass(name);
    writer.finish();

    io::ModelConfig ncfg = cfg;
    ncfg.is_mla = true;
    ncfg.mla.partial_rope_version = rope_strategy_name(opt.rope);
    ncfg.mla.rope_dim = opt.rope_dims;
    ncfg.mla.uniform_start_point = opt.uniform_start;
    ncfg.mla.svd_init_method = opt.svd;
    ncfg.mla.low_rank = opt.svd == "none" ? 0 : opt.dkv;
    ncfg.mla.freqs = sel;
    auto cj = ncfg.to_json();
    if (!opt.out_dtype.empty()) cj["torch_dtype"] = io::torch_dtype_name(model::parse_compute_dtype(opt.out_dtype));
    cj["mha2mla"]["source_model"] = model_dir;
    if (opt.rope == RopeStrategy::TwoNorm) cj["mha2mla"]["two_norm_score"] = opt.score_sum ? "sum" : "product";
    write_text_atomic((fs::path(tmp) / "config.json").string(), cj.dump(2) + "\n");
    io::copy_tokenizer_files(model_dir, tmp);
  }, /*replace=*/false);

  auto [before, after] = kv_values_per_token(s, opt);
  nlohmann::json report{{"model", model_dir},
                        {"out", out_dir},
                        {"rope", rope_strategy_name(opt.rope)},
                        {"rope_dims", opt.rope_dims},
                        {"svd", opt.svd},
                        {"dkv", opt.dkv},
                        {"latent_dim", after - s.n_kv * opt.rope_dims},
                        {"kv_values_per_token_per_layer_before", before},
                        {"kv_values_per_token_per_layer_after", after},
                        {"kv_cache_ratio", static_cast<double>(after) / static_cast<double>(before)},
                        {"kv_cache_reduction", 1.0 - static_cast<double>(after) / static_cast<double>(before)},
                        {"layers", layers},
                        {"kept_frequencies", freq_summary(sel, s.d_h / 2)}};
  double ks = 0, vs = 0;
  for (const auto& l : layers) {
    ks += l["k_rel_err"].get<double>();
    vs += l["v_rel_err"].get<double>();
  }
  report["mean_k_rel_err"] = ks / static_cast<double>(layers.size());
  report["mean_v_rel_err"] = vs / static_cast<double>(layers.size());
  return report;
}

}  // namespace mha2mla::convert
