#pragma once
// The AVX-512 attention kernels, one file per algorithm; included by attention_avx512.cpp (f32 math for every
// storage type) and attention_avx512bf16.cpp (compiled with -mavx512bf16), which instantiate them as AttnKernels.
// The vdpbf16ps paths are a template parameter (kBf16) of each algorithm, not an #ifdef: the plain instantiation
// discards them (if constexpr), so its file never emits an instruction its CPU lacks. Internal linkage throughout.
//   attention_avx512_common.h      masking, P·V tiles, block dot products, a row's block softmax, 4-bit tables
//   attention_avx512_prefill.h     flash prefill tiles (prefill_tile)
//   attention_avx512_mla_lanes.h   absorbed MLA decode, query rows as lanes (decode_lanes, 4-bit in place)
//   attention_avx512_split_bf16.h  vdpbf16ps split decode over bf16 and 4-bit KIVI caches
//   attention_avx512_decode.h      split-KV decode of every cache type (decode_split), routing to the two above
#include "kernels/attention_avx512_decode.h"
#include "kernels/attention_avx512_prefill.h"
