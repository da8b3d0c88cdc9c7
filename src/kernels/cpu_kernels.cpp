#include "kernels/cpu_kernels.h"

#include <stdexcept>

namespace mha2mla::kernels {

const CpuKernels& cpu_kernels(Variant v) {
  static const CpuKernels kGeneric{Variant::Generic, &generic::kAttn, generic::gemv_rows,
                                   {generic::rms_norm_row, generic::silu_mul_span}};
  static const CpuKernels kAvx2{Variant::Avx2, &avx2::kAttn, avx2::gemv_rows,
                                {avx2::rms_norm_row, avx2::silu_mul_span}};
  static const CpuKernels kAvx512{Variant::Avx512, &avx512::kAttnF32, avx512::gemv_rows,
                                  {avx2::rms_norm_row, avx2::silu_mul_span}};
  static const CpuKernels kAvx512Bf16{Variant::Avx512Bf16, &avx512bf16::kAttn, avx512bf16::gemv_rows,
                                      {avx2::rms_norm_row, avx2::silu_mul_span}};
  switch (resolve_variant(v)) {
    case Variant::Generic: return kGeneric;
    case Variant::Avx2: return kAvx2;
    case Variant::Avx512: return kAvx512;
    case Variant::Avx512Bf16: return kAvx512Bf16;
    default: break;
  }
  throw std::logic_error("kernels: the reference variant has no CPU kernel table (its callers run libtorch ops)");
}

}  // namespace mha2mla::kernels
