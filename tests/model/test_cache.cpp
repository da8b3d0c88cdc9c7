// The typed cache: quantization round trips per type, the packing layout derived by hand, the residual
// hand-over at its boundary, and exact byte accounting.
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/cache_format.h"
#include "model/kv_cache.h"
#include "model/quant.h"
#include "model/transformer.h"
#include "testing/tiny_model.h"
#include "testing/files.h"

using namespace mha2mla;
using model::CacheType;
using model::QuantAxis;

namespace {

torch::Tensor randn(std::vector<int64_t> shape, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return at::normal(0.0, 1.0, shape, gen, torch::TensorOptions().dtype(torch::kFloat32));
}

// Every element is within half a quantization step of its group's scale (plus f16 rounding of scale/zero).
void expect_within_half_step(const torch::Tensor& x, const torch::Tensor& back, const model::QuantBlock& q,
                             int64_t group, QuantAxis axis) {
  auto s = q.scale.to(torch::kFloat32);
  torch::Tensor step;
  if (axis == QuantAxis::Token) {
    step = s.repeat_interleave(group, 3).narrow(3, 0, x.size(3));
  } else {
    step = s.repeat_interleave(group, 2);
  }
  auto err = (x - back).abs();
  auto bound = step * 0.5 + 1e-3 * (x.abs() + 1.0);  // f16 zero point: relative 2^-11
  EXPECT_TRUE((err <= bound).all().item<bool>()) << "max excess " << (err - bound).max().item<double>();
}

CacheType int_type(int bits) { return bits == 8 ? CacheType::Int8 : bits == 4 ? CacheType::Int4 : CacheType::Int2; }

}  // namespace

class QuantTypes : public ::testing::TestWithParam<std::tuple<int, QuantAxis>> {};

TEST_P(QuantTypes, RoundTripWithinHalfAStep) {
  auto [bits, axis] = GetParam();
  const int64_t group = 16;
  auto x = randn({2, 3, 32, 40}, 7) * 3.0;  // 40 channels: the last per-token group holds 8
  auto q = model::quantize(x, int_type(bits), group, axis);
  EXPECT_EQ(q.data.size(3), (40 * bits + 7) / 8);
  EXPECT_EQ(q.data.scalar_type(), torch::kUInt8);
  EXPECT_EQ(q.scale.scalar_type(), torch::kFloat16);
  auto back = model::dequantize(q, int_type(bits), group, axis, 40, torch::kFloat32);
  ASSERT_EQ(back.sizes(), x.sizes());
  expect_within_half_step(x, back, q, group, axis);
  // More bits, smaller error: the mean error roughly halves per extra bit.
  const double mean_err = (x - back).abs().mean().item<double>();
  const double range = 6.0 * 3.0;  // about the span of a group of N(0, 9) values
  EXPECT_LT(mean_err, range / ((1 << bits) - 1));
  EXPECT_GT(mean_err, range / ((1 << bits) - 1) / 40);
}

INSTANTIATE_TEST_SUITE_P(Cache, QuantTypes,
                         ::testing::Combine(::testing::Values(8, 4, 2),
                                            ::testing::Values(QuantAxis::Token, QuantAxis::Channel)));

