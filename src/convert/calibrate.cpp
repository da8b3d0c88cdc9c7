#include "convert/calibrate.h"

#include <cinttypes>
#include <cstdio>
#include <map>
#include <memory>

#include "convert/rope_select.h"
#include "io/safetensors.h"
#include "util/error.h"

namespace mha2mla::convert {

namespace {

constexpr const char* kFormat = "mha2mla-calib";
constexpr const char* kVersion = "1";

std::string shape_str(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// Σ c_i·w_i over the flattened tensor in fp64 with coefficients from a fixed hash of i, so that any
// change of value or position moves the sum; the order is fixed, so equal weights give equal bits.
double checksum(const torch::Tensor& w, uint64_t salt) {
  auto t = w.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  const double* p = t.data_ptr<double>();
  double s = 0;
  for (int64_t i = 0; i < t.numel(); ++i) {
    uint64_t h = (static_cast<uint64_t>(i) + salt) * 0x9E3779B97F4A7C15ULL;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ULL;
    h ^= h >> 32;
    double c = static_cast<double>(h >> 11) * (1.0 / 9007199254740992.0) + 0.5;  // [0.5, 1.5)
    s += c * p[i];
  }
  return s;
}

std::shared_ptr<model::GQAAttentionImpl> gqa_layer(model::TransformerImpl& m, int64_t l) {
  auto a = std::dynamic_pointer_cast<model::GQAAttentionImpl>(m.model->layers->at<model::DecoderLayerImpl>(l).self_attn);
  check(a != nullptr, "calibration needs an unconverted model (layer " + std::to_string(l) +
                          " does not use standard multi-head attention)");
  return a;
}

// Restores the model's attention-input hook on every exit path.
struct HookGuard {
  model::TransformerImpl& m;
  std::function<void(int64_t, const torch::Tensor&)> saved;
  explicit HookGuard(model::TransformerImpl& m) : m(m), saved(m.attn_input_hook) {}
  ~HookGuard() { m.attn_input_hook = saved; }
};

// Mean over rows of ||(v[i], v[i + d_h/2])|| per head: y [N, heads*d_h] -> sum over rows [heads, d_h/2] fp64.
torch::Tensor pair_norm_sum(const torch::Tensor& y, int64_t heads, int64_t d_h) {
  auto v = y.reshape({y.size(0), heads, 2, d_h / 2});
  return v.norm(2, {2}).to(torch::kFloat64).sum(0);
}

int64_t parse_count(const std::map<std::string, std::string>& meta, const std::string& key, const std::string& path) {
  auto it = meta.find(key);
  check(it != meta.end(), "calibration file " + path + " lacks metadata \"" + key + "\"");
  try {
    size_t pos = 0;
    long long v = std::stoll(it->second, &pos);
    if (pos == it->second.size() && v >= 0) return v;
  } catch (...) {
  }
  fail("calibration file " + path + ": metadata \"" + key + "\" is not a count: \"" + it->second + "\"");
}

}  // namespace

std::string model_fingerprint(model::TransformerImpl& m) {
  const auto& c = m.config();
  torch::NoGradGuard ng;
  auto a = gqa_layer(m, 0);
  const auto& emb = m.model->embed_tokens->weight;
  double sum = checksum(a->q_proj->weight, 1) + checksum(a->k_proj->weight, 2) +
               checksum(emb.narrow(0, 0, std::min<int64_t>(emb.size(0), 16)), 3);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9e", sum);
  return c.model_type + " layers=" + std::to_string(c.num_layers) + " hidden=" + std::to_string(c.hidden_size) +
         " heads=" + std::to_string(c.num_heads) + " kv_heads=" + std::to_string(c.num_kv_heads) +
         " head_dim=" + std::to_string(c.head_dim) + " vocab=" + std::to_string(c.vocab_size) + " checksum=" + buf;
}

CalibStats calibrate(model::TransformerImpl& m, const std::vector<int64_t>& ids, int64_t samples, int64_t ctx,
                     const std::function<void(int64_t done, int64_t total)>& progress) {
  check(samples >= 1, "calibration needs at least 1 sample, got " + std::to_string(samples));
  check(ctx >= 1, "calibration context must be at least 1 token, got " + std::to_string(ctx));
  const int64_t n = static_cast<int64_t>(ids.size());
  check(n >= ctx, "calibration text has " + std::to_string(n) + " tokens, need at least " + std::to_string(ctx));
  const auto& c = m.config();
  const int64_t L = c.num_layers, n_h = c.num_heads, n_kv = c.num_kv_heads, d_h = c.head_dim, d = c.hidden_size;
  check(d_h % 2 == 0, "head_dim " + std::to_string(d_h) + " must be even for RoPE");

  torch::NoGradGuard ng;
  struct Proj {
    torch::Tensor wq, bq, wk, bk;
  };
  std::vector<Proj> proj;
  for (int64_t l = 0; l < L; ++l) {
    auto a = gqa_layer(m, l);
    auto f32 = [](const torch::Tensor& t) { return t.defined() ? t.to(torch::kFloat32) : t; };
    proj.push_back({f32(a->q_proj->weight), f32(a->q_proj->bias), f32(a->k_proj->weight), f32(a->k_proj->bias)});
  }

  const int64_t windows = std::min(samples, n / ctx);
  // About a tenth held out (rounded half up), at least one once there are two windows to split.
  const int64_t heldout = windows >= 2 ? std::max<int64_t>(1, (windows + 5) / 10) : 0;
  const int64_t train = windows - heldout;

  auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(m.device());
  auto q_sum = torch::zeros({L, n_h, d_h / 2}, f64), k_sum = torch::zeros({L, n_kv, d_h / 2}, f64);
  std::vector<torch::Tensor> cov(L), cov_ho(L);
  for (int64_t l = 0; l < L; ++l) {
    cov[l] = torch::zeros({d, d}, f64);
    cov_ho[l] = torch::zeros({d, d}, f64);
  }

  bool in_heldout = false;
  HookGuard guard(m);
  m.attn_input_hook = [&](int64_t l, const torch::Tensor& x) {
    auto xf = x.reshape({-1, d}).to(torch::kFloat32);
    auto xd = xf.to(torch::kFloat64);
    if (in_heldout) {
      cov_ho[l].addmm_(xd.t(), xd);
      return;
    }
    cov[l].addmm_(xd.t(), xd);
    const auto& p = proj[l];
    q_sum[l] += pair_norm_sum(torch::linear(xf, p.wq, p.bq), n_h, d_h);
    k_sum[l] += pair_norm_sum(torch::linear(xf, p.wk, p.bk), n_kv, d_h);
  };
  auto all = torch::tensor(ids, torch::kInt64);
  for (int64_t w = 0; w < windows; ++w) {
    in_heldout = w >= train;
    m.hidden(all.narrow(0, w * ctx, ctx).unsqueeze(0));
    if (progress) progress(w + 1, windows);
  }

  CalibStats s;
  s.tokens = train * ctx;
  s.heldout_tokens = heldout * ctx;
  s.samples = windows;
  s.ctx = ctx;
  s.q_norm = (q_sum / static_cast<double>(s.tokens)).to(torch::kCPU, torch::kFloat32);
  s.k_norm = (k_sum / static_cast<double>(s.tokens)).to(torch::kCPU, torch::kFloat32);
  for (int64_t l = 0; l < L; ++l) {
    s.cov.push_back((cov[l] / static_cast<double>(s.tokens)).to(torch::kCPU));
    s.cov_heldout.push_back(heldout ? (cov_ho[l] / static_cast<double>(s.heldout_tokens)).to(torch::kCPU)
                                    : cov_ho[l].to(torch::kCPU));
  }
  s.fingerprint = model_fingerprint(m);
  return s;
}

torch::Tensor two_norm_scores(const CalibStats& s, int64_t n_kv, bool product) {
  check(s.q_norm.defined() && s.q_norm.dim() == 3 && s.k_norm.defined() && s.k_norm.dim() == 3,
        "calibration statistics are missing the q/k norms");
  const int64_t L = s.q_norm.size(0), n_h = s.q_norm.size(1), half = s.q_norm.size(2);
  check(n_kv >= 1 && n_h % n_kv == 0, "query heads " + std::to_string(n_h) + " are not a multiple of KV heads " +
                                          std::to_string(n_kv));
  check(s.k_norm.sizes().vec() == std::vector<int64_t>{L, n_kv, half},
        "k norms have shape " + shape_str(s.k_norm.sizes()) + ", expected " + shape_str({L, n_kv, half}));
  // Query head j reads KV head j / g, so each group is g consecutive query heads.
  auto q = s.q_norm.to(torch::kFloat32).reshape({L, n_kv, n_h / n_kv, half});
  auto k = s.k_norm.to(torch::kFloat32).unsqueeze(2);
  return (product ? q * k : q + k).sum(2);
}

void save_calib(const std::string& path, const CalibStats& s) {
  check(s.q_norm.defined() && s.k_norm.defined(), "no calibration statistics to save");
  const int64_t L = s.q_norm.size(0), n_kv = s.k_norm.size(1);
  check(static_cast<int64_t>(s.cov.size()) == L && static_cast<int64_t>(s.cov_heldout.size()) == L,
        "calibration statistics need one covariance per layer");
  auto scores = two_norm_scores(s, n_kv, /*product=*/true);
  io::NamedTensors t{{"q_norm", s.q_norm.to(torch::kCPU, torch::kFloat32)},
                     {"k_norm", s.k_norm.to(torch::kCPU, torch::kFloat32)},
                     {"scores", scores},
                     {"ranks", ranks_from_scores(scores)}};
  for (int64_t l = 0; l < L; ++l) t.push_back({"cov." + std::to_string(l), s.cov[l].to(torch::kCPU, torch::kFloat64)});
  for (int64_t l = 0; l < L; ++l)
    t.push_back({"cov_heldout." + std::to_string(l), s.cov_heldout[l].to(torch::kCPU, torch::kFloat64)});
  std::map<std::string, std::string> meta{{"format", kFormat},
                                          {"version", kVersion},
                                          {"fingerprint", s.fingerprint},
                                          {"tokens", std::to_string(s.tokens)},
                                          {"heldout_tokens", std::to_string(s.heldout_tokens)},
                                          {"samples", std::to_string(s.samples)},
                                          {"ctx", std::to_string(s.ctx)},
                                          {"layers", std::to_string(L)}};
  io::save_safetensors(path, t, meta);
}

CalibStats load_calib(const std::string& path) {
  io::SafetensorsFile f(path);
  const auto& meta = f.metadata();
  auto fmt = meta.find("format");
  check(fmt != meta.end() && fmt->second == kFormat, path + " is not a mha2mla calibration file");
  auto ver = meta.find("version");
  check(ver != meta.end() && ver->second == kVersion,
        "calibration file " + path + " has version " + (ver == meta.end() ? "(none)" : ver->second) +
            ", this build reads version " + kVersion);
  auto fp = meta.find("fingerprint");
  check(fp != meta.end() && !fp->second.empty(), "calibration file " + path + " lacks the model fingerprint");

  CalibStats s;
  s.fingerprint = fp->second;
  s.tokens = parse_count(meta, "tokens", path);
  s.heldout_tokens = parse_count(meta, "heldout_tokens", path);
  s.samples = parse_count(meta, "samples", path);
  s.ctx = parse_count(meta, "ctx", path);
  check(s.tokens > 0, "calibration file " + path + " was computed on 0 tokens");

  // Copies, so the statistics outlive the mapping.
  auto get = [&](const std::string& name, std::vector<int64_t> want, torch::ScalarType dt) {
    check(f.find(name) != nullptr, "calibration file " + path + " lacks tensor " + name);
    auto t = f.tensor(name);
    check(t.sizes().vec() == want, "calibration file " + path + ": tensor " + name + " has shape " +
                                       shape_str(t.sizes()) + ", expected " + shape_str(want));
    return t.to(dt).clone();
  };
  const auto* qi = f.find("q_norm");
  const auto* ki = f.find("k_norm");
  check(qi && ki, "calibration file " + path + " lacks tensor " + (qi ? "k_norm" : "q_norm"));
  check(qi->shape.size() == 3 && ki->shape.size() == 3,
        "calibration file " + path + ": q_norm and k_norm must be [layers, heads, head_dim/2]");
  const int64_t L = qi->shape[0], n_h = qi->shape[1], half = qi->shape[2], n_kv = ki->shape[1];
  check(L >= 1 && half >= 1 && n_kv >= 1 && n_h % n_kv == 0,
        "calibration file " + path + ": inconsistent q_norm " + shape_str(qi->shape) + " and k_norm " +
            shape_str(ki->shape));
  s.q_norm = get("q_norm", {L, n_h, half}, torch::kFloat32);
  s.k_norm = get("k_norm", {L, n_kv, half}, torch::kFloat32);
  get("scores", {L, n_kv, half}, torch::kFloat32);
  get("ranks", {L, n_kv, 2 * half}, torch::kInt64);
  const auto* c0 = f.find("cov.0");
  check(c0 && c0->shape.size() == 2, "calibration file " + path + " lacks tensor cov.0 [hidden, hidden]");
  const int64_t d = c0->shape[0];
  for (int64_t l = 0; l < L; ++l) {
    s.cov.push_back(get("cov." + std::to_string(l), {d, d}, torch::kFloat64));
    s.cov_heldout.push_back(get("cov_heldout." + std::to_string(l), {d, d}, torch::kFloat64));
  }
  check(f.find("cov." + std::to_string(L)) == nullptr,
        "calibration file " + path + " has more covariances than the " + std::to_string(L) + " layers of q_norm");
  return s;
}

void check_calib_matches(const CalibStats& s, model::TransformerImpl& m, const std::string& path) {
  auto mine = model_fingerprint(m);
  check(s.fingerprint == mine, "calibration file " + path + " was made for another model (file: " + s.fingerprint +
                                   "; model: " + mine + ")");
}

}  // namespace mha2mla::convert
