#pragma once
// Split-KV decoding as work items, for callers that own the threads: run_decode (attention.cpp) hands them
// out inside its own parallel region, model/decode_step inside the region of a whole decode step.
#include <atomic>
#include <cstdint>

#include "kernels/attention_args.h"
#include "kernels/cpu_features.h"

namespace mha2mla::kernels {

struct DecodeSplits {
  int64_t lo = 0, hi = 0;   // keys any query row of a (batch, group) can see
  int64_t chunk = 0;        // keys per split, a multiple of 32
  int64_t nsplit = 1;       // splits per (batch, group)
  int64_t groups = 0;       // (batch, group) pairs: a.B * a.groups
  int64_t rows = 0;         // query rows per group: Hq / groups * T
  int64_t part_floats = 0;  // one split's partial result: rows * (Dv + 2)

  // Enough splits to keep `threads` threads busy, each at least 256 keys long (to stream) and a whole number
  // of 32-key blocks (4-bit per-channel tiles stay inside one scale group).
  static DecodeSplits plan(const AttnArgs& a, int64_t threads);
  int64_t items() const { return groups * nsplit; }
  int64_t partial_floats() const { return items() * part_floats; }
  // Item i: split i % nsplit of (batch, group) i / nsplit, written to its place in `partials`. The split
  // that finishes its group last (counted in done[group], zeroed beforehand) merges the group into a.out;
  // `scratch` is Dv floats of the calling thread.
  void run(const AttnArgs& a, const AttnKernels& kern, int64_t i, float* partials, std::atomic<int64_t>* done,
           float* scratch) const;
};

}  // namespace mha2mla::kernels
