#pragma once
// Test helper: a random tiny model converted to MLA in a temp folder.
#include <string>

#include "convert/mla_convert.h"
#include "testing/tiny_model.h"

namespace mha2mla::testutil {

// Saves a random model of `cfg` to BASE/src and converts it to BASE/mla: RoPE kept on the 2 highest
// frequency pairs of each head (4 dims), latent of `dkv` per KV head from an exact SVD of kind `svd`.
inline void convert_tiny_mla(const nlohmann::json& cfg, uint64_t seed, const std::string& base, const std::string& svd,
                             int64_t dkv) {
  auto m = make_random_model(cfg, seed);
  model::save_model(*m, base + "/src");
  convert::ConvertOptions o;
  o.rope = convert::RopeStrategy::High;
  o.rope_dims = 4;
  o.svd = svd;
  o.dkv = dkv;
  o.algo = convert::SvdAlgo::Exact;
  convert::convert_model(base + "/src", base + "/mla", o, "");
}

}  // namespace mha2mla::testutil
