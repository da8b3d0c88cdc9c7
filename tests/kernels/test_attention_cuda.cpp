// The CUDA decode kernels (src/kernels/cuda) against the libtorch reference, twice:
// Plain and quantized caches (8/4/2-bit codes, per token and per channel, with a residual), MHA/GQA and MLA:
//   - emulated: their device code run by tests/kernels/cuda_emulator.h on this CPU, block by block, so that
//     every build checks their indexing, masking, splits and merge, with or without a GPU;
//   - on each device of MHA2MLA_TEST_DEVICES through the public front ends, which must pick the CUDA kernel
//     (not the reference) for CUDA tensors, as the CPU kernel for CPU tensors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/attention_cases.h"
#include "kernels/attention_internal.h"
#include "testing/devices.h"
// After libtorch: the emulator defines the CUDA qualifiers away for the kernel header that follows it.
#include "kernels/cuda_emulator.h"
#include "kernels/cuda/attention_cuda_kernels.cuh"

using namespace mha2mla;
using namespace mha2mla::testutil;

namespace {

// Shapes the ladders of the tests above do not reach: several row blocks per group (a wide latent), RoPE key
// heads that change inside a row block, and values wider than the 256 threads of a block.
const std::vector<MlaCase> kWideMlaCases = {
    {1, 20, 2, 1, 300, 299, 520, 16, 0, 1},  // 15 rows per block: blocks of rows [0, 15) and [15, 20)
    {1, 16, 1, 2, 97, 95, 512, 64, 0, 0},    // the DeepSeek latent (512 + 64), T = 2
};

constexpr int64_t kEmuSms = 4;                 // few multiprocessors: several splits, few blocks to emulate
constexpr int64_t kEmuSmem = 227 * 1024;       // an H100/H200's opt-in shared memory per block

template <class T>
torch::Tensor emulate(kernels::AttnArgs a, const torch::TensorOptions& opt, const std::string& what) {
  namespace kc = kernels::cuda;
  kc::DecodePlan p;
  const std::string why = kc::plan_for(a, kEmuSms, kEmuSmem, &p);
  EXPECT_EQ(why, "") << what;
  if (!why.empty()) return {};
  auto out = torch::full({a.B, a.Hq, a.T, a.Dv}, std::nan(""), opt);
  a.out = out.data_ptr();
  // NaN everywhere a block should write before anything reads: a missed write shows in the output.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // Shared memory as planned, then a guard band that the blocks must leave alone (on a GPU an overrun would
  // read or corrupt a neighbour's memory).
  const size_t planned = p.smem / sizeof(float), guard = 4096;
  constexpr float kGuard = 12345.f;
  std::vector<float> workspace(p.workspace_floats(a), nan), smem(planned + guard, kGuard);
  const kc::QuantSet qs = kc::quant_set(a);  // by value, as the kernel's parameter
  const EmuDim3 grid{static_cast<unsigned>(p.nsplit), static_cast<unsigned>(p.row_blocks),
                     static_cast<unsigned>(a.B * a.groups)};
  cuda_emu::launch(
      grid, kc::kThreads, [&] { kc::decode_split_block<T>(a, qs, p, workspace.data(), smem.data()); },
      [&] { std::fill(smem.begin(), smem.begin() + planned, nan); });
  EXPECT_TRUE(std::all_of(smem.begin() + planned, smem.end(), [&](float x) { return x == kGuard; }))
      << what << ": a block wrote past its planned shared memory";
  cuda_emu::launch(EmuDim3{static_cast<unsigned>(p.rows), static_cast<unsigned>(a.B * a.groups), 1},
                   kc::merge_threads(a), [&] { kc::merge_row<T>(a, p, workspace.data()); });
  return out;
}

torch::Tensor emulate_any(const kernels::AttnArgs& a, const torch::TensorOptions& opt, const std::string& what) {
  switch (a.dtype) {
    case kernels::DType::F32: return emulate<float>(a, opt, what);
    case kernels::DType::BF16: return emulate<__nv_bfloat16>(a, opt, what);
    case kernels::DType::F16: return emulate<__half>(a, opt, what);
  }
  return {};
}

// The CPU tests' MLA cases and the wide ones.
std::vector<MlaCase> all_mla_cases() {
  std::vector<MlaCase> cases = kMlaCases;
  cases.insert(cases.end(), kWideMlaCases.begin(), kWideMlaCases.end());
  return cases;
}

const std::vector<torch::ScalarType> kDtypes = {torch::kFloat32, torch::kBFloat16, torch::kFloat16};

// Quantized caches: MHA/GQA with keys per channel (KIVI) or per token and values per token, and the MLA latent
// per token with rotary keys per channel, each with a residual of the newest slots.
struct QuantCase {
  int64_t B, Hq, Hkv, T, S, n_quant, D, r, group, window;
  bool pad;
  std::string name() const {
    return "B" + std::to_string(B) + "_Hq" + std::to_string(Hq) + "_Hkv" + std::to_string(Hkv) + "_T" +
           std::to_string(T) + "_S" + std::to_string(S) + "_nq" + std::to_string(n_quant) + "_D" + std::to_string(D) +
           "_r" + std::to_string(r) + "_g" + std::to_string(group) + "_w" + std::to_string(window);
  }
};
const std::vector<QuantCase> kQuantCases = {
    {1, 9, 3, 1, 300, 288, 64, 0, 32, 0, false},  // SmolLM-shaped GQA
    {2, 8, 1, 1, 77, 64, 40, 0, 8, 0, true},      // group of 8, D = 40, padded batch
    {1, 3, 1, 2, 130, 128, 64, 0, 24, 50, false}, // T = 2, window, last per-token group shorter
};
const std::vector<QuantCase> kQuantMlaCases = {
    {1, 9, 3, 1, 1000, 896, 24, 8, 64, 0, false},  // SmolLM -87.5 %: one scale group per latent row
    {2, 6, 3, 1, 330, 300, 48, 8, 16, 0, true},    // latent and rotary codes end at different slots
    {1, 9, 3, 1, 500, 448, 24, 8, 8, 123, false},  // window
};

struct QuantInputs {
  torch::Tensor q, q_rope, valid;
  kernels::QuantizedKV k, v;  // MLA: the latent and the rotary keys
};
QuantInputs make_quant_inputs(const QuantCase& c, int bits, torch::ScalarType dt, bool mla) {
  torch::manual_seed(c.S + bits + (mla ? 1000 : 0));
  QuantInputs in;
  in.q = torch::randn({c.B, c.Hq, c.T, c.D}).to(dt);
  if (mla) {
    in.q_rope = torch::randn({c.B, c.Hq, c.T, c.r}).to(dt);
    in.k = quantize(torch::randn({c.B, 1, c.S, c.D}), bits, c.group, false, c.n_quant, dt);
    in.v = quantize(torch::randn({c.B, c.Hkv, c.S, c.r}), bits, 16, true, c.n_quant / 16 * 16, dt);
  } else {
    in.k = quantize(torch::randn({c.B, c.Hkv, c.S, c.D}), bits, 16, true, c.n_quant / 16 * 16, dt);
    in.v = quantize(torch::randn({c.B, c.Hkv, c.S, c.D}), bits, c.group, false, c.n_quant, dt);
  }
  if (c.pad) in.valid = left_padded(c.B, c.S, 5);
  return in;
}

kernels::QuantizedKV quant_to(const kernels::QuantizedKV& kv, const torch::Device& d) {
  kernels::QuantizedKV out = kv;
  out.data = kv.data.to(d), out.scale = kv.scale.to(d), out.zero = kv.zero.defined() ? kv.zero.to(d) : kv.zero, out.residual = kv.residual.to(d);
  return out;
}

}  // namespace

