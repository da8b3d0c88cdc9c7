#pragma once
// Fuzz targets: each feeds arbitrary bytes to one parser of files made elsewhere. A target returns normally
// for every input; bad input may only raise mha2mla::Error (caught here). Anything else (another exception,
// a crash, a sanitizer report, a leak, a huge allocation) is a bug. Built two ways: as libFuzzer binaries
// (fuzz/, scripts/fuzz.sh) and into test_fuzz, which replays the committed corpora as regression tests.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace mha2mla::fuzz {

struct Target {
  const char* name;  // also the corpus folder: tests/fuzz/corpus/NAME
  void (*run)(const uint8_t* data, size_t size);
};

const std::vector<Target>& targets();
const Target* find_target(const std::string& name);

// Runs one input; returns false if it raised mha2mla::Error (a clean rejection), true if accepted.
bool run_one(const Target& t, const uint8_t* data, size_t size);

}  // namespace mha2mla::fuzz
