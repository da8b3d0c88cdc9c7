// `ppl --dtype bf16|f16` against f32 on both shipped models, on every kernel variant this CPU runs (the portable
// kernels, AVX2, AVX-512, AVX-512 BF16; MHA2MLA_KERNELS caps the binary at each), so that a dtype that works on
// one variant and not on another fails here whichever CPU runs the suite. libtorch 1.13 has no f16 GEMM, bmm or
// silu on the CPU: `ppl --dtype f16` once failed on every CPU, in the prompt's linears on AVX-512 ones.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>

#include <nlohmann/json.hpp>

#include "kernels/variants.h"
#include "testing/files.h"
#include "testing/env.h"

using namespace mha2mla;
namespace fs = std::filesystem;

namespace {

struct KernelEnv : testutil::EnvGuard {  // MHA2MLA_KERNELS for the children started in one scope
  explicit KernelEnv(const std::string& v) : testutil::EnvGuard("MHA2MLA_KERNELS", v.c_str()) {}
};

class PplDtypes : public ::testing::TestWithParam<std::string> {};

TEST_P(PplDtypes, Bf16AndF16MatchF32OnEveryVariant) {
  const std::string model = std::string(MHA2MLA_SOURCE_DIR) + "/models/" + GetParam();
  auto dir = testutil::temp_dir("ppl-dtypes-" + GetParam());
  // Held-out text (Ruth is one of the books the default models never trained on); Debian's bible-kjv, which
  // scripts/setup.sh installs.
  const std::string text = dir + "/ruth.txt";
  ASSERT_EQ(std::system(("bible -f 'Ruth1:1-Ruth1:22' | sed 's/^[^ ]* //' >" + text).c_str()), 0)
      << "needs Debian's bible-kjv (scripts/setup.sh installs it)";
  ASSERT_GT(fs::file_size(text), 3000u);

  std::map<std::string, double> f32_nll;  // per variant
  for (auto v : testutil::cpu_variants()) {
    const auto name = kernels::variant_name(v);
    KernelEnv env(name);
    std::map<std::string, double> nll;
    for (const char* dt : {"f32", "bf16", "f16"}) {
      auto r = testutil::run_cli("ppl --model " + model + " --text " + text + " --ctx 256 --stride 256 --dtype " + dt +
                                 " --json");
      ASSERT_EQ(r.code, 0) << name << " " << dt << ": " << r.err;
      auto j = nlohmann::json::parse(r.out);
      nll[dt] = j["nll"].get<double>();
      ASSERT_GT(j["tokens"].get<int64_t>(), 700) << r.out;
      ASSERT_TRUE(std::isfinite(nll[dt])) << name << " " << dt << ": " << r.out;
    }
    // Mean NLL per token, nats, over Ruth 1. Measured on a 2-core AMD EPYC with AVX-512 BF16, all four variants:
    // |bf16 - f32| 0.00006-0.0006, |f16 - f32| 0.00002-0.00008 (bf16 keeps 8 bits of mantissa, f16 11). The limits
    // are about 6 times those, for other thread counts and summation orders; a dropped or doubled term, a wrong
    // scale or a mis-rounded dtype moves the NLL by far more.
    EXPECT_NEAR(nll["bf16"], nll["f32"], 0.004) << name;
    EXPECT_NEAR(nll["f16"], nll["f32"], 0.0005) << name;
    EXPECT_NE(nll["f16"], nll["f32"]) << name << ": f16 gave f32's result to the last bit; did it run in f16?";
    f32_nll[name] = nll["f32"];
    RecordProperty(GetParam() + "_" + name + "_nll_f32", std::to_string(nll["f32"]));
    RecordProperty(GetParam() + "_" + name + "_nll_bf16", std::to_string(nll["bf16"]));
    RecordProperty(GetParam() + "_" + name + "_nll_f16", std::to_string(nll["f16"]));
    std::printf("%s %s: nll f32 %.6f, bf16 %+.6f, f16 %+.6f\n", GetParam().c_str(), name.c_str(), nll["f32"],
                nll["bf16"] - nll["f32"], nll["f16"] - nll["f32"]);
  }
  // In f32 the variants differ only in summation order.
  for (const auto& [name, x] : f32_nll) EXPECT_NEAR(x, f32_nll.begin()->second, 1e-4) << name;
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Shipped, PplDtypes, ::testing::Values("kjv-mha", "kjv-gqa"),
                         [](const auto& info) { return info.param == "kjv-mha" ? std::string("mha") : std::string("gqa"); });

}  // namespace
