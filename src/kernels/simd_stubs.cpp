// Stand-ins for the AVX-512 and AVX2 kernels on other architectures, where those files are not built.
// resolve_variant() never picks them there (cpu_has_avx2() is false); they run the portable code.
#if !defined(__x86_64__)
#include <stdexcept>

#include "kernels/attention_args.h"
#include "kernels/elementwise_args.h"
#include "kernels/gemv_args.h"

namespace mha2mla::kernels {
namespace avx512 {
const AttnKernels kAttnF32 = generic::kAttn;
void gemv_rows(const GemvArgs& a, int64_t o0, int64_t o1) { generic::gemv_rows(a, o0, o1); }
}  // namespace avx512
namespace avx512bf16 {
const AttnKernels kAttn = generic::kAttn;
void gemv_rows(const GemvArgs& a, int64_t o0, int64_t o1) { generic::gemv_rows(a, o0, o1); }
}  // namespace avx512bf16
namespace avx2 {
const AttnKernels kAttn = generic::kAttn;
void gemv_rows(const GemvArgs& a, int64_t o0, int64_t o1) { generic::gemv_rows(a, o0, o1); }
[[noreturn]] void no_avx2() { throw std::logic_error("kernels: the AVX2 rows were called without AVX2"); }
void silu_mul_span(DType, const void*, const void*, void*, int64_t) { no_avx2(); }
void rms_norm_row(DType, const void*, const void*, void*, int64_t, float) { no_avx2(); }
}  // namespace avx2
}  // namespace mha2mla::kernels
#endif