TEST(CudaKernelEmulated, PlanCoversTheKeysInTiles) {
  kernels::AttnArgs a;
  a.B = 1, a.Hq = 9, a.Hkv = 3, a.groups = 3, a.T = 1, a.S = 5000, a.start = 4999, a.D1 = a.Dv = 64;
  a.v.p = &a;  // values apart from the keys
  kernels::cuda::DecodePlan p;
  ASSERT_EQ(kernels::cuda::plan_for(a, 132, kEmuSmem, &p), "");
  EXPECT_EQ(p.chunk % 32, 0);
  EXPECT_GE(p.nsplit * p.chunk, p.hi - p.lo);
  EXPECT_LT((p.nsplit - 1) * p.chunk, p.hi - p.lo);
  EXPECT_GE(p.chunk, 128);  // a split is long enough to stream
  EXPECT_EQ(p.rows, 3);
  // A shape whose tile does not fit in shared memory has no plan (the front end then takes the reference).
  a.D1 = a.Dv = 4000;
  EXPECT_NE(kernels::cuda::plan_for(a, 132, 48 * 1024, &p), "");
  a.D1 = a.Dv = 64;
  a.B = 30000;  // 90,000 (batch, group) pairs: more than a grid's z dimension
  EXPECT_NE(kernels::cuda::plan_for(a, 132, kEmuSmem, &p), "");
}

