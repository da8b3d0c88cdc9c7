#include "util/alloc.h"

#include <malloc.h>

namespace mha2mla {

void tune_allocator() {
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

}  // namespace mha2mla
