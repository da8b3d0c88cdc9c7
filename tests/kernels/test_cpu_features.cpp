// Which kernel variant runs follows the CPU's flags; and the kernels' parallel loops really run on several
// threads: at::parallel_for is a header template that silently runs serially where _OPENMP is not defined,
// so a build without -fopenmp used one core for every kernel of ours while at::get_num_threads() still said 2.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include "kernels/cpu_features.h"
#include "testing/env.h"

using namespace mha2mla;

TEST(KernelThreads, ParallelLoopsUseEveryThread) {
  const int saved = at::get_num_threads();
  for (int n : {1, 2, 3}) {
    at::set_num_threads(n);
    EXPECT_EQ(kernels::parallel_worker_threads(12), n) << n << " threads asked for";
  }
  at::set_num_threads(saved);
}

namespace {
// The CPU's feature flags as the kernel lists them (/proc/cpuinfo), independent of __builtin_cpu_supports.
std::set<std::string> proc_cpu_flags() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  std::set<std::string> flags;
  while (std::getline(f, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    for (std::string w; words >> w;) flags.insert(w);
    break;
  }
  return flags;
}

// MHA2MLA_KERNELS for one scope (nullptr: unset), restoring what the suite ran under.
struct EnvGuard : testutil::EnvGuard {
  explicit EnvGuard(const char* v) : testutil::EnvGuard("MHA2MLA_KERNELS", v) {}
};
}  // namespace

TEST(KernelVariants, FollowTheCpuFlags) {
  EnvGuard uncapped(nullptr);  // the suite may run under MHA2MLA_KERNELS; these are the uncapped choices
  const auto flags = proc_cpu_flags();
  ASSERT_FALSE(flags.empty()) << "no flags line in /proc/cpuinfo";
  auto has = [&](const char* f) { return flags.count(f) > 0; };
  EXPECT_EQ(kernels::cpu_has_avx2(), has("avx2") && has("fma") && has("f16c"));
  EXPECT_EQ(kernels::cpu_has_avx512(), has("avx512f") && has("avx512bw") && has("avx512vl") && has("avx512dq") && has("fma"));
  const auto best = kernels::resolve_variant(kernels::Variant::Auto);
  if (kernels::cpu_has_avx512_bf16()) EXPECT_EQ(best, kernels::Variant::Avx512Bf16);
  else if (kernels::cpu_has_avx512()) EXPECT_EQ(best, kernels::Variant::Avx512);
  else if (kernels::cpu_has_avx2()) EXPECT_EQ(best, kernels::Variant::Avx2);
  else EXPECT_EQ(best, kernels::Variant::Reference);
  {
    EnvGuard g("avx2");  // caps AVX-512 CPUs at AVX2; without AVX2 nothing changes
    EXPECT_EQ(kernels::resolve_variant(kernels::Variant::Auto),
              kernels::cpu_has_avx2() ? kernels::Variant::Avx2 : kernels::Variant::Reference);
  }
  {
    EnvGuard g("reference");
    EXPECT_EQ(kernels::resolve_variant(kernels::Variant::Auto), kernels::Variant::Reference);
  }
  // An explicit variant the CPU lacks is one clear error.
  for (auto v : {kernels::Variant::Avx2, kernels::Variant::Avx512, kernels::Variant::Avx512Bf16}) {
    const bool ok = v == kernels::Variant::Avx2     ? kernels::cpu_has_avx2()
                    : v == kernels::Variant::Avx512 ? kernels::cpu_has_avx512()
                                                    : kernels::cpu_has_avx512_bf16();
    if (ok) EXPECT_EQ(kernels::resolve_variant(v), v);
    else EXPECT_THROW(kernels::resolve_variant(v), std::runtime_error) << kernels::variant_name(v);
  }
}

// The cap set in the process lowers Auto as MHA2MLA_KERNELS does, wins over the variable, and is restored by its
// scope; a cap above the CPU leaves the CPU's best; unknown names are one clear error.
TEST(KernelVariants, CapLowersAuto) {
  using kernels::Variant;
  EnvGuard uncapped(nullptr);
  const auto best = kernels::resolve_variant(Variant::Auto);
  {
    kernels::VariantCapScope cap(Variant::Generic);
    EXPECT_EQ(kernels::resolve_variant(Variant::Auto), Variant::Generic);
    {
      kernels::VariantCapScope inner(Variant::Reference);
      EXPECT_EQ(kernels::resolve_variant(Variant::Auto), Variant::Reference);
    }
    EXPECT_EQ(kernels::resolve_variant(Variant::Auto), Variant::Generic) << "the inner scope must restore the cap";
    EnvGuard g("avx2");
    EXPECT_EQ(kernels::resolve_variant(Variant::Auto), Variant::Generic) << "the process's cap wins over the variable";
  }
  EXPECT_EQ(kernels::resolve_variant(Variant::Auto), best);
  {
    kernels::VariantCapScope cap(Variant::Avx512Bf16);  // above every CPU's best or equal to it
    EXPECT_EQ(kernels::resolve_variant(Variant::Auto), best);
  }
  if (kernels::cpu_has_avx2()) {
    kernels::VariantCapScope cap(Variant::Avx2);
    EXPECT_EQ(kernels::resolve_variant(Variant::Auto), Variant::Avx2);
    EXPECT_EQ(kernels::resolve_variant(Variant::Generic), Variant::Generic) << "an explicit variant is not capped";
  }
  for (const char* name : {"auto", "reference", "generic", "avx2", "avx512", "avx512bf16"})
    EXPECT_EQ(kernels::variant_name(kernels::parse_variant(name)), name);
  EXPECT_THROW(kernels::parse_variant("avx3"), std::runtime_error);
  {
    EnvGuard g("avx-512");
    try {
      kernels::resolve_variant(Variant::Auto);
      ADD_FAILURE() << "an unknown MHA2MLA_KERNELS was accepted";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find("MHA2MLA_KERNELS"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("avx512bf16"), std::string::npos) << e.what();
    }
  }
}
