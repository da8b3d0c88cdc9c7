// libFuzzer entry point for one target of tests/fuzz/targets.cpp, chosen at build time (MHA2MLA_FUZZ_TARGET).
#include <cstdio>
#include <cstdlib>

#include "fuzz/targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const mha2mla::fuzz::Target* target = [] {
    const auto* t = mha2mla::fuzz::find_target(MHA2MLA_FUZZ_TARGET);
    if (!t) {
      std::fprintf(stderr, "unknown fuzz target %s\n", MHA2MLA_FUZZ_TARGET);
      std::abort();
    }
    return t;
  }();
  mha2mla::fuzz::run_one(*target, data, size);
  return 0;
}
