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

// Auto -> the best supported variant (the libtorch reference on CPUs without AVX2);
// MHA2MLA_KERNELS=generic|avx2|avx512|reference caps it (benchmarks and bug hunts). An explicit
// variant the CPU lacks is refused with an error.
Variant resolve_variant(Variant v);
std::string variant_name(Variant v);

// Distinct OS threads that one at::parallel_for over `items` work items occupies in the kernels' build
// (1 if it was compiled without OpenMP, whatever at::get_num_threads() says).
int64_t parallel_worker_threads(int64_t items);

}  // namespace mha2mla::kernels