// The emulated kernel over MHA/GQA cases, as `fn` (decode_attention or flash_attention) hands them to it.
void expect_emulated_matches(const std::vector<Case>& cases, const char* fn, uint64_t seed) {
  for (auto dt : kDtypes)
    for (const auto& c : cases) {
      auto in = make_inputs(c, dt, seed);
      const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
      auto want = kernels::attention_reference(in.q, in.k, in.v, c.start, in.valid, c.window, scale);
      const std::string what = std::string("emulated cuda ") + fn + " " + c10::toString(dt) + " " + c.name();
      auto got = emulate_any(kernels::attention_args(fn, in.q, in.k, in.v, in.valid, c.start, c.window, scale),
                             in.q.options(), what);
      if (got.defined()) expect_close(got, want, tol_for(dt), what);
    }
}

TEST(CudaKernelEmulated, DecodeMatchesReference) { expect_emulated_matches(kDecodeCases, "decode_attention", 11); }

// Prefill runs the same kernel with every query row; its row blocks skip the keys after their last token.
TEST(CudaKernelEmulated, PrefillMatchesReference) { expect_emulated_matches(kPrefillCases, "flash_attention", 7); }

TEST(CudaKernelEmulated, MlaDecodeMatchesReference) {
  for (auto dt : kDtypes)
    for (const auto& m : all_mla_cases()) {
      auto [q_lat, q_rope, c, k_r, valid] = make_mla_inputs(m, dt, 13);
      const double scale = 1.0 / std::sqrt(static_cast<double>(m.L + m.r));
      auto want = kernels::mla_decode_reference(q_lat, q_rope, c, k_r, m.start, valid, m.window, scale);
      const std::string what = std::string("emulated cuda mla ") + c10::toString(dt) + " " + m.name();
      auto got = emulate_any(kernels::mla_decode_args(q_lat, q_rope, c, k_r, valid, m.start, m.window, scale),
                             q_lat.options(), what);
      if (got.defined()) expect_close(got, want, tol_for(dt), what);
    }
}

TEST(CudaKernelEmulated, QuantizedDecodeMatchesReference) {
  for (auto dt : kDtypes)
    for (int bits : {8, 4, 2, testutil::kE4M3})
      for (bool mla : {false, true})
        for (const auto& c : mla ? kQuantMlaCases : kQuantCases) {
          auto in = make_quant_inputs(c, bits, dt, mla);
          const double scale = 1.0 / std::sqrt(static_cast<double>(c.D + c.r));
          const int64_t start = c.S - c.T;
          const std::string what = std::string("emulated cuda ") + (mla ? "mla " : "") + c10::toString(dt) +
                                   " int" + std::to_string(bits) + " " + c.name();
          kernels::QuantArgs qa;
          torch::Tensor want;
          if (mla) {
            want = kernels::quantized_mla_decode_reference(in.q, in.q_rope, in.k, in.v, start, in.valid, c.window,
                                                           scale);
            kernels::quantized_mla_decode_args(qa, in.q, in.q_rope, in.k, in.v, in.valid, start, c.window, scale);
          } else {
            want = kernels::quantized_decode_reference(in.q, in.k, in.v, start, in.valid, c.window, scale);
            kernels::quantized_decode_args(qa, in.q, in.k, in.v, in.valid, start, c.window, scale);
          }
          auto got = emulate_any(qa.a, in.q.options(), what);
          if (got.defined()) expect_close(got, want, tol_for(dt), what);
        }
}

