#pragma once
// One table of the CPU kernels per instruction-set variant: what the attention front ends, the GEMV, the
// per-token ops and the fused decode step (model/decode_step) each run. Every choice of a CPU kernel goes
// through cpu_kernels(), so a variant is one row here, not a switch in each front end.
#include "kernels/attention_args.h"
#include "kernels/cpu_features.h"
#include "kernels/elementwise_args.h"
#include "kernels/gemv_args.h"

namespace mha2mla::kernels {

// The row functions behind rms_norm() and silu_mul(), for callers that run their own loops over raw rows.
struct ElementwiseRows {
  RmsNormRow rms_norm;
  SiluMulSpan silu_mul;
};

struct CpuKernels {
  Variant variant;         // Generic, Avx2, Avx512 or Avx512Bf16
  const AttnKernels* attn; // prefill tiles and split-KV decode (avx512bf16: vdpbf16ps for bf16 storage)
  GemvRows gemv;           // weight-streaming y = x W^T for a few rows of x
  ElementwiseRows rows;    // RMSNorm and SiLU·up (the AVX2 rows serve the AVX-512 variants too)
};

// The kernels of variant v, Auto resolved first (resolve_variant). Reference has none (its callers run
// libtorch ops) and is an error here, as is a variant this CPU cannot run.
const CpuKernels& cpu_kernels(Variant v);

}  // namespace mha2mla::kernels
