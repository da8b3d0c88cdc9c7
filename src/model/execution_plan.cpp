#include "model/execution_plan.h"

#include "kernels/cpu_features.h"
#include "kernels/gemv.h"
#include "util/error.h"

namespace mha2mla::model {

nlohmann::json ExecutionPlan::to_json() const {
  return {{"device", device},     {"variant", variant},     {"attention", attention},
          {"gemv", gemv},         {"prompt_matmul", prompt_matmul}, {"row_ops", row_ops},
          {"decode_step", decode_step}};
}

ExecutionPlan plan_execution(const RuntimeOptions& rt) {
  const auto cap = kernels::variant_cap();
  const auto v = kernels::resolve_variant(kernels::Variant::Auto);
  const bool cuda = rt.device.is_cuda();
  check(!cuda || cap == kernels::Variant::Auto || cap == kernels::Variant::Reference,
        "--kernels " + kernels::variant_name(cap) + " picks CPU kernels, and --device " + rt.device.str() +
            " runs CUDA ones: leave --kernels at auto (or use reference for the libtorch path)");
  ExecutionPlan p;
  p.device = rt.device.str();
  p.variant = kernels::variant_name(v);
  const bool reference = v == kernels::Variant::Reference;
  const std::string cpu = "cpu " + p.variant;
  if (rt.reference_attention || reference) p.attention = "libtorch reference";
  else p.attention = cuda ? "cuda" : cpu;
  p.gemv = cuda || reference ? "libtorch" : cpu;
  if (cuda) {
    p.prompt_matmul = "libtorch (cuBLAS)";
  } else if (kernels::linear_matmul_widens(rt.dtype)) {
    p.prompt_matmul = "libtorch, widened to f32 and rounded once";
  } else {
    p.prompt_matmul = rt.dtype == torch::kBFloat16 ? "libtorch (oneDNN bf16)" : "libtorch";
  }
  if (cuda) p.row_ops = "libtorch";
  else p.row_ops = v == kernels::Variant::Generic || reference ? "cpu generic" : "cpu avx2";
  const bool step = rt.decode_step == DecodeStepMode::Fused && !cuda && !reference && !rt.reference_attention;
  p.decode_step = step ? "fused where it applies (execution.layers_because says why not)" : "layers";
  return p;
}

}  // namespace mha2mla::model
