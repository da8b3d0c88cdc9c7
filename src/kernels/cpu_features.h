#pragma once
// Which instruction-set variants of the CPU kernels this machine can run. Kernels compiled with
// -mavx512* live in their own files and are only called after these checks pass.
#include <cstdint>
#include <string>

namespace mha2mla::kernels {

// Kernel implementations, most portable first. Auto picks the fastest one the CPU supports.
enum class Variant { Auto, Reference, Generic, Avx2, Avx512, Avx512Bf16 };

bool cpu_has_avx2();        // AVX2, FMA and F16C
bool cpu_has_avx512();      // AVX512F + BW + VL + DQ and FMA
bool cpu_has_avx512_bf16(); // the above plus AVX512_BF16 (vdpbf16ps)

// Auto -> the best supported variant (the libtorch reference on CPUs without AVX2), lowered to the cap below.
// An explicit variant the CPU lacks is refused with an error.
Variant resolve_variant(Variant v);
std::string variant_name(Variant v);
// "reference", "generic", "avx2", "avx512", "avx512bf16" or "auto" -> the variant; anything else is an error
// that lists the names.
Variant parse_variant(const std::string& name);

// The most capable variant Auto may resolve to, for benchmarks, bug hunts and tests that run a model's whole
// path on each variant. A cap above what the CPU runs leaves the CPU's best; Reference and Generic are taken as
// they are. Set in the process (set_variant_cap), else MHA2MLA_KERNELS=auto|reference|generic|avx2|avx512|
// avx512bf16 (an unknown value is an error), else Auto (no cap).
void set_variant_cap(Variant cap);  // Auto clears it (MHA2MLA_KERNELS applies again)
Variant variant_cap();

// set_variant_cap() for one scope, restoring the cap it found.
class VariantCapScope {
 public:
  explicit VariantCapScope(Variant cap);
  ~VariantCapScope();
  VariantCapScope(const VariantCapScope&) = delete;
  VariantCapScope& operator=(const VariantCapScope&) = delete;

 private:
  int saved_;
};

// Distinct OS threads that one at::parallel_for over `items` work items occupies in the kernels' build
// (1 if it was compiled without OpenMP, whatever at::get_num_threads() says).
int64_t parallel_worker_threads(int64_t items);

}  // namespace mha2mla::kernels