TEST(Quant, PackingLayoutByHand) {
  // One token, four channels 0, 1, 2, 3 in one group: min 0, max 3, so at 2 bits scale 1 and q = x.
  // Low bits first: 0 | 1 << 2 | 2 << 4 | 3 << 6 = 228.
  auto x = torch::tensor({0.f, 1.f, 2.f, 3.f}).view({1, 1, 1, 4});
  auto q2 = model::quantize(x, int_type(2), 4, QuantAxis::Token);
  EXPECT_EQ(q2.data.item<uint8_t>(), 228);
  EXPECT_EQ(q2.scale.item<float>(), 1.0f);
  EXPECT_EQ(q2.zero.item<float>(), 0.0f);
  // At 4 bits the scale is 3/15 = 0.2 (0.19995 in f16), q = 0, 5, 10, 15: bytes 0 | 5 << 4 = 80, 10 | 15 << 4 = 250.
  auto q4 = model::quantize(x, int_type(4), 4, QuantAxis::Token);
  ASSERT_EQ(q4.data.numel(), 2);
  EXPECT_EQ(q4.data.flatten()[0].item<uint8_t>(), 80);
  EXPECT_EQ(q4.data.flatten()[1].item<uint8_t>(), 250);
  // A constant group has scale 0 and comes back exactly.
  auto c = torch::full({1, 1, 1, 4}, 1.5f);
  auto qc = model::quantize(c, int_type(4), 4, QuantAxis::Token);
  EXPECT_TRUE(torch::equal(model::dequantize(qc, int_type(4), 4, QuantAxis::Token, 4, torch::kFloat32), c));
  // An odd width at 4 bits: 5 values fill 3 bytes, the last high nibble 0.
  auto q5 = model::quantize(torch::arange(5, torch::kFloat32).view({1, 1, 1, 5}), CacheType::Int4, 8, QuantAxis::Token);
  EXPECT_EQ(q5.data.size(3), 3);
}

// HQQ fits each group's zero point; the scale stays min-max and the layout is the one every decoder reads.
TEST(Quant, HqqZeroByHand) {
  // One group {0, 0.4, 0.4, 0.4, 3} at 2 bits: min-max gives scale 1, zero 0, codes 0 0 0 0 3 and a mean error of
  // 3·0.4/5 = 0.24. HQQ's first round (β = 10): the shrinkage keeps 0.4 − 0.4^−0.3/10 = 0.2684 of each 0.4 error
  // as outlier and nothing of the zero errors, so the zero refits to mean(x − e − q·s) = 3·0.1316/5 = 0.0790;
  // with it the codes stay and the mean error is (2·0.0790 + 3·0.3210)/5 = 0.2242. The best zero is kept.
  auto x = torch::tensor({0.f, 0.4f, 0.4f, 0.4f, 3.f}).view({1, 1, 1, 5});
  auto mm = model::quantize(x, int_type(2), 8, QuantAxis::Token);
  auto hq = model::quantize(x, int_type(2), 8, QuantAxis::Token, model::QuantMethod::Hqq);
  EXPECT_TRUE(torch::equal(hq.scale, mm.scale));
  auto err = [&](const model::QuantBlock& q) {
    return (model::dequantize(q, int_type(2), 8, QuantAxis::Token, 5, torch::kFloat32) - x).abs().mean().item<double>();
  };
  EXPECT_NEAR(err(mm), 0.24, 1e-6);
  EXPECT_LE(err(hq), 0.2243);
  EXPECT_GT(hq.zero.item<float>(), 0.07f);
}

TEST(Quant, HqqLowersTheErrorOfEveryGroup) {
  // Keys with an outlier channel, as real keys have: min-max spends most of a 2-bit range on it.
  auto x = randn({2, 3, 64, 40}, 9);
  x.select(3, 5).mul_(8.0);
  for (int bits : {4, 2})
    for (auto axis : {QuantAxis::Token, QuantAxis::Channel}) {
      const int64_t G = 16;
      auto mm = model::quantize(x, int_type(bits), G, axis);
      auto hq = model::quantize(x, int_type(bits), G, axis, model::QuantMethod::Hqq);
      const std::string what = std::to_string(bits) + " bits, " + model::quant_axis_name(axis);
      EXPECT_TRUE(torch::equal(hq.scale, mm.scale)) << what;
      EXPECT_EQ(hq.data.sizes(), mm.data.sizes()) << what;
      auto e_mm = (model::dequantize(mm, int_type(bits), G, axis, 40, torch::kFloat32) - x).abs();
      auto e_hq = (model::dequantize(hq, int_type(bits), G, axis, 40, torch::kFloat32) - x).abs();
      // Mean error per group: never worse (but for the zero's rounding to f16), lower overall.
      auto per_group = [&](const torch::Tensor& e) {
        return axis == QuantAxis::Token ? torch::constant_pad_nd(e, {0, 8}, 0).view({2, 3, 64, 3, G}).sum(-1)
                                        : e.view({2, 3, 64 / G, G, 40}).sum(3);
      };
      auto worse = per_group(e_hq) - per_group(e_mm);
      EXPECT_LE(worse.max().item<double>(), 1e-3 * G) << what;
      const double gain = 1.0 - e_hq.mean().item<double>() / e_mm.mean().item<double>();
      RecordProperty("gain_" + std::to_string(bits) + "_" + model::quant_axis_name(axis), std::to_string(gain));
      EXPECT_GT(gain, bits == 2 ? 0.03 : 0.01) << what;  // measured: 0.06-0.11 at 2 bits, 0.05-0.07 at 4
    }
}

