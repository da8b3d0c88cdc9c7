#pragma once
// Resident memory of this process, from /proc/self/status (Linux); 0 where the kernel does not report it.
#include <cstdint>

namespace mha2mla {

// Peak resident set size so far (VmHWM): anonymous memory plus the mapped file pages that were resident.
int64_t peak_rss_bytes();

// Resident set size now (VmRSS).
int64_t current_rss_bytes();

}  // namespace mha2mla
