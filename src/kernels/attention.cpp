#include "kernels/attention.h"

#include <ATen/Parallel.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/attention_args.h"
#include "kernels/attention_internal.h"
#include "kernels/cpu_kernels.h"
#include "util/text.h"
#include "kernels/decode_splits.h"
#include "kernels/scalar_convert.h"
#include "kernels/storage_dtype.h"
#ifdef MHA2MLA_CUDA_KERNELS
#include "kernels/cuda/attention_cuda.h"
#endif

namespace mha2mla::kernels {

bool all_on(const torch::Device& device, std::initializer_list<const torch::Tensor*> ts) {
  for (const auto* t : ts)
    if (t->defined() && t->device() != device) return false;
  return true;
}

[[noreturn]] void fail_arg(const char* fn, const std::string& what) {
  throw std::invalid_argument(std::string("kernels::") + fn + ": " + what);
}

torch::Tensor rows_contiguous(const torch::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

namespace {

std::string shape_str(const torch::Tensor& t) { return t.defined() ? mha2mla::shape_str(t.sizes()) : "undefined"; }

DType dtype_of(const char* fn, const torch::Tensor& t) {
  if (!is_float_storage(t)) fail_arg(fn, std::string("unsupported dtype ") + c10::toString(t.scalar_type()));
  return storage_dtype(t.scalar_type());
}

struct Checked {
  int64_t B, Hq, Hkv, T, S, D, Dv;
};

Checked check_qkv(const char* fn, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                  const torch::Tensor& valid) {
  if (!q.defined() || !k.defined() || !v.defined()) fail_arg(fn, "q, k and v must be defined");
  if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4)
    fail_arg(fn, "q, k, v must be 4-d [B, H, T|S, D]; got q " + shape_str(q) + ", k " + shape_str(k) + ", v " +
                 shape_str(v));
  Checked c{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3), v.size(3)};
  if (k.size(0) != c.B || v.size(0) != c.B || v.size(1) != c.Hkv || v.size(2) != c.S || k.size(3) != c.D)
    fail_arg(fn, "shapes disagree: q " + shape_str(q) + ", k " + shape_str(k) + ", v " + shape_str(v));
  if (c.Hkv == 0 || c.Hq % c.Hkv != 0)
    fail_arg(fn, "query heads (" + std::to_string(c.Hq) + ") must be a multiple of KV heads (" + std::to_string(c.Hkv) + ")");
  // q may be wider than the cache (f32 compute over a bf16 or f16 cache): the kernels widen k and v as they read.
  if (v.scalar_type() != k.scalar_type()) fail_arg(fn, "k and v must share one dtype");
  if (valid.defined() && (valid.scalar_type() != torch::kBool || valid.dim() != 2 || valid.size(0) != c.B ||
                          valid.size(1) != c.S))
    fail_arg(fn, "valid must be bool [B, S] = [" + std::to_string(c.B) + ", " + std::to_string(c.S) + "]; got " +
                 shape_str(valid));
  return c;
}

thread_local const char* last_decode = "";

}  // namespace

void merge_partials(const float* part, int64_t nsplit, int64_t R, int64_t Dv, DType t, void* out, float* o) {
  const int64_t stride = R * (Dv + 2);
  for (int64_t r = 0; r < R; ++r) {
    float M = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < nsplit; ++i) M = std::max(M, part[i * stride + r]);
    for (int64_t d = 0; d < Dv; ++d) o[d] = 0.f;
    float L = 0.f;
    for (int64_t i = 0; i < nsplit && M != -std::numeric_limits<float>::infinity(); ++i) {  // none visible: 0
      const float m = part[i * stride + r];
      if (m == -std::numeric_limits<float>::infinity()) continue;
      const float w = std::exp2(m - M);
      L += w * part[i * stride + R + r];
      const float* acc = part + i * stride + 2 * R + r * Dv;
      for (int64_t d = 0; d < Dv; ++d) o[d] += w * acc[d];
    }
    const float inv = L > 0.f ? 1.f / L : 0.f;
    for (int64_t d = 0; d < Dv; ++d) store_elem(out, r * Dv + d, t, o[d] * inv);
  }
}


Operand operand(const torch::Tensor& t) {  // [B, H, rows, dim]
  return Operand{t.data_ptr(), t.stride(0), t.stride(1), t.stride(2)};
}

