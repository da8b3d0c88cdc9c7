// Stand-ins for the AVX-512 and AVX2 kernels on other architectures, where those files are not built.
// resolve_variant() never picks them there (cpu_has_avx2() is false); they run the portable code.
#if !defined(__x86_64__)
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
void silu_mul_span(DType t, const void* g, const void* u, void* y, int64_t n) { generic::silu_mul_span(t, g, u, y, n); }
void rms_norm_row(DType t, const void* x, const void* w, void* y, int64_t D, float eps) {
  generic::rms_norm_row(t, x, w, y, D, eps);
}
}  // namespace avx2
}  // namespace mha2mla::kernels
#endif