TEST(Quant, BytesPerTokenFormula) {
  // Per token: G·bits/8 + 4 bytes per group of G values (f16 scale and zero, or one f32 scale for fp8); per
  // channel: the group's metadata is shared by G tokens.
  auto bpt = [](CacheType t, int64_t heads, int64_t width, int64_t group, bool per_channel) {
    return kernels::bytes_per_token(kernels::cache_format(t), heads, width, group, per_channel);
  };
  EXPECT_DOUBLE_EQ(bpt(CacheType::Int4, 3, 64, 64, false), 3 * (32 + 4));
  EXPECT_DOUBLE_EQ(bpt(CacheType::Int2, 3, 64, 32, false), 3 * (16 + 8));
  EXPECT_DOUBLE_EQ(bpt(CacheType::Int8, 1, 48, 64, false), 48 + 4);
  EXPECT_DOUBLE_EQ(bpt(CacheType::Int4, 2, 8, 64, true), 2 * (4 + 8 * 4.0 / 64));
  EXPECT_DOUBLE_EQ(bpt(CacheType::Fp8, 2, 64, 16, false), 2 * (64 + 4 * 4));
  EXPECT_DOUBLE_EQ(bpt(CacheType::BF16, 3, 64, 64, false), 3 * 128);
  // FlashMLA's token at a 512-wide latent and 64 rotary dims: 512 E4M3 bytes, 4 f32 scales, 64 bf16 values.
  model::CacheOptions o;
  o.type = CacheType::Fp8FlashMla;
  o.group = 64;  // the format fixes its own group of 128
  const std::vector<model::BufferSpec> mla = {{"c", 1, 512, QuantAxis::Token, model::BufferRole::Latent},
                                              {"k_r", 1, 64, QuantAxis::Channel, model::BufferRole::RotaryKey}};
  EXPECT_DOUBLE_EQ(model::bytes_per_token(mla, o, torch::kBFloat16), 656.0);
  EXPECT_EQ(model::resolve_storage(mla[0], o, torch::kFloat32).group, 128);
  EXPECT_EQ(model::resolve_storage(mla[1], o, torch::kFloat32).type, CacheType::BF16);
}

// The table is the one description of every format: names round-trip, rows are in enum order, an unknown name is
// one error listing them all, and a format for MLA caches refuses MHA buffers.
TEST(CacheFormat, TableNamesEveryType) {
  const auto& all = kernels::cache_formats();
  ASSERT_EQ(all.size(), 8u);
  for (size_t i = 0; i < all.size(); ++i) {
    EXPECT_EQ(static_cast<size_t>(all[i].type), i);
    EXPECT_EQ(model::parse_cache_type(all[i].name), all[i].type);
    EXPECT_EQ(model::cache_type_name(all[i].type), all[i].name);
    if (*all[i].alias) {
      EXPECT_EQ(model::parse_cache_type(all[i].alias), all[i].type);
    }
    EXPECT_EQ(model::is_quantized(all[i].type), all[i].kind != kernels::ValueKind::Float);
  }
  testutil::expect_error([] { model::parse_cache_type("fp4"); }, "int2, fp8, fp8-flashmla");
  model::CacheOptions o;
  o.type = CacheType::Fp8FlashMla;
  testutil::expect_error([&] { model::resolve_storage({"k", 2, 16, QuantAxis::Channel}, o, torch::kFloat32); },
                         "fp8-flashmla stores MLA caches only");
  o.type = CacheType::Fp8;
  o.quant = model::QuantMethod::Hqq;
  testutil::expect_error([&] { model::resolve_storage({"v", 2, 16, QuantAxis::Token}, o, torch::kFloat32); },
                         "use --cache-quant minmax");
}

