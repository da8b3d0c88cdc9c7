#pragma once
// Fuzz targets: each feeds arbitrary bytes to one parser of files made elsewhere. A target returns normally
// for every input; bad input may only raise mha2mla::Error (caught by run_one). Anything else (another
// exception, a crash, a sanitizer report, a leak, a huge allocation) is a bug. Built two ways: as libFuzzer
// binaries (fuzz/, scripts/fuzz.sh) and into test_fuzz, which replays the committed corpora as regression tests.
// targets_json.cpp (config.json, tokenizer.json, encoding) needs no libtorch; targets_files.cpp does.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace mha2mla::fuzz {

struct Target {
  const char* name;  // also the corpus folder: tests/fuzz/corpus/NAME
  void (*run)(const uint8_t* data, size_t size);
};

// Every target linked into this binary.
const std::vector<Target>& targets();
const Target* find_target(const std::string& name);

// Runs one input; returns false if it raised mha2mla::Error (a clean rejection), true if accepted.
bool run_one(const Target& t, const uint8_t* data, size_t size);

// For the target files: registration at static initialisation, a per-process scratch folder, file writing.
std::vector<Target>& registry();
struct Register {
  Register(const char* name, void (*run)(const uint8_t*, size_t));
};
const std::string& scratch();
void write_bytes(const std::string& path, const uint8_t* data, size_t size);

}  // namespace mha2mla::fuzz
