// AVX-512 attention with vdpbf16ps dot products for bf16 prefill (the rest as attention_avx512.cpp).
// Compiled with -mavx512bf16 in addition; called only when cpu_has_avx512_bf16().
#include "kernels/attention_avx512_impl.h"

namespace mha2mla::kernels::avx512bf16 {
const AttnKernels kAttn{prefill_tile<true>, decode_split<true>};
}  // namespace mha2mla::kernels::avx512bf16
