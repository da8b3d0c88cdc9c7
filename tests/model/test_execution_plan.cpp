// The execution plan names what each kind of work runs on, follows the kernel variant in effect, and refuses a
// CPU variant asked for beside a CUDA device.
#include <gtest/gtest.h>

#include "kernels/cpu_features.h"
#include "model/execution_plan.h"
#include "testing/files.h"

using namespace mha2mla;

TEST(ExecutionPlan, NamesWhatRunsForEachVariant) {
  model::RuntimeOptions rt;
  rt.dtype = torch::kBFloat16;
  for (auto v : {kernels::Variant::Generic, kernels::Variant::Avx2, kernels::Variant::Avx512,
                 kernels::Variant::Avx512Bf16}) {
    bool runs = true;
    try {
      kernels::resolve_variant(v);
    } catch (const std::runtime_error&) {
      runs = false;  // the CPU lacks it
    }
    if (!runs) continue;
    kernels::VariantCapScope cap(v);
    const auto p = model::plan_execution(rt);
    const std::string name = kernels::variant_name(v);
    EXPECT_EQ(p.variant, name);
    EXPECT_EQ(p.attention, "cpu " + name);
    EXPECT_EQ(p.gemv, "cpu " + name);
    EXPECT_EQ(p.row_ops, v == kernels::Variant::Generic ? "cpu generic" : "cpu avx2");
    EXPECT_EQ(p.decode_step.rfind("fused", 0), 0u) << p.decode_step;
    EXPECT_EQ(p.to_json()["attention"], "cpu " + name);
  }
  kernels::VariantCapScope ref(kernels::Variant::Reference);
  const auto p = model::plan_execution(rt);
  EXPECT_EQ(p.attention, "libtorch reference");
  EXPECT_EQ(p.gemv, "libtorch");
  EXPECT_EQ(p.decode_step, "layers");
}

TEST(ExecutionPlan, ReferenceAttentionRunsTheLayers) {
  model::RuntimeOptions rt;
  rt.reference_attention = true;
  const auto p = model::plan_execution(rt);
  EXPECT_EQ(p.attention, "libtorch reference");
  EXPECT_EQ(p.decode_step, "layers");
  rt.reference_attention = false;
  rt.decode_step = model::DecodeStepMode::Layers;
  EXPECT_EQ(model::plan_execution(rt).decode_step, "layers");
}

TEST(ExecutionPlan, ACpuVariantBesideACudaDeviceIsOneError) {
  model::RuntimeOptions rt;
  rt.device = torch::Device(torch::kCUDA, 0);
  kernels::VariantCapScope cap(kernels::Variant::Generic);
  testutil::expect_error([&] { model::plan_execution(rt); }, "--kernels generic picks CPU kernels");
  kernels::VariantCapScope none(kernels::Variant::Reference);  // the libtorch path runs anywhere
  EXPECT_EQ(model::plan_execution(rt).attention, "libtorch reference");
}