DecodeSplits DecodeSplits::plan(const AttnArgs& a, int64_t threads) {
  DecodeSplits p;
  p.rows = a.Hq / a.groups * a.T;
  p.groups = a.B * a.groups;
  p.part_floats = p.rows * (a.Dv + 2);
  p.lo = a.window > 0 ? std::max<int64_t>(0, a.start - a.window + 1) : 0;
  p.hi = std::min(a.S, a.start + a.T);
  const int64_t span = std::max<int64_t>(p.hi - p.lo, 1);
  int64_t nsplit = std::max<int64_t>(1, (4 * threads + p.groups - 1) / std::max<int64_t>(p.groups, 1));
  nsplit = std::min(nsplit, std::max<int64_t>(1, span / 256));
  p.chunk = ((span + nsplit - 1) / nsplit + 31) / 32 * 32;
  p.nsplit = (span + p.chunk - 1) / p.chunk;
  return p;
}

void DecodeSplits::run(const AttnArgs& a, const AttnKernels& kern, int64_t i, float* partials,
                       std::atomic<int64_t>* done, float* scratch) const {
  const int64_t sp = i % nsplit, bg = i / nsplit, b = bg / a.groups, grp = bg % a.groups;
  float* base = partials + i * part_floats;
  const int64_t s0 = lo + sp * chunk, s1 = std::min(hi, s0 + chunk);
  kern.decode_split(a, b, grp, s0, s1, Partial{base, base + rows, base + 2 * rows});
  if (done[bg].fetch_add(1, std::memory_order_acq_rel) != nsplit - 1) return;
  // out [B, Hq, T, Dv]: rows of a group are (head, t), so each group's block is contiguous.
  merge_partials(partials + bg * nsplit * part_floats, nsplit, rows, a.Dv, a.dtype,
                 static_cast<char*>(a.out) + bg * rows * a.Dv * elem_size(a.dtype), scratch);
}

torch::Tensor run_decode(AttnArgs& a, const AttnKernels& kern, const torch::TensorOptions& opt) {
  note_cpu_decode();
  const int64_t threads = at::get_num_threads();
  const auto p = DecodeSplits::plan(a, threads);
  // One buffer: the partials, then f32 scratch of Dv per thread for the merge.
  thread_local std::vector<float> buf;
  const int64_t threads_max = threads + 1;
  const size_t need = static_cast<size_t>(p.partial_floats() + threads_max * a.Dv);
  if (buf.size() < need) buf.resize(need);
  float* partials = buf.data();  // buf is the calling thread's: the workers get the pointer
  float* scratch = partials + p.partial_floats();
  auto out = torch::empty({a.B, a.Hq, a.T, a.Dv}, opt);
  a.out = out.data_ptr();
  std::vector<std::atomic<int64_t>> done(static_cast<size_t>(p.groups));
  for (auto& d : done) d.store(0, std::memory_order_relaxed);
  run_items(p.items(), [&](int64_t i) {
    const int64_t tid = std::min<int64_t>(at::get_thread_num(), threads_max - 1);
    p.run(a, kern, i, partials, done.data(), scratch + tid * a.Dv);
  });
  return out;
}

bool cuda_kernels_built() {
#ifdef MHA2MLA_CUDA_KERNELS
  return true;
#else
  return false;
#endif
}

const char* last_decode_kernel() { return last_decode; }

void note_reference_decode() { last_decode = "reference"; }
void note_cpu_decode() { last_decode = "cpu"; }

torch::Tensor run_decode_cuda(AttnArgs& a, const torch::TensorOptions& opt) {
#ifdef MHA2MLA_CUDA_KERNELS
  cuda::DecodePlan p;
  const int device = opt.device().index();
  if (!cuda::plan_decode(a, device, &p).empty()) return {};
  auto out = torch::empty({a.B, a.Hq, a.T, a.Dv}, opt);
  auto workspace = torch::empty({p.workspace_floats(a)}, opt.dtype(torch::kFloat32));
  a.out = out.data_ptr();
  const std::string err = cuda::run_decode(a, p, device, workspace.data_ptr<float>());
  if (!err.empty()) throw std::runtime_error("kernels: CUDA decode attention: " + err);
  last_decode = "cuda";
  return out;
#else
  (void)a, (void)opt;
  return {};
#endif
}

Route route(Variant v, const torch::Tensor& q, std::initializer_list<const torch::Tensor*> operands) {
  v = resolve_variant(v);
  if (v == Variant::Reference) return {Route::Reference, v};
  if (q.device().is_cuda() && all_on(q.device(), operands)) return {Route::Cuda, v};
  if (all_on(torch::kCPU, operands)) return {Route::Cpu, v};
  return {Route::Reference, v};
}

