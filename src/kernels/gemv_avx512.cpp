// AVX-512 GEMV, f32 arithmetic for every storage type (see gemv_avx512_impl.h).
#include "kernels/gemv_avx512_impl.h"

namespace mha2mla::kernels::avx512 {
void gemv_rows(const GemvArgs& a, int64_t o0, int64_t o1) { gemv_rows_impl(a, o0, o1); }
}  // namespace mha2mla::kernels::avx512