// E4M3 by hand (OCP FP8: bias 7, 3 mantissa bits, max 448, subnormals below 2^-6).
TEST(Quant, E4M3CodesByHand) {
  EXPECT_EQ(kernels::e4m3_value(0x38), 1.0f);
  EXPECT_EQ(kernels::e4m3_value(0x7e), 448.0f);
  EXPECT_EQ(kernels::e4m3_value(0x08), std::ldexp(1.0f, -6));
  EXPECT_EQ(kernels::e4m3_value(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(kernels::e4m3_value(0x07), 7 * std::ldexp(1.0f, -9));
  EXPECT_EQ(kernels::e4m3_value(0xc0), -2.0f);
  EXPECT_TRUE(std::isnan(kernels::e4m3_value(0x7f)));
  // Nearest, ties to the even code, saturating at 448.
  const std::vector<std::pair<float, int>> cases = {
      {1.0f, 0x38},   {448.f, 0x7e},  {1000.f, 0x7e}, {-2.0f, 0xc0},  {1.0625f, 0x38},  // tie 1 | 1.125: even
      {1.1875f, 0x3a}, {1.07f, 0x39},  {std::ldexp(1.0f, -10), 0x00},                     // tie 0 | 2^-9: even
      {3 * std::ldexp(1.0f, -10), 0x02}, {-0.3f, 0xaa}};                                  // 0.3 -> 0.3125
  for (auto [x, code] : cases)
    EXPECT_EQ(model::e4m3_codes(torch::tensor({x})).item<uint8_t>(), code) << x;
  // Every finite code is its own value's code.
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7f) == 0x7f || c == 0x80) continue;  // NaNs; -0 stores as +0
    EXPECT_EQ(model::e4m3_codes(torch::tensor({kernels::e4m3_value(static_cast<uint8_t>(c))})).item<uint8_t>(), c);
  }
}

TEST(Quant, Fp8RoundTripWithinHalfAnUlp) {
  auto x = randn({2, 3, 32, 40}, 11) * 3.0;
  for (auto axis : {QuantAxis::Token, QuantAxis::Channel})
    for (auto t : {CacheType::Fp8, CacheType::Fp8FlashMla}) {
      const int64_t G = t == CacheType::Fp8 ? 16 : 32;
      auto q = model::quantize(x, t, G, axis);
      EXPECT_FALSE(q.zero.defined());
      EXPECT_EQ(q.scale.scalar_type(), torch::kFloat32);
      EXPECT_EQ(q.data.size(3), 40);
      auto back = model::dequantize(q, t, G, axis, 40, torch::kFloat32);
      // Relative error at most 2^-4 (3 mantissa bits), plus half the subnormal step where values are tiny; each
      // group's largest value maps to 448 and comes back within f32 rounding.
      auto bound = x.abs() / 16 + x.abs().max() / 448 * std::ldexp(1.0, -10);
      EXPECT_TRUE(((back - x).abs() <= bound * 1.0001).all().item<bool>()) << model::cache_type_name(t);
      EXPECT_LE((back.abs().max() - x.abs().max()).abs().item<double>(), 1e-5 * x.abs().max().item<double>());
    }
}

class ResidualHandOver : public ::testing::TestWithParam<QuantAxis> {};

