// mha2mla cast: rewrite a model folder's weights in another dtype (e.g. bf16 to halve a shipped model), and
// optionally its context settings (the first step of extending a model to longer sequences).
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "cli/cli.h"
#include "cli/options.h"
#include "io/model_folder.h"
#include "io/model_files.h"
#include "io/safetensors.h"
#include "model/transformer.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/publish_dir.h"

namespace mha2mla::cli {

int cmd_cast(const Args& a) {
  namespace fs = std::filesystem;
  std::string dir, out, dtype_name;
  int64_t max_positions = 0;
  double rope_theta = 0;
  OptionTable t("cast", "--model DIR --out DIR --dtype f32|bf16|f16 [--max-positions N] [--rope-theta X]",
                "Writes DIR's weights in another dtype into OUT (config.json's torch_dtype updated, tokenizer files\n"
                "copied). OUT must not exist or be empty; nothing is left behind on failure. --max-positions and\n"
                "--rope-theta rewrite those config fields: continued pretraining at the new length then adapts the\n"
                "weights (scripts/pretrain_default.sh extends the default models to 4,096 positions this way).");
  t.required("model", "DIR", "source model folder", [&](auto& v) { dir = v; })
      .required("out", "DIR", "output folder", [&](auto& v) { out = v; })
      .required("dtype", "T", "f32, bf16 or f16", [&](auto& v) {
        model::parse_compute_dtype(v);
        dtype_name = v;
      })
      .integer("max-positions", "N", "new max_position_embeddings (0 = keep)", max_positions, 0)
      .number("rope-theta", "X", "new rope_theta (0 = keep)", rope_theta);
  if (!t.parse(a)) return 0;
  usage_check(rope_theta >= 0 && std::isfinite(rope_theta), "--rope-theta must be a positive number");
  auto dtype = model::parse_compute_dtype(dtype_name);
  check(!fs::exists(out) || (fs::is_directory(out) && fs::is_empty(out)), out + " already exists and is not empty");
  io::check_model_folder(dir, io::kModelConfig | io::kModelWeights);
  auto m = model::load_model(dir, torch::kFloat32);
  publish_dir(out, [&](const std::string& tmp) {
    io::NamedTensors w;
    for (auto& [n, t] : model::named_weights(*m)) w.emplace_back(n, t.to(dtype));
    io::save_checkpoint(tmp, w);
    auto cfg = m->config().to_json();
    cfg["torch_dtype"] = io::torch_dtype_name(dtype);
    if (max_positions > 0) cfg["max_position_embeddings"] = max_positions;
    if (rope_theta > 0) cfg["rope_theta"] = rope_theta;
    write_text_atomic((fs::path(tmp) / "config.json").string(), cfg.dump(2) + "\n");
    io::copy_tokenizer_files(dir, tmp);
  }, /*replace=*/false);
  std::printf("wrote %s (%s", out.c_str(), dtype_name.c_str());
  if (max_positions > 0) std::printf(", %lld positions", static_cast<long long>(max_positions));
  if (rope_theta > 0) std::printf(", rope_theta %g", rope_theta);
  std::printf(")\n");
  return 0;
}

}  // namespace mha2mla::cli
