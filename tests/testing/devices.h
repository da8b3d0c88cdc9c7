#pragma once
// The devices a test runs on: MHA2MLA_TEST_DEVICES (default "cpu"; scripts/gpu_check.sh sets "cpu,cuda"). A
// device asked for but absent is a failure, not a skip.
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "model/runtime_options.h"

namespace mha2mla::testutil {

inline std::vector<torch::Device> test_devices() {
  const char* env = std::getenv("MHA2MLA_TEST_DEVICES");
  std::vector<torch::Device> out;
  std::istringstream in(env && *env ? env : "cpu");
  std::string d;
  while (std::getline(in, d, ',')) out.push_back(model::parse_device(d));  // fails if CUDA is absent
  return out;
}

}  // namespace mha2mla::testutil
