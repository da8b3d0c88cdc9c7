// Calibration statistics: their container, the 2-norm scores, the model fingerprint and the calibration file
// (calibrate_run.cpp runs the model to collect them; the file parsers need none of it).
#include "convert/calibrate.h"

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>

#include "convert/rope_select.h"
#include "io/safetensors.h"
#include "util/error.h"
#include "util/text.h"

namespace mha2mla::convert {

namespace {

constexpr const char* kFormat = "mha2mla-calib";
// 2: the fingerprint describes the checkpoint (names, dtypes, shapes, a hash of some bytes).
// 3: a layer that saw fewer inputs than its covariance's size is stored as the inputs (cov_rows.{l}).
constexpr const char* kVersion = "3";

// 64-bit hash of bytes, eight at a time (a multiply-xorshift mix); the same bytes always give the same value.
uint64_t hash_bytes(const uint8_t* p, uint64_t n, uint64_t h) {
  auto mix = [](uint64_t x) {
    x ^= x >> 29;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 32;
    return x;
  };
  uint64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = mix(h ^ (w * 0x9E3779B97F4A7C15ULL)) + i;
  }
  uint64_t tail = 0;
  for (uint64_t k = 0; i + k < n; ++k) tail |= static_cast<uint64_t>(p[i + k]) << (8 * k);
  return mix(h ^ (tail * 0x9E3779B97F4A7C15ULL) ^ n);
}

uint64_t hash_string(const std::string& s, uint64_t h) {
  return hash_bytes(reinterpret_cast<const uint8_t*>(s.data()), s.size(), h);
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

Covariances::Covariances(int64_t layers, int64_t dim) : layers_(static_cast<size_t>(layers)), dim_(dim) {}

void Covariances::add(size_t l, const torch::Tensor& x) {
  auto& e = layers_.at(l);
  check(!e.mean.defined(), "cannot add inputs to a finished covariance");
  check(x.dim() == 2 && x.size(1) == dim_, "covariance inputs must be [n, " + std::to_string(dim_) + "]");
  e.rows.push_back(x.detach().clone());
  e.count += x.size(0);
  e.pending_bytes += x.numel() * x.element_size();
  if (e.pending_bytes <= dim_ * dim_ * 8) return;
  // The rows now outweigh the matrix: fold them into the fp64 sum.
  auto xd = torch::cat(e.rows).to(torch::kFloat64);
  if (!e.sum.defined()) e.sum = torch::zeros({dim_, dim_}, xd.options());
  e.sum.addmm_(xd.t(), xd);
  e.rows.clear();
  e.pending_bytes = 0;
}

torch::Tensor Covariances::operator[](size_t l) const {
  const auto& e = layers_[l];
  if (e.mean.defined()) return e.mean;
  auto out = e.sum.defined() ? e.sum.to(torch::kCPU).clone() : torch::zeros({dim_, dim_}, torch::kFloat64);
  if (!e.rows.empty()) {
    auto xd = torch::cat(e.rows).to(torch::kFloat64);
    out.addmm_(xd.t().cpu(), xd.cpu());
  }
  if (e.count > 0) out /= static_cast<double>(e.count);
  return out;
}

torch::Tensor Covariances::at(size_t l) const {
  check(l < layers_.size(), "no covariance for layer " + std::to_string(l) + " (" + std::to_string(layers_.size()) +
                                " layers)");
  return (*this)[l];
}

void Covariances::push_back(torch::Tensor mean, std::function<void()> release) {
  Layer e;
  dim_ = mean.size(0);
  e.mean = std::move(mean);
  e.on_release = std::move(release);
  layers_.push_back(std::move(e));
}

void Covariances::push_rows(torch::Tensor rows, std::function<void()> release) {
  check(rows.dim() == 2 && rows.size(0) >= 1, "covariance rows must be [n >= 1, d]");
  check(layers_.empty() || rows.size(1) == dim_, "covariance rows have width " + std::to_string(rows.size(1)) +
                                                     ", the others " + std::to_string(dim_));
  Layer e;
  dim_ = rows.size(1);
  e.count = rows.size(0);
  e.rows.push_back(std::move(rows));
  e.on_release = std::move(release);
  layers_.push_back(std::move(e));
}

torch::Tensor Covariances::inputs(size_t l) const {
  const auto& e = layers_.at(l);
  if (e.mean.defined() || e.sum.defined() || e.rows.empty()) return {};
  return e.rows.size() == 1 ? e.rows[0] : torch::cat(e.rows);
}

void Covariances::release(size_t l) {
  auto& e = layers_.at(l);
  if (e.on_release) e.on_release();
}

std::string model_fingerprint(const std::string& model_dir) {
  auto ck = io::Checkpoint::open(model_dir);
  const auto names = ck.names();  // sorted, so the layout hash does not depend on the shard order
  uint64_t layout = 0x6D6861326D6C61ULL, bytes = 0;
  for (const auto& n : names) {
    const auto& info = ck.info(n);
    layout = hash_string(n + ":" + io::dtype_name(info.dtype) + ":" + shape_str(info.shape), layout);
    bytes += info.nbytes;
  }
  // Whole tensors for layer 0's q/k (tens of MB at 7B), only the first rows of the embedding.
  uint64_t content = 0x77656967687473ULL;
  int hashed = 0;
  for (const std::string n : {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                              "model.embed_tokens.weight"}) {
    if (!ck.has(n)) continue;
    auto t = ck.get(n);
    const auto& info = ck.info(n);
    uint64_t nb = info.nbytes;
    if (n == "model.embed_tokens.weight" && info.shape.size() == 2 && info.shape[0] > 16) nb = nb / info.shape[0] * 16;
    content = hash_bytes(static_cast<const uint8_t*>(t.data_ptr()), nb, content);
    t = torch::Tensor();
    ck.release(n);
    ++hashed;
  }
  check(hashed > 0, "checkpoint " + model_dir + " has none of the tensors that identify a Llama-family model");
  char buf[96];
  std::snprintf(buf, sizeof buf, "tensors=%zu bytes=%" PRIu64 " layout=%016" PRIx64 " weights=%016" PRIx64, names.size(),
                bytes, layout, content);
  return buf;
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
  check(!s.fingerprint.empty(), "calibration statistics for " + path + " lack the model fingerprint");
  auto scores = two_norm_scores(s, n_kv, /*product=*/true);
  io::NamedTensors small{{"q_norm", s.q_norm.to(torch::kCPU, torch::kFloat32)},
                         {"k_norm", s.k_norm.to(torch::kCPU, torch::kFloat32)},
                         {"scores", scores},
                         {"ranks", ranks_from_scores(scores)}};
  // The covariances first: their fp64 data then start 8-byte aligned, so loading can map them without a copy.
  // Each is computed when written, so at most one [d, d] matrix is in memory.
  const int64_t d = s.cov.dim();
  std::map<std::string, std::string> meta{{"format", kFormat},
                                          {"version", kVersion},
                                          {"fingerprint", s.fingerprint},
                                          {"tokens", std::to_string(s.tokens)},
                                          {"heldout_tokens", std::to_string(s.heldout_tokens)},
                                          {"samples", std::to_string(s.samples)},
                                          {"ctx", std::to_string(s.ctx)},
                                          {"layers", std::to_string(L)}};
  // Each layer as its matrix or as its rows (see Covariances::inputs); fp64 matrices first, so they stay 8-byte
  // aligned; rows are in the model's dtype, at most as many bytes as a matrix.
  std::vector<io::TensorSpec> specs;
  std::vector<std::function<torch::Tensor()>> data;
  for (const auto* c : {&s.cov, &s.cov_heldout}) {
    const std::string base = c == &s.cov ? "cov" : "cov_heldout";
    for (int64_t l = 0; l < L; ++l) {
      if (c->inputs(l).defined()) continue;
      specs.push_back({base + "." + std::to_string(l), io::DType::F64, {d, d}});
      data.push_back([c, l] { return (*c)[l]; });
    }
  }
  for (const auto* c : {&s.cov, &s.cov_heldout}) {
    const std::string base = c == &s.cov ? "cov_rows" : "cov_heldout_rows";
    for (int64_t l = 0; l < L; ++l) {
      auto x = c->inputs(l);
      if (!x.defined()) continue;
      specs.push_back({base + "." + std::to_string(l), io::from_torch(x.scalar_type()), x.sizes().vec()});
      data.push_back([c, l] { return c->inputs(l).to(torch::kCPU).contiguous(); });
    }
  }
  for (const auto& [name, t] : small) {
    specs.push_back({name, io::from_torch(t.scalar_type()), t.sizes().vec()});
    data.push_back([t = t] { return t; });
  }
  io::save_safetensors_streamed(path, specs, [&](size_t i) -> torch::Tensor { return data[i](); }, meta);
}

CalibStats load_calib(const std::string& path) {
  auto file = std::make_shared<io::SafetensorsFile>(path);
  const io::SafetensorsFile& f = *file;
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
  const auto* r0 = f.find("cov_rows.0");
  check((c0 && c0->shape.size() == 2) || (r0 && r0->shape.size() == 2),
        "calibration file " + path + " lacks tensor cov.0 [hidden, hidden] (or cov_rows.0 [tokens, hidden])");
  const int64_t d = c0 && c0->shape.size() == 2 ? c0->shape[0] : r0->shape[1];
  check(d >= 1, "calibration file " + path + ": the covariances have width 0");
  // The covariances stay in the file (mapped; 128 MiB each at 7B width) until a layer needs them.
  auto load_layer = [&](Covariances& into, const std::string& base, int64_t l, int64_t tokens) {
    const std::string m = base + "." + std::to_string(l), r = base + "_rows." + std::to_string(l);
    const auto* mi = file->find(m);
    const auto* ri = file->find(r);
    check(mi || ri, "calibration file " + path + " lacks tensor " + m + " (or " + r + ")");
    check(!(mi && ri), "calibration file " + path + " holds both " + m + " and " + r);
    if (mi) {
      check(mi->dtype == io::DType::F64 && mi->shape == std::vector<int64_t>{d, d},
            "calibration file " + path + ": tensor " + m + " has shape " + shape_str(mi->shape) + " " +
                io::dtype_name(mi->dtype) + ", expected " + shape_str({d, d}) + " F64");
      into.push_back(file->tensor(m), [file, m] { file->release(m); });
      return;
    }
    const bool floating = ri->dtype == io::DType::F64 || ri->dtype == io::DType::F32 || ri->dtype == io::DType::BF16 ||
                          ri->dtype == io::DType::F16;
    check(floating && ri->shape == std::vector<int64_t>{tokens, d},
          "calibration file " + path + ": tensor " + r + " has shape " + shape_str(ri->shape) + " " +
              io::dtype_name(ri->dtype) + ", expected " + shape_str({tokens, d}) + " (tokens × hidden, floating point)");
    into.push_rows(file->tensor(r), [file, r] { file->release(r); });
  };
  for (int64_t l = 0; l < L; ++l) {
    load_layer(s.cov, "cov", l, s.tokens);
    load_layer(s.cov_heldout, "cov_heldout", l, s.heldout_tokens);
  }
  check(f.find("cov." + std::to_string(L)) == nullptr && f.find("cov_rows." + std::to_string(L)) == nullptr,
        "calibration file " + path + " has more covariances than the " + std::to_string(L) + " layers of q_norm");
  return s;
}

void check_calib_matches(const CalibStats& s, const std::string& model_dir, const std::string& path) {
  auto mine = model_fingerprint(model_dir);
  check(s.fingerprint == mine, "calibration file " + path + " was made for another model (file: " + s.fingerprint +
                                   "; model: " + mine + ")");
}

}  // namespace mha2mla::convert
