#pragma once

namespace mha2mla::infer {

// Process-wide settings that every entry point (the CLI, the benchmarks) applies once at start-up:
// - libtorch's intra-op threads = the number of cores (it defaults to one here); MHA2MLA_THREADS overrides;
// - large freed blocks stay in the process heap for reuse. By default glibc serves every big tensor from
//   fresh mmap'd pages and returns them on free, so each step pays first-touch page faults that can cost
//   more than the arithmetic (a training step of the 5M-parameter default model: 1.4–1.8 s -> 1.2 s).
void init_runtime();

}  // namespace mha2mla::infer
