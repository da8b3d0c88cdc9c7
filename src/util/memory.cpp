#include "util/memory.h"

#include <cstdio>
#include <cstring>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace mha2mla {

namespace {

// The value of a "Key:   1234 kB" line of /proc/self/status, in bytes.
int64_t status_kb_field(const char* key) {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return 0;
  char line[256];
  const size_t n = std::strlen(key);
  int64_t out = 0;
  while (std::fgets(line, sizeof line, f)) {
    if (std::strncmp(line, key, n) == 0 && line[n] == ':') {
      long long kb = 0;
      if (std::sscanf(line + n + 1, "%lld", &kb) == 1) out = static_cast<int64_t>(kb) * 1024;
      break;
    }
  }
  std::fclose(f);
  return out;
}

}  // namespace

int64_t peak_rss_bytes() { return status_kb_field("VmHWM"); }
int64_t current_rss_bytes() { return status_kb_field("VmRSS"); }

void release_free_heap() {
#if defined(__GLIBC__)
  ::malloc_trim(0);
#endif
}

void HeapGrowthLimit::step() {
  const int64_t rss = current_rss_bytes();
  if (base_ < 0) {
    base_ = rss;
  } else if (rss > base_ + slack_) {
    release_free_heap();
  }
}

}  // namespace mha2mla
