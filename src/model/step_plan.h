#pragma once
// What one layer's attention contributes to the fused decode step (model/decode_step.h). The step asks each
// layer's attention whether it can take part (AttentionImpl::step_unsupported), how much scratch its part needs
// (step_scratch) and for its part of the plan (plan_step): the projections it streams, the row ops that rotate
// and append to the cache, and the attention arguments. A new attention kind joins the step by implementing
// these three, not by editing the step.
#include <torch/torch.h>

#include <vector>

#include "kernels/attention_args.h"
#include "kernels/gemv.h"
#include "model/kv_cache.h"
#include "model/layers.h"

namespace mha2mla::model {

// One row of the step between the projections and attention: a head of q or k rotated (into scratch or straight
// into its cache slot), or a row copied into its cache slot (v, the MLA latent).
struct RowOp {
  const char* src;
  char* dst;
  const char* cos;  // null: a plain copy
  const char* sin;
  int64_t width;
};

// Scratch one layer's attention needs in a step, in values of the compute dtype: the projections it streams
// (qkv), the rotated queries (qr), the attention output in o_proj's order (att), and cos/sin it gathers for
// itself (cs, kept per layer: the plans of every layer are made before the step runs).
struct StepScratch {
  int64_t qkv = 0, qr = 0, att = 0, cs = 0;
};

// Where a layer's part of the step reads and writes, fixed before its plan is made.
struct StepIO {
  kernels::DType dt = kernels::DType::F32;
  int64_t es = 4;                          // bytes per value
  const char* xn = nullptr;                // the normed input [d]
  char* x = nullptr;                       // the residual stream [d]
  char* h = nullptr;                       // x + attention's output projection [d]
  char *qkv = nullptr, *qr = nullptr, *att = nullptr, *cs = nullptr;  // this layer's scratch (StepScratch)
  const char* cos = nullptr;               // the token's cos and sin [head_dim]
  const char* sin = nullptr;
  int64_t slot = 0;                        // the token's cache slot
};

// The attention part of one layer's plan. `attn` arrives with the fields every kind shares (dtype, B, Hq, Hkv,
// T, S, start, window, scale, valid, out); the kind sets groups, widths and operands.
struct AttnStepPlan {
  kernels::GemvGroup* qkv;       // xn -> the projections attention reads
  kernels::GemvGroup* o;         // att -> h = x + o_proj(att)
  std::vector<RowOp>* rows;      // RoPE and cache appends
  kernels::AttnArgs* attn;
};

// A matrix the GEMV kernel can stream: rows contiguous, in the compute dtype (parameters always are, unless a
// caller swapped in a view of another layout).
bool streamable(const Dense& d, torch::ScalarType t);
// One matrix of a GEMV group for one token: y = x Wᵀ + b (+ residual).
kernels::GemvArgs step_gemv(const torch::Tensor& w, const torch::Tensor& b, kernels::DType t, const void* x, void* y,
                            const void* residual = nullptr);
kernels::GemvArgs step_gemv(const Dense& d, kernels::DType t, const void* x, void* y, const void* residual = nullptr);
// Slot `slot` of head h of a float cache buffer [1, heads, capacity, width].
char* slot_of(const SlotBuffer& b, int64_t h, int64_t slot, int64_t es);
// A float cache buffer as a kernel operand; shared_head: one head read by every query head (the MLA latent).
kernels::Operand operand_of(const SlotBuffer& b, bool shared_head);

}  // namespace mha2mla::model
