#pragma once
// The kernel variants this CPU can run, for the tests that check each against its reference.
#include <vector>

#include "kernels/cpu_features.h"

namespace mha2mla::testutil {

inline std::vector<kernels::Variant> cpu_variants() {
  std::vector<kernels::Variant> v{kernels::Variant::Generic};
  if (kernels::cpu_has_avx2()) v.push_back(kernels::Variant::Avx2);
  if (kernels::cpu_has_avx512()) v.push_back(kernels::Variant::Avx512);
  if (kernels::cpu_has_avx512_bf16()) v.push_back(kernels::Variant::Avx512Bf16);
  return v;
}

}  // namespace mha2mla::testutil