TEST_P(ResidualHandOver, BlocksQuantizeExactlyWhenTheResidualFills) {
  const QuantAxis axis = GetParam();
  const int64_t R = 8, G = 4, B = 2, H = 3, D = 12, N = 29;
  model::BufferSpec spec{"k", H, D, axis};
  model::Storage st{CacheType::Int4, axis, G, R};
  model::SlotBuffer one(spec, st, B, torch::kFloat32, torch::kCPU), chunked(spec, st, B, torch::kFloat32, torch::kCPU);
  auto x = randn({B, H, N, D}, 3);
  for (int64_t t = 0; t < N; ++t) {
    one.append(x.narrow(2, t, 1));
    const int64_t n = t + 1;
    ASSERT_EQ(one.tokens(), n);
    ASSERT_EQ(one.residual_tokens(), n % R) << "after token " << n;
    ASSERT_EQ(one.quantized_tokens(), n - n % R);
    auto got = one.read();
    // The residual holds the newest tokens exactly ...
    const int64_t q = n - n % R;
    EXPECT_TRUE(torch::equal(got.narrow(2, q, n - q), x.narrow(2, q, n - q))) << "after token " << n;
    // ... and each full block equals that block quantized on its own.
    for (int64_t b0 = 0; b0 < q; b0 += R) {
      auto blk = x.narrow(2, b0, R).contiguous();
      auto ref = model::dequantize(model::quantize(blk, CacheType::Int4, G, axis), CacheType::Int4, G, axis, D, torch::kFloat32);
      EXPECT_TRUE(torch::equal(got.narrow(2, b0, R), ref)) << "block at " << b0 << " after token " << n;
    }
  }
  // Appending in uneven chunks gives the same state.
  int64_t done = 0;
  for (int64_t c : {5, 3, 11, 1, 9}) {
    chunked.append(x.narrow(2, done, c));
    done += c;
  }
  ASSERT_EQ(done, N);
  EXPECT_TRUE(torch::equal(chunked.read(), one.read()));
  EXPECT_EQ(chunked.bytes(), one.bytes());
}

INSTANTIATE_TEST_SUITE_P(Cache, ResidualHandOver, ::testing::Values(QuantAxis::Token, QuantAxis::Channel));

TEST(SlotBuffer, ZeroResidualQuantizesEveryToken) {
  model::SlotBuffer b({"v", 1, 8, QuantAxis::Token}, {CacheType::Int8, QuantAxis::Token, 8, 0}, 1, torch::kFloat32,
                      torch::kCPU);
  b.append(randn({1, 1, 3, 8}, 1));
  EXPECT_EQ(b.quantized_tokens(), 3);
  EXPECT_EQ(b.residual_tokens(), 0);
  EXPECT_EQ(b.bytes(), 3 * (8 + 4));
  EXPECT_TRUE(torch::equal(b.read_for_kernels(), b.read()));  // codes: dequantized, as read() does
}

TEST(SlotBuffer, FloatStorageKeepsValuesInItsType) {
  auto x = randn({1, 2, 5, 4}, 2);
  model::SlotBuffer b({"k", 2, 4, QuantAxis::Channel}, {CacheType::BF16, QuantAxis::Channel, 64, 128}, 1,
                      torch::kFloat32, torch::kCPU);
  b.append(x);
  EXPECT_TRUE(torch::equal(b.read(), x.to(torch::kBFloat16).to(torch::kFloat32)));
  EXPECT_EQ(b.read().scalar_type(), torch::kFloat32);
  // The kernels read it as stored (and widen it in registers): the same values, in bf16.
  EXPECT_EQ(b.read_for_kernels().scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(b.read_for_kernels().to(torch::kFloat32), b.read()));
  EXPECT_EQ(b.bytes(), 2 * 5 * 4 * 2);
  EXPECT_GE(b.capacity_bytes(), b.bytes());
}

TEST(SlotBuffer, PerChannelAxisNeedsAResidualMultipleOfTheGroup) {
  model::CacheOptions o;
  o.type = CacheType::Int4;
  o.residual = 100;
  o.group = 64;
  testutil::expect_error([&] { model::resolve_storage({"k", 1, 8, QuantAxis::Channel}, o, torch::kFloat32); },
                         "must be a positive multiple of --cache-group");
  o.axis_of["k"] = QuantAxis::Token;  // the override makes it valid
  EXPECT_NO_THROW(model::resolve_storage({"k", 1, 8, QuantAxis::Channel}, o, torch::kFloat32));
}