// The front ends on every test device: CUDA tensors must run the CUDA kernel and agree with the reference.
TEST(KernelAttentionDevice, DecodeRunsTheDevicesKernel) {
  for (const auto& dev : test_devices()) {
    const std::string expect_kernel = dev.is_cuda() ? "cuda" : "cpu";
    if (dev.is_cuda()) {
      EXPECT_TRUE(kernels::cuda_kernels_built()) << "a CUDA build without its decode kernels";
    }
    for (auto dt : kDtypes) {
      for (const auto& c : kDecodeCases) {
        auto in = make_inputs(c, dt, 17);
        const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
        auto want = kernels::attention_reference(in.q, in.k, in.v, c.start, in.valid, c.window, scale);
        auto on = [&](const torch::Tensor& t) { return t.defined() ? t.to(dev) : t; };
        auto got = kernels::decode_attention(on(in.q), on(in.k), on(in.v), c.start, on(in.valid), c.window, scale);
        const std::string what = dev.str() + " decode " + c10::toString(dt) + " " + c.name();
        EXPECT_EQ(kernels::last_decode_kernel(), expect_kernel) << what;
        EXPECT_EQ(got.device(), dev) << what;
        expect_close(got.cpu(), want, tol_for(dt), what);
      }
      for (const auto& c : kPrefillCases) {
        auto in = make_inputs(c, dt, 23);
        const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
        auto want = kernels::attention_reference(in.q, in.k, in.v, c.start, in.valid, c.window, scale);
        auto on = [&](const torch::Tensor& t) { return t.defined() ? t.to(dev) : t; };
        auto got = kernels::flash_attention(on(in.q), on(in.k), on(in.v), c.start, on(in.valid), c.window, scale);
        EXPECT_EQ(got.device(), dev);
        if (dev.is_cuda()) {
          EXPECT_EQ(std::string(kernels::last_decode_kernel()), "cuda") << "prefill " << c.name();
        }
        expect_close(got.cpu(), want, tol_for(dt), dev.str() + " prefill " + c10::toString(dt) + " " + c.name());
      }
      for (const auto& m : all_mla_cases()) {
        auto [q_lat, q_rope, c, k_r, valid] = make_mla_inputs(m, dt, 19);
        const double scale = 1.0 / std::sqrt(static_cast<double>(m.L + m.r));
        auto want = kernels::mla_decode_reference(q_lat, q_rope, c, k_r, m.start, valid, m.window, scale);
        auto on = [&](const torch::Tensor& t) { return t.defined() ? t.to(dev) : t; };
        auto got = kernels::mla_decode_attention(on(q_lat), on(q_rope), on(c), on(k_r), m.start, on(valid), m.window,
                                                 scale);
        const std::string what = dev.str() + " mla " + c10::toString(dt) + " " + m.name();
        EXPECT_EQ(kernels::last_decode_kernel(), expect_kernel) << what;
        expect_close(got.cpu(), want, tol_for(dt), what);
      }
    }
  }
}

TEST(KernelAttentionDevice, QuantizedDecodeRunsTheDevicesKernel) {
  for (const auto& dev : test_devices()) {
    const std::string expect_kernel = dev.is_cuda() ? "cuda" : "cpu";
    for (auto dt : {torch::kFloat32, torch::kBFloat16})
      for (int bits : {8, 4})
        for (bool mla : {false, true})
          for (const auto& c : mla ? kQuantMlaCases : kQuantCases) {
            auto in = make_quant_inputs(c, bits, dt, mla);
            const double scale = 1.0 / std::sqrt(static_cast<double>(c.D + c.r));
            const int64_t start = c.S - c.T;
            auto on = [&](const torch::Tensor& t) { return t.defined() ? t.to(dev) : t; };
            torch::Tensor want, got;
            if (mla) {
              want = kernels::quantized_mla_decode_reference(in.q, in.q_rope, in.k, in.v, start, in.valid, c.window,
                                                             scale);
              got = kernels::quantized_mla_decode_attention(on(in.q), on(in.q_rope), quant_to(in.k, dev),
                                                            quant_to(in.v, dev), start, on(in.valid), c.window, scale);
            } else {
              want = kernels::quantized_decode_reference(in.q, in.k, in.v, start, in.valid, c.window, scale);
              got = kernels::quantized_decode_attention(on(in.q), quant_to(in.k, dev), quant_to(in.v, dev), start,
                                                        on(in.valid), c.window, scale);
            }
            const std::string what = dev.str() + (mla ? " mla " : " ") + c10::toString(dt) + " int" +
                                     std::to_string(bits) + " " + c.name();
            EXPECT_EQ(kernels::last_decode_kernel(), expect_kernel) << what;
            expect_close(got.cpu(), want, tol_for(dt), what);
          }
  }
}
