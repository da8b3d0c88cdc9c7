// AVX-512 attention with f32 arithmetic (bf16/f16 storage converted in registers). Compiled with
// -mavx512f/bw/vl/dq -mfma; called only when cpu_has_avx512().
#include "kernels/attention_avx512_impl.h"

namespace mha2mla::kernels::avx512 {
const AttnKernels kAttnF32{prefill_tile<false>, decode_split<false>};
}  // namespace mha2mla::kernels::avx512
