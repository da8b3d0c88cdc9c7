#pragma once
// Crash-test hooks: MHA2MLA_FAULT=NAME[@N] kills the process with SIGKILL at the N-th (default first)
// pass through fault_point(NAME); MHA2MLA_FAULT_RANK=R limits it to data-parallel rank R.
// Costs one getenv when unset.
namespace mha2mla {

void fault_point(const char* name);

}  // namespace mha2mla
