#pragma once
// Resident memory of this process, from /proc/self/status (Linux); 0 where the kernel does not report it.
#include <cstdint>

namespace mha2mla {

// Peak resident set size so far (VmHWM): anonymous memory plus the mapped file pages that were resident.
int64_t peak_rss_bytes();

// Resident set size now (VmRSS).
int64_t current_rss_bytes();

// Gives the free pages inside the allocator's heaps back to the kernel (glibc: malloc_trim). A loop that
// allocates and frees layer-sized buffers otherwise keeps every freed page resident: free() only shrinks a
// heap from its top, and one live chunk above the freed ones pins them.
void release_free_heap();

// For a loop whose iterations each allocate and free a similar working set (convert: one layer): step(),
// called after each iteration, gives the freed pages back only once resident memory has grown by more than
// `slack` over what it was after the first iteration. Trimming every iteration would re-fault the whole
// working set each time (7B-width convert: +1.5 s per layer); this way the peak stays within the slack.
class HeapGrowthLimit {
 public:
  explicit HeapGrowthLimit(int64_t slack_bytes) : slack_(slack_bytes) {}
  void step();

 private:
  int64_t slack_, base_ = -1;
};

}  // namespace mha2mla