torch::Tensor visibility(int64_t T, int64_t S, int64_t start, const torch::Tensor& valid, int64_t window,
                         torch::Device device) {
  auto opt = torch::TensorOptions().dtype(torch::kInt64).device(device);
  auto q_slot = torch::arange(start, start + T, opt).view({1, T, 1});
  auto k_slot = torch::arange(0, S, opt).view({1, 1, S});
  auto vis = k_slot <= q_slot;
  if (window > 0) vis = vis & (k_slot > q_slot - window);
  if (valid.defined()) vis = vis & valid.to(device).view({valid.size(0), 1, S});
  return vis;
}

namespace {
// softmax over the last dim of f32 scores with -inf where not visible; rows with nothing visible -> 0.
torch::Tensor masked_softmax(const torch::Tensor& scores, const torch::Tensor& vis) {
  auto s = scores.masked_fill(vis.logical_not(), -std::numeric_limits<float>::infinity());
  auto p = torch::softmax(s, -1);
  return p.masked_fill(vis.logical_not(), 0.0);  // all-masked rows were NaN; every entry there is masked
}
}  // namespace

torch::Tensor attention_reference(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                  int64_t start, const torch::Tensor& valid, int64_t window, double scale) {
  const auto c = check_qkv("attention_reference", q, k, v, valid);
  const int64_t g = c.Hq / c.Hkv;
  auto qf = q.to(torch::kFloat32).reshape({c.B, c.Hkv, g * c.T, c.D});
  auto scores = torch::matmul(qf, k.to(torch::kFloat32).transpose(2, 3)).mul(scale);  // [B, Hkv, g*T, S]
  scores = scores.view({c.B, c.Hkv, g, c.T, c.S});
  auto vis = visibility(c.T, c.S, start, valid, window, q.device()).view({-1, 1, 1, c.T, c.S});
  auto probs = masked_softmax(scores, vis).view({c.B, c.Hkv, g * c.T, c.S});
  return torch::matmul(probs, v.to(torch::kFloat32)).view({c.B, c.Hq, c.T, c.Dv}).to(q.scalar_type());
}

torch::Tensor flash_attention(const torch::Tensor& q_in, const torch::Tensor& k_in, const torch::Tensor& v_in,
                              int64_t start, const torch::Tensor& valid_in, int64_t window, double scale,
                              Variant variant) {
  const auto c = check_qkv("flash_attention", q_in, k_in, v_in, valid_in);
  const Route r = route(variant, q_in, {&q_in, &k_in, &v_in, &valid_in});
  if (r.kind == Route::Cuda && c.B * c.Hq * c.T > 0 && c.Dv > 0) {
    // The decode kernel with every query row: its blocks of rows skip the keys after their last token.
    auto q = rows_contiguous(q_in), k = rows_contiguous(k_in), v = rows_contiguous(v_in);
    auto valid = valid_in.defined() ? valid_in.contiguous() : valid_in;
    AttnArgs a = attention_args("flash_attention", q, k, v, valid, start, window, scale);
    if (auto out = run_decode_cuda(a, q.options()); out.defined()) return out;
  }
  if (r.kind != Route::Cpu) return attention_reference(q_in, k_in, v_in, start, valid_in, window, scale);
  variant = r.variant;
  auto q = rows_contiguous(q_in), k = rows_contiguous(k_in), v = rows_contiguous(v_in);
  auto valid = valid_in.defined() ? valid_in.contiguous() : valid_in;
  auto out = torch::empty({c.B, c.Hq, c.T, c.Dv}, q.options());
  if (c.B * c.Hq * c.T == 0 || c.Dv == 0) return out;
  AttnArgs a = attention_args("flash_attention", q, k, v, valid, start, window, scale);
  a.out = out.data_ptr();
  // vdpbf16ps works on pairs along D.
  if (variant == Variant::Avx512Bf16 && a.dtype == DType::BF16 && c.D % 2 != 0) variant = Variant::Avx512;
  const auto& kern = *cpu_kernels(variant).attn;
  // Query tiles of about 64-96 rows (g heads x tq tokens); smaller when that leaves threads idle.
  const int64_t g = c.Hq / c.Hkv, threads = at::get_num_threads();
  // f32 tiles take twice the cache of bf16 ones: fewer rows keep Q, scores and accumulators near L1.
  const int64_t target_rows = a.dtype == DType::F32 ? 64 : 96;
  int64_t tq = std::max<int64_t>(1, target_rows / g);
  while (tq > 8 && c.B * c.Hkv * ((c.T + tq - 1) / tq) < 4 * threads) tq /= 2;
  tq = std::min(tq, c.T);
  const int64_t ntiles = (c.T + tq - 1) / tq, per_tile = c.B * c.Hkv;
  // Later tiles see more keys: hand them out first.
  run_items(ntiles * per_tile, [&](int64_t i) {
    const int64_t tile = ntiles - 1 - i / per_tile, bh = i % per_tile;
    const int64_t t0 = tile * tq;
    kern.prefill_tile(a, bh / c.Hkv, bh % c.Hkv, t0, std::min(tq, c.T - t0));
  });
  return out;
}