// The whole cache of a model: reported bytes equal the formula, by hand, at every step of a generation.
class CacheAccounting : public ::testing::TestWithParam<std::string> {};

TEST_P(CacheAccounting, ReportedBytesEqualTheFormula) {
  const std::string type = GetParam();
  auto m = testutil::make_random_model(testutil::tiny_config("llama-gqa"), 4);  // 2 layers, n_kv 2, d_h 16
  model::CacheOptions o;
  o.type = model::parse_cache_type(type);
  o.residual = 8;
  o.group = 4;
  const int bits = kernels::cache_format(*o.type).bits;  // fp8: 1 byte per value, 4 bytes of scale per group
  const int64_t B = 3, L = 2, H = 2, D = 16;
  auto cache = m->make_cache(B, o);
  torch::NoGradGuard ng;
  auto ids = torch::randint(0, 97, {B, 13}, torch::kInt64);
  int64_t n = 0;
  for (int64_t chunk : {5, 1, 1, 6}) {
    m->forward(ids.narrow(1, n, chunk), cache.get());
    n += chunk;
    auto st = cache->stats();
    int64_t expect = 0;
    if (bits >= 16) {
      expect = L * 2 * B * H * n * D * (bits / 8);
    } else {
      const int64_t q = n - n % 8, res = n % 8;
      // k per channel: scale/zero per 4 tokens per channel; v per token: one pair per 4 channels.
      const int64_t k_bytes = B * H * (q * D * bits / 8 + 4 * D * (q / 4) + res * D * 4);
      const int64_t v_bytes = B * H * (q * D * bits / 8 + 4 * (D / 4) * q + res * D * 4);
      expect = L * (k_bytes + v_bytes);
      EXPECT_EQ(st.residual_tokens, B * res);
    }
    EXPECT_EQ(st.bytes, expect) << type << " after " << n << " tokens";
    EXPECT_EQ(st.tokens, B * n);
    EXPECT_GE(st.capacity_bytes, st.bytes);
  }
  // Quantized tokens cost what the per-token formula says.
  if (bits < 16) {
    auto st = cache->stats();
    const double per_token = model::bytes_per_token(m->cache_specs()[0], o, torch::kFloat32) * L;
    const int64_t q = n - n % 8;
    EXPECT_DOUBLE_EQ(static_cast<double>(st.bytes - L * 2 * B * H * (n % 8) * D * 4), per_token * B * q);
  }
}

INSTANTIATE_TEST_SUITE_P(Cache, CacheAccounting, ::testing::Values("f32", "bf16", "f16", "int8", "int4", "int2", "fp8"));

// A quantized cache changes the logits a little, and int2 more than int8.
TEST(CacheQuality, QuantizedDecodingStaysCloseAndDegradesWithFewerBits) {
  auto m = testutil::make_random_model(testutil::tiny_config("llama-mha"), 6);
  torch::NoGradGuard ng;
  auto ids = torch::randint(0, 97, {1, 40}, torch::kInt64);
  auto ref = m->forward(ids);
  std::vector<double> err;
  for (auto t : {"f32", "int8", "int4", "int2", "fp8"}) {
    model::CacheOptions o;
    o.type = model::parse_cache_type(t);
    o.residual = 8;
    o.group = 8;
    auto cache = m->make_cache(1, o);
    std::vector<torch::Tensor> parts;
    for (int64_t s = 0; s < 40; s += 4) parts.push_back(m->forward(ids.narrow(1, s, 4), cache.get()));
    err.push_back((torch::cat(parts, 1) - ref).abs().max().item<double>());
  }
  EXPECT_LE(err[0], 1e-4);  // a full-precision cache through chunks is exact
  EXPECT_GT(err[1], 0.0);
  EXPECT_LT(err[1], err[2]);
  EXPECT_LT(err[2], err[3]);
  // FP8's 3 mantissa bits sit between int8 and int2 over groups of 8 values.
  EXPECT_GT(err[4], err[1]);
  EXPECT_LT(err[4], err[3]);
}
