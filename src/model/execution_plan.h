#pragma once
// What runs where, resolved once from the runtime options: the device, the CPU kernel variant, and for each kind
// of work the implementation that serves it, each named for --json (runtime.plan). Choices that contradict each
// other are one clear error here, before a model loads, not a flag that silently does nothing. The choices
// themselves are made by kernels::route (attention), kernels::cpu_kernels (the CPU variant's row of kernels) and
// DecodeStep::unsupported (the fused step, per step); this plan states what they will pick.
#include <nlohmann/json.hpp>
#include <string>

#include "model/runtime_options.h"

namespace mha2mla::model {

struct ExecutionPlan {
  std::string device;         // "cpu", "cuda:0"
  std::string variant;        // the CPU kernel variant in effect: avx512bf16, avx512, avx2, generic or reference
  std::string attention;      // "cpu avx512bf16", "cuda", or "libtorch reference" (explicit mask, T×S scores)
  std::string gemv;           // projections of a few rows (decoding): "cpu <variant>" or "libtorch"
  std::string prompt_matmul;  // projections of prompts: libtorch, and how (oneDNN bf16, f16 widened to f32, ...)
  std::string row_ops;        // RMSNorm and SiLU·up: "cpu avx2" (the AVX-512 variants use it too), "cpu generic"
  std::string decode_step;    // "fused where it applies" or "layers"
  nlohmann::json to_json() const;
};

// Checks the runtime options for contradictions (a CPU kernel variant asked for beside a CUDA device) and
// states what will run.
ExecutionPlan plan_execution(const RuntimeOptions& rt);

}  // namespace mha2mla::model