torch::Tensor decode_attention(const torch::Tensor& q_in, const torch::Tensor& k_in, const torch::Tensor& v_in,
                               int64_t start, const torch::Tensor& valid_in, int64_t window, double scale,
                               Variant variant) {
  const auto c = check_qkv("decode_attention", q_in, k_in, v_in, valid_in);
  const Route r = route(variant, q_in, {&q_in, &k_in, &v_in, &valid_in});
  auto reference = [&] { return attention_reference(q_in, k_in, v_in, start, valid_in, window, scale); };
  if (r.kind == Route::Reference) return run_reference_decode(reference);
  auto q = rows_contiguous(q_in), k = rows_contiguous(k_in), v = rows_contiguous(v_in);
  auto valid = valid_in.defined() ? valid_in.contiguous() : valid_in;
  if (c.B * c.Hq * c.T == 0 || c.Dv == 0) return torch::zeros({c.B, c.Hq, c.T, c.Dv}, q.options());
  AttnArgs a = attention_args("decode_attention", q, k, v, valid, start, window, scale);
  return run_routed_decode(r, a, q.options(), reference);
}

torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, int64_t start,
                        const torch::Tensor& valid, int64_t window, double scale, Variant variant) {
  const int64_t rows = q.dim() == 4 && k.dim() == 4 && k.size(1) > 0 ? q.size(1) / k.size(1) * q.size(2) : 0;
  if (rows <= 32) return decode_attention(q, k, v, start, valid, window, scale, variant);
  return flash_attention(q, k, v, start, valid, window, scale, variant);
}

namespace {
struct MlaChecked {
  int64_t B, Hq, T, L, r, S, Hkv;
};

MlaChecked check_mla(const char* fn, const torch::Tensor& q_lat, const torch::Tensor& q_rope, const torch::Tensor& c,
                     const torch::Tensor& k_r, const torch::Tensor& valid) {
  if (!q_lat.defined() || !c.defined() || q_lat.dim() != 4 || c.dim() != 3)
    fail_arg(fn, "need q_lat [B, Hq, T, L] and c [B, S, L]; got q_lat " + shape_str(q_lat) + ", c " + shape_str(c));
  MlaChecked m{q_lat.size(0), q_lat.size(1), q_lat.size(2), q_lat.size(3), 0, c.size(1), 1};
  if (c.size(0) != m.B || c.size(2) != m.L)
    fail_arg(fn, "c " + shape_str(c) + " does not match q_lat " + shape_str(q_lat));
  if (q_rope.defined() != k_r.defined()) fail_arg(fn, "q_rope and k_r must both be given or both be undefined");
  if (q_rope.defined()) {
    if (q_rope.dim() != 4 || k_r.dim() != 4 || q_rope.size(0) != m.B || q_rope.size(1) != m.Hq ||
        q_rope.size(2) != m.T || k_r.size(0) != m.B || k_r.size(2) != m.S || k_r.size(3) != q_rope.size(3))
      fail_arg(fn, "q_rope " + shape_str(q_rope) + " / k_r " + shape_str(k_r) + " do not match q_lat " +
                   shape_str(q_lat) + " and c " + shape_str(c));
    m.r = q_rope.size(3);
    m.Hkv = k_r.size(1);
    if (m.Hkv == 0 || m.Hq % m.Hkv != 0) fail_arg(fn, "query heads must be a multiple of k_r heads");
    if (q_rope.scalar_type() != q_lat.scalar_type()) fail_arg(fn, "q_lat and q_rope must share one dtype");
    if (k_r.scalar_type() != c.scalar_type()) fail_arg(fn, "c and k_r must share one dtype");
  }
  if (valid.defined() && (valid.scalar_type() != torch::kBool || valid.dim() != 2 || valid.size(0) != m.B ||
                          valid.size(1) != m.S))
    fail_arg(fn, "valid must be bool [B, S]; got " + shape_str(valid));
  return m;
}
}  // namespace

