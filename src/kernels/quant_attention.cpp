#include "kernels/quant_attention.h"

#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/attention_internal.h"
#include "kernels/cache_format.h"
#include "kernels/cpu_kernels.h"
#include "kernels/storage_dtype.h"

namespace mha2mla::kernels {
namespace {

// Checks one buffer against its layout; returns D.
int64_t check_quant(const char* name, const QuantizedKV& kv, int64_t B, int64_t H) {
  const std::string n(name);
  const bool e4m3 = kv.codes == Codes::E4M3;
  if (!kv.data.defined() || !kv.scale.defined() || kv.zero.defined() == e4m3 || !kv.residual.defined())
    fail_arg("quantized_decode", n + (e4m3 ? ": data, scale and residual must be given, and no zero point (E4M3 codes)"
                                           : ": data, scale, zero and residual must all be given (residual may have 0 slots)"));
  if (e4m3 ? kv.bits != 8 : kv.bits != 2 && kv.bits != 4 && kv.bits != 8)
    fail_arg("quantized_decode", n + ": bits must be " + (e4m3 ? "8 for E4M3 codes" : "2, 4 or 8") + ", got " + std::to_string(kv.bits));
  if (kv.group <= 0) fail_arg("quantized_decode", n + ": group must be positive");
  if (kv.residual.dim() != 4 || kv.residual.size(0) != B || kv.residual.size(1) != H)
    fail_arg("quantized_decode", n + ": residual must be [B, H, R, D] with B = " + std::to_string(B) + ", H = " + std::to_string(H));
  const int64_t D = kv.residual.size(3);
  if (kv.data.scalar_type() != torch::kUInt8 || kv.data.dim() != 4 || kv.data.size(0) != B || kv.data.size(1) != H ||
      kv.data.size(2) < kv.n_quant || kv.data.size(3) != (D * kv.bits + 7) / 8)
    fail_arg("quantized_decode", n + ": data must be uint8 [B, H, >= n_quant, ceil(D * bits / 8)] = [" + std::to_string(B) + ", " +
         std::to_string(H) + ", " + std::to_string(kv.n_quant) + ", " + std::to_string((D * kv.bits + 7) / 8) + "]");
  if (e4m3 && (kv.scale.scalar_type() != torch::kFloat32 || kv.scale.dim() != 4 || kv.scale.size(0) != B ||
               kv.scale.size(1) != H))
    fail_arg("quantized_decode", n + ": scale must be f32 [B, H, ., .] for E4M3 codes");
  if (!e4m3 && (kv.scale.scalar_type() != torch::kFloat16 || kv.zero.scalar_type() != torch::kFloat16 ||
                kv.scale.sizes() != kv.zero.sizes() || kv.scale.dim() != 4 || kv.scale.size(0) != B ||
                kv.scale.size(1) != H))
    fail_arg("quantized_decode", n + ": scale and zero must be f16 [B, H, ., .] of one shape");
  if (kv.per_channel) {
    if (kv.n_quant % kv.group != 0) fail_arg("quantized_decode", n + ": per-channel n_quant must be a multiple of group");
    if (kv.scale.size(2) < kv.n_quant / kv.group || kv.scale.size(3) != D)
      fail_arg("quantized_decode", n + ": per-channel scale must be [B, H, >= n_quant / group, D]");
  } else if (kv.scale.size(2) < kv.n_quant || kv.scale.size(3) != (D + kv.group - 1) / kv.group) {
    fail_arg("quantized_decode", n + ": per-token scale must be [B, H, >= n_quant, ceil(D / group)]");
  }
  if (kv.n_quant < 0) fail_arg("quantized_decode", n + ": n_quant must be >= 0");
  return D;
}

// The 256 E4M3 codes' values, f32, on `device` (NaN for the two NaN codes); built once.
torch::Tensor e4m3_values(const torch::Device& device) {
  static const torch::Tensor values = [] {
    std::vector<float> v(256);
    for (int c = 0; c < 256; ++c) v[c] = e4m3_value(static_cast<uint8_t>(c));
    return torch::tensor(v);
  }();
  return values.to(device);
}

QuantDesc desc_of(const QuantizedKV& kv, const torch::Tensor& data, const torch::Tensor& scale,
                  const torch::Tensor& zero, const torch::Tensor& residual) {
  QuantDesc d = code_desc(kv.codes, kv.bits, kv.group, kv.per_channel, data, scale, zero);
  d.n_quant = kv.n_quant;
  d.residual = operand(residual);
  return d;
}

void check_valid(const torch::Tensor& valid, int64_t B, int64_t S) {
  if (valid.defined() && (valid.scalar_type() != torch::kBool || valid.dim() != 2 || valid.size(0) != B ||
                          valid.size(1) != S))
    fail_arg("quantized_decode", "valid must be bool [B, S] with S = " + std::to_string(S));
}

// A buffer's descriptor over tensors whose rows are contiguous; `keep` holds any copies made for that.
QuantDesc buffer_desc(const QuantizedKV& kv, std::vector<torch::Tensor>& keep) {
  auto d = rows_contiguous(kv.data), sc = rows_contiguous(kv.scale), r = rows_contiguous(kv.residual);
  auto z = kv.zero.defined() ? rows_contiguous(kv.zero) : kv.zero;
  if (z.defined() && sc.strides() != z.strides()) z = z.contiguous(), sc = sc.contiguous();  // one stride set for both
  keep.insert(keep.end(), {d, sc, z, r});
  return desc_of(kv, d, sc, z, r);
}

}  // namespace

QuantDesc code_desc(Codes codes, int64_t bits, int64_t group, bool per_channel, const torch::Tensor& data,
                    const torch::Tensor& scale, const torch::Tensor& zero) {
  QuantDesc d;
  d.codes = codes;
  d.data = data.data_ptr<uint8_t>();
  d.d_sb = data.stride(0), d.d_sh = data.stride(1), d.d_sr = data.stride(2);
  if (codes == Codes::E4M3) {
    d.scale32 = scale.data_ptr<float>();
  } else {
    d.scale = reinterpret_cast<const uint16_t*>(scale.data_ptr());
    d.zero = reinterpret_cast<const uint16_t*>(zero.data_ptr());
  }
  d.s_sb = scale.stride(0), d.s_sh = scale.stride(1), d.s_sr = scale.stride(2);
  d.bits = static_cast<int>(bits), d.group = group, d.per_channel = per_channel;
  return d;
}

torch::Tensor dequantize_reference(const QuantizedKV& kv) {
  const int64_t B = kv.residual.size(0), H = kv.residual.size(1);
  const int64_t D = check_quant("dequantize", kv, B, H);
  const int64_t Sq = kv.n_quant;
  auto data = kv.data.narrow(2, 0, Sq).to(torch::kInt64);
  torch::Tensor values;  // [B, H, Sq, D] f32: the codes' values before scaling
  if (kv.codes == Codes::E4M3) {
    values = e4m3_values(data.device()).index({data});
  } else {
    const int64_t per_byte = 8 / kv.bits;
    auto shifts = torch::arange(0, 8, kv.bits, data.options());  // value i of a byte at bit i * bits
    auto codes = data.unsqueeze(-1).bitwise_right_shift(shifts).bitwise_and((1 << kv.bits) - 1);
    values = codes.reshape({B, H, Sq, kv.data.size(3) * per_byte}).narrow(3, 0, D).to(torch::kFloat32);  // Sq may be 0
  }
  // A group's scale (and zero) spread over its values.
  auto spread = [&](const torch::Tensor& t) {
    if (kv.per_channel) return t.narrow(2, 0, Sq / kv.group).repeat_interleave(kv.group, 2).to(torch::kFloat32);
    return t.narrow(2, 0, Sq).repeat_interleave(kv.group, 3).narrow(3, 0, D).to(torch::kFloat32);
  };
  auto x = values * spread(kv.scale);
  if (kv.zero.defined()) x = x + spread(kv.zero);
  return torch::cat({x, kv.residual.to(torch::kFloat32)}, 2);
}

torch::Tensor quantized_decode_reference(const torch::Tensor& q, const QuantizedKV& k, const QuantizedKV& v,
                                         int64_t start, const torch::Tensor& valid, int64_t window, double scale) {
  return attention_reference(q.to(torch::kFloat32), dequantize_reference(k), dequantize_reference(v), start, valid,
                             window, scale)
      .to(q.scalar_type());
}

torch::Tensor quantized_decode_attention(const torch::Tensor& q_in, const QuantizedKV& k, const QuantizedKV& v,
                                         int64_t start, const torch::Tensor& valid_in, int64_t window, double scale,
                                         Variant variant) {
  if (!q_in.defined() || q_in.dim() != 4) fail_arg("quantized_decode", "q must be [B, Hq, T, D]");
  const int64_t B = q_in.size(0), Hq = q_in.size(1);
  const int64_t Hkv = k.residual.defined() && k.residual.dim() == 4 ? k.residual.size(1) : 0;
  const int64_t D = check_quant("k", k, B, Hkv);
  check_quant("v", v, B, Hkv);
  if (Hkv == 0 || Hq % Hkv != 0) fail_arg("quantized_decode", "query heads must be a multiple of KV heads");
  if (q_in.size(3) != D) fail_arg("quantized_decode", "q's last dim must equal the key width " + std::to_string(D));
  const int64_t S = k.n_quant + k.residual.size(2);
  if (v.n_quant + v.residual.size(2) != S) fail_arg("quantized_decode", "k and v must hold the same number of slots");
  if (!is_float_storage(k.residual) || v.residual.scalar_type() != k.residual.scalar_type())
    fail_arg("quantized_decode", "the residual buffers must share one float dtype (f32, bf16 or f16)");
  check_valid(valid_in, B, S);
  const Route r = route(variant, q_in, {&q_in, &valid_in, &k.data, &k.scale, &k.zero, &k.residual, &v.data, &v.scale,
                                        &v.zero, &v.residual});
  auto reference = [&] { return quantized_decode_reference(q_in, k, v, start, valid_in, window, scale); };
  if (r.kind == Route::Reference) return run_reference_decode(reference);
  if (q_in.scalar_type() != torch::kFloat32 && q_in.scalar_type() != torch::kBFloat16 &&
      q_in.scalar_type() != torch::kFloat16)
    fail_arg("quantized_decode", "q must be f32, bf16 or f16");
  QuantArgs qa;
  quantized_decode_args(qa, q_in, k, v, valid_in, start, window, scale);
  return run_routed_decode(r, qa.a, q_in.options(), reference);
}

void quantized_decode_args(QuantArgs& qa, const torch::Tensor& q_in, const QuantizedKV& k, const QuantizedKV& v,
                           const torch::Tensor& valid_in, int64_t start, int64_t window, double scale) {
  const auto q = rows_contiguous(q_in);
  const auto valid = valid_in.defined() ? valid_in.contiguous() : valid_in;
  qa.keep = {q, valid};
  qa.k = buffer_desc(k, qa.keep), qa.v = buffer_desc(v, qa.keep);
  AttnArgs& a = qa.a;
  a.dtype = storage_dtype(q.scalar_type());
  a.kv_dtype = storage_dtype(k.residual.scalar_type());
  a.B = q.size(0), a.Hq = q.size(1), a.Hkv = k.residual.size(1), a.groups = a.Hkv, a.T = q.size(2);
  a.S = k.n_quant + k.residual.size(2);
  a.D1 = k.residual.size(3), a.Dv = v.residual.size(3), a.start = start, a.window = window;
  a.scale = static_cast<float>(scale);
  a.q1 = operand(q);
  a.kq = &qa.k, a.vq = &qa.v;
  a.valid = valid.defined() ? valid.data_ptr<bool>() : nullptr;
}

torch::Tensor quantized_mla_decode_reference(const torch::Tensor& q_lat, const torch::Tensor& q_rope,
                                             const QuantizedKV& c, const QuantizedKV& k_r, int64_t start,
                                             const torch::Tensor& valid, int64_t window, double scale) {
  auto cf = dequantize_reference(c).select(1, 0);  // [B, S, L]
  return mla_decode_reference(q_lat.to(torch::kFloat32), q_rope.to(torch::kFloat32), cf, dequantize_reference(k_r),
                              start, valid, window, scale)
      .to(q_lat.scalar_type());
}

torch::Tensor quantized_mla_decode_attention(const torch::Tensor& q_lat_in, const torch::Tensor& q_rope_in,
                                             const QuantizedKV& c, const QuantizedKV& k_r, int64_t start,
                                             const torch::Tensor& valid_in, int64_t window, double scale,
                                             Variant variant) {
  if (!q_lat_in.defined() || q_lat_in.dim() != 4 || !q_rope_in.defined() || q_rope_in.dim() != 4)
    fail_arg("quantized_decode", "q_lat and q_rope must be [B, Hq, T, L] and [B, Hq, T, r]");
  const int64_t B = q_lat_in.size(0), Hq = q_lat_in.size(1), T = q_lat_in.size(2);
  const int64_t Hkv = k_r.residual.defined() && k_r.residual.dim() == 4 ? k_r.residual.size(1) : 0;
  const int64_t L = check_quant("c", c, B, 1), r = check_quant("k_r", k_r, B, Hkv);
  if (Hkv == 0 || Hq % Hkv != 0) fail_arg("quantized_decode", "query heads must be a multiple of the rotary key heads");
  if (q_lat_in.size(3) != L || q_rope_in.size(3) != r || q_rope_in.size(0) != B || q_rope_in.size(1) != Hq ||
      q_rope_in.size(2) != T)
    fail_arg("quantized_decode", "q_lat / q_rope do not match the latent width " + std::to_string(L) + " and rotary width " + std::to_string(r));
  const int64_t S = c.n_quant + c.residual.size(2);
  if (k_r.n_quant + k_r.residual.size(2) != S) fail_arg("quantized_decode", "c and k_r must hold the same number of slots");
  if (q_rope_in.scalar_type() != q_lat_in.scalar_type()) fail_arg("quantized_decode", "q_lat and q_rope must share one dtype");
  if (!is_float_storage(c.residual) || k_r.residual.scalar_type() != c.residual.scalar_type())
    fail_arg("quantized_decode", "the residual buffers must share one float dtype (f32, bf16 or f16)");
  check_valid(valid_in, B, S);
  const Route where = route(variant, q_lat_in, {&q_lat_in, &q_rope_in, &valid_in, &c.data, &c.scale, &c.zero,
                                                &c.residual, &k_r.data, &k_r.scale, &k_r.zero, &k_r.residual});
  auto reference = [&] {
    return quantized_mla_decode_reference(q_lat_in, q_rope_in, c, k_r, start, valid_in, window, scale);
  };
  if (where.kind == Route::Reference) return run_reference_decode(reference);
  if (q_lat_in.scalar_type() != torch::kFloat32 && q_lat_in.scalar_type() != torch::kBFloat16 &&
      q_lat_in.scalar_type() != torch::kFloat16)
    fail_arg("quantized_decode", "q must be f32, bf16 or f16");
  QuantArgs qa;
  quantized_mla_decode_args(qa, q_lat_in, q_rope_in, c, k_r, valid_in, start, window, scale);
  return run_routed_decode(where, qa.a, q_lat_in.options(), reference);
}

void quantized_mla_decode_args(QuantArgs& qa, const torch::Tensor& q_lat_in, const torch::Tensor& q_rope_in,
                               const QuantizedKV& c, const QuantizedKV& k_r, const torch::Tensor& valid_in,
                               int64_t start, int64_t window, double scale) {
  const auto q_lat = rows_contiguous(q_lat_in), q_rope = rows_contiguous(q_rope_in);
  const auto valid = valid_in.defined() ? valid_in.contiguous() : valid_in;
  qa.keep = {q_lat, q_rope, valid};
  qa.k = buffer_desc(c, qa.keep);
  qa.k.d_sh = qa.k.s_sh = qa.k.residual.sh = 0;  // one latent head shared by every query head
  qa.k2 = buffer_desc(k_r, qa.keep);
  AttnArgs& a = qa.a;
  a.dtype = storage_dtype(q_lat.scalar_type());
  a.kv_dtype = storage_dtype(c.residual.scalar_type());
  a.B = q_lat.size(0), a.Hq = q_lat.size(1), a.Hkv = k_r.residual.size(1), a.groups = 1, a.T = q_lat.size(2);
  a.S = c.n_quant + c.residual.size(2);
  a.D1 = c.residual.size(3), a.D2 = k_r.residual.size(3), a.Dv = a.D1, a.start = start, a.window = window;
  a.scale = static_cast<float>(scale);
  a.q1 = operand(q_lat), a.q2 = operand(q_rope);
  a.kq = &qa.k, a.vq = &qa.k, a.k2q = &qa.k2;
  a.valid = valid.defined() ? valid.data_ptr<bool>() : nullptr;
}

}  // namespace mha2mla::kernels
