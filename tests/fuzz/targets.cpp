#include "fuzz/targets.h"

#include <cstdio>
#include <cstdlib>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "util/error.h"

namespace mha2mla::fuzz {
namespace fs = std::filesystem;

const std::vector<Target>& targets() { return registry(); }

std::vector<Target>& registry() {
  static std::vector<Target> all;
  return all;
}

Register::Register(const char* name, void (*run)(const uint8_t*, size_t)) { registry().push_back({name, run}); }

const Target* find_target(const std::string& name) {
  for (const auto& t : targets())
    if (name == t.name) return &t;
  return nullptr;
}

bool run_one(const Target& t, const uint8_t* data, size_t size) {
  try {
    t.run(data, size);
    return true;
  } catch (const Error&) {
    return false;  // a clean, named rejection
  }
}

const std::string& scratch() {
  static const std::string dir = [] {
    fs::path base = fs::exists("/dev/shm") ? fs::path("/dev/shm") : fs::temp_directory_path();
    fs::path d = base / ("mha2mla-fuzz-" + std::to_string(::getpid()));
    fs::create_directories(d);
    return d.string();
  }();
  return dir;
}

void write_bytes(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
}

}  // namespace mha2mla::fuzz