AttnArgs attention_args(const char* fn, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& valid, int64_t start, int64_t window, double scale) {
  const auto c = check_qkv(fn, q, k, v, valid);
  AttnArgs a;
  a.dtype = dtype_of(fn, q);
  a.kv_dtype = dtype_of(fn, k);
  a.B = c.B, a.Hq = c.Hq, a.Hkv = c.Hkv, a.groups = c.Hkv, a.T = c.T, a.S = c.S;
  a.D1 = c.D, a.Dv = c.Dv, a.start = start, a.window = window, a.scale = static_cast<float>(scale);
  a.q1 = operand(q), a.k1 = operand(k), a.v = operand(v);
  a.valid = valid.defined() ? valid.data_ptr<bool>() : nullptr;
  return a;
}

AttnArgs mla_decode_args(const torch::Tensor& q_lat, const torch::Tensor& q_rope, const torch::Tensor& c,
                         const torch::Tensor& k_r, const torch::Tensor& valid, int64_t start, int64_t window,
                         double scale) {
  const auto m = check_mla("mla_decode_attention", q_lat, q_rope, c, k_r, valid);
  AttnArgs a;
  a.dtype = dtype_of("mla_decode_attention", q_lat);
  a.kv_dtype = dtype_of("mla_decode_attention", c);
  a.B = m.B, a.Hq = m.Hq, a.Hkv = m.Hkv, a.groups = 1, a.T = m.T, a.S = m.S;
  a.D1 = m.L, a.D2 = m.r, a.Dv = m.L, a.start = start, a.window = window, a.scale = static_cast<float>(scale);
  a.q1 = operand(q_lat);
  a.k1 = Operand{c.data_ptr(), c.stride(0), 0, c.stride(1)};  // one latent head shared by all query heads
  a.v = a.k1;
  if (q_rope.defined()) a.q2 = operand(q_rope), a.k2 = operand(k_r);
  a.valid = valid.defined() ? valid.data_ptr<bool>() : nullptr;
  return a;
}

torch::Tensor mla_decode_reference(const torch::Tensor& q_lat, const torch::Tensor& q_rope, const torch::Tensor& c,
                                   const torch::Tensor& k_r, int64_t start, const torch::Tensor& valid,
                                   int64_t window, double scale) {
  const auto m = check_mla("mla_decode_reference", q_lat, q_rope, c, k_r, valid);
  auto cf = c.to(torch::kFloat32).unsqueeze(1);  // [B, 1, S, L]
  auto scores = torch::matmul(q_lat.to(torch::kFloat32), cf.transpose(2, 3));  // [B, Hq, T, S]
  if (q_rope.defined()) {
    const int64_t g = m.Hq / m.Hkv;
    auto qr = q_rope.to(torch::kFloat32).reshape({m.B, m.Hkv, g * m.T, m.r});
    auto sr = torch::matmul(qr, k_r.to(torch::kFloat32).transpose(2, 3));  // [B, Hkv, g*T, S]
    scores = scores + sr.view({m.B, m.Hq, m.T, m.S});
  }
  scores = scores.mul(scale);
  auto vis = visibility(m.T, m.S, start, valid, window, q_lat.device()).unsqueeze(1);  // [B|1, 1, T, S]
  return torch::matmul(masked_softmax(scores, vis), cf).to(q_lat.scalar_type());
}

torch::Tensor mla_decode_attention(const torch::Tensor& q_lat_in, const torch::Tensor& q_rope_in,
                                   const torch::Tensor& c_in, const torch::Tensor& k_r_in, int64_t start,
                                   const torch::Tensor& valid_in, int64_t window, double scale, Variant variant) {
  const auto m = check_mla("mla_decode_attention", q_lat_in, q_rope_in, c_in, k_r_in, valid_in);
  const Route r = route(variant, q_lat_in, {&q_lat_in, &q_rope_in, &c_in, &k_r_in, &valid_in});
  auto reference = [&] { return mla_decode_reference(q_lat_in, q_rope_in, c_in, k_r_in, start, valid_in, window, scale); };
  if (r.kind == Route::Reference) return run_reference_decode(reference);
  auto q_lat = rows_contiguous(q_lat_in), c = rows_contiguous(c_in);
  auto q_rope = q_rope_in.defined() ? rows_contiguous(q_rope_in) : q_rope_in;
  auto k_r = k_r_in.defined() ? rows_contiguous(k_r_in) : k_r_in;
  auto valid = valid_in.defined() ? valid_in.contiguous() : valid_in;
  if (m.B * m.Hq * m.T == 0 || m.L == 0) return torch::zeros({m.B, m.Hq, m.T, m.L}, q_lat.options());
  AttnArgs a = mla_decode_args(q_lat, q_rope, c, k_r, valid, start, window, scale);
  return run_routed_decode(r, a, q_lat.options(), reference);
}

}  // namespace mha2mla::kernels
