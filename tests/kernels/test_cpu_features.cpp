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

struct EnvGuard {  // sets MHA2MLA_KERNELS for one scope
  explicit EnvGuard(const char* v) { setenv("MHA2MLA_KERNELS", v, 1); }
  ~EnvGuard() { unsetenv("MHA2MLA_KERNELS"); }
};
}  // namespace

TEST(KernelVariants, FollowTheCpuFlags) {
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
