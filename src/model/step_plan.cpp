#include "model/step_plan.h"

namespace mha2mla::model {

bool streamable(const Dense& d, torch::ScalarType t) {
  return d->weight.scalar_type() == t && d->weight.dim() == 2 && d->weight.stride(1) == 1 &&
         (!d->bias.defined() || (d->bias.scalar_type() == t && d->bias.is_contiguous()));
}

kernels::GemvArgs step_gemv(const torch::Tensor& w, const torch::Tensor& b, kernels::DType t, const void* x, void* y,
                            const void* residual) {
  return kernels::gemv_args(t, 1, x, w, b.defined() ? b.data_ptr() : nullptr, y, residual);
}

kernels::GemvArgs step_gemv(const Dense& d, kernels::DType t, const void* x, void* y, const void* residual) {
  return step_gemv(d->weight, d->bias, t, x, y, residual);
}

char* slot_of(const SlotBuffer& b, int64_t h, int64_t slot, int64_t es) {
  const auto& f = b.full();
  return static_cast<char*>(f.data_ptr()) + (h * f.stride(1) + slot * f.stride(2)) * es;
}

kernels::Operand operand_of(const SlotBuffer& b, bool shared_head) {
  const auto& f = b.full();
  return kernels::Operand{f.data_ptr(), f.stride(0), shared_head ? 0 : f.stride(1), f.stride(2)};
}

}  // namespace mha2mla::model
