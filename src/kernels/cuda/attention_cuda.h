#pragma once
// CUDA split-KV decode attention over the same plain description as the CPU kernels (kernels/attention_args.h),
// with device pointers: MHA/GQA (one work item per KV head) and absorbed MLA (one latent shared by every query
// head, sh = 0), f32/bf16/f16 storage or 8/4/2-bit codes with f16 scales (QuantDesc). Compiled when MHA2MLA_CUDA_KERNELS is defined (CMake option of that
// name); this header includes neither libtorch nor CUDA, so attention.cpp sees it in every build.
#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/attention_args.h"

namespace mha2mla::kernels::cuda {

// How one call is cut into thread blocks: grid (nsplit, row_blocks, B * groups), then one merge block per
// query row. Planned on the host from the shapes and the device.
struct DecodePlan {
  int64_t rows = 0;        // query rows per (batch, group): Hq / groups * T, ordered (head, token)
  int64_t row_block = 0;   // rows per thread block (their accumulators live in registers)
  int64_t row_blocks = 0;
  int64_t lo = 0, hi = 0;  // keys any row can see
  int64_t chunk = 0;       // keys per split, a multiple of the 32-key tile
  int64_t nsplit = 1;
  size_t smem = 0;         // dynamic shared memory per block, bytes
  bool v_is_k = false;     // the values are the keys (the MLA latent): loaded once per tile
  int64_t workspace_floats(const AttnArgs& a) const { return a.B * a.groups * nsplit * rows * (a.Dv + 2); }
};

// "" when the shapes have a plan on CUDA device `device`, else why not (the caller takes the reference).
std::string plan_decode(const AttnArgs& a, int device, DecodePlan* p);

// Runs the splits and their merge into a.out ([B, Hq, T, Dv], a.dtype) on the device's default stream (the
// stream libtorch uses unless a caller sets another, which this project never does). `workspace`: device f32
// of p.workspace_floats(a). Returns "" or the CUDA error.
std::string run_decode(const AttnArgs& a, const DecodePlan& p, int device, float* workspace);

}  // namespace mha2mla::kernels::cuda
