#include "train/recipe.h"

#include "io/model_files.h"
#include <cstdlib>
#include <filesystem>

#include "util/error.h"
#include "util/publish_dir.h"

namespace mha2mla::train {
namespace fs = std::filesystem;

DataSource parse_source(const std::string& spec) {
  DataSource s;
  auto colon = spec.rfind(':');
  if (colon != std::string::npos && colon + 1 < spec.size()) {
    std::string w = spec.substr(colon + 1);
    try {
      size_t pos = 0;
      double x = std::stod(w, &pos);
      if (pos == w.size()) {
        check(x > 0, "data weight must be positive in \"" + spec + "\"");
        s.path = spec.substr(0, colon);
        s.weight = x;
        return s;
      }
    } catch (const std::invalid_argument&) {
    }
  }
  s.path = spec;
  return s;
}

std::vector<torch::Tensor> load_val_batches(const std::string& path, int64_t seq_len, int64_t batch,
                                            int64_t max_windows, int64_t vocab) {
  SequentialBatches it(path, seq_len, batch, max_windows);
  it.check_vocab(vocab);
  std::vector<torch::Tensor> out;
  torch::Tensor b;
  while (it.next(b)) out.push_back(b.clone());
  check(!out.empty(), path + ": validation data has no window of " + std::to_string(seq_len + 1) + " tokens");
  return out;
}

TrainResult train_folder(const std::string& model_dir, const std::vector<DataSource>& data,
                         const std::vector<torch::Tensor>& val, TrainOptions opt, Dist& dist) {
  auto m = model::load_model(model_dir, torch::kFloat32, opt.device);
  const int64_t micro = opt.batch / (dist.world() * opt.accum);
  check(micro >= 1 && opt.batch % (dist.world() * opt.accum) == 0,
        "--batch " + std::to_string(opt.batch) + " cannot be split over " + std::to_string(dist.world()) +
            " process(es) × " + std::to_string(opt.accum) + " accumulation step(s)");
  MixtureSampler sampler(data, opt.seq_len, micro, opt.seed, dist.rank(), dist.world());
  sampler.check_vocab(m->config().vocab_size);
  opt.source_dir = model_dir;
  const int64_t accum = opt.accum;
  auto res = run_training(*m, opt, [&](int64_t step, int64_t mi) { return sampler.batch_at(step * accum + mi); }, val,
                          dist);
  if (dist.is_main() && (opt.stop_after == 0 || opt.stop_after >= opt.steps)) {
    publish_dir((fs::path(opt.out) / "model").string(), [&](const std::string& tmp) {
      model::save_model(*m, tmp);
      io::copy_tokenizer_files(model_dir, tmp);
    });
  }
  dist.barrier();
  return res;
}

double folder_val_loss(const std::string& model_dir, const std::vector<torch::Tensor>& val, Dist& dist,
                       const std::string& precision, const torch::Device& device) {
  auto m = model::load_model(model_dir, torch::kFloat32, device);
  return evaluate(*m, val, dist, precision);
}

torch::Device rank_device(const torch::Device& requested) {
  if (!requested.is_cuda() || requested.has_index()) return requested;
  const char* lr = std::getenv("LOCAL_RANK");
  if (!lr || !*lr) return requested;
  char* end = nullptr;
  const long r = std::strtol(lr, &end, 10);
  check(end && *end == '\0' && r >= 0, std::string("LOCAL_RANK must be a non-negative integer, got \"") + lr + "\"");
  check(r < static_cast<long>(torch::cuda::device_count()),
        "LOCAL_RANK " + std::to_string(r) + " but only " + std::to_string(torch::cuda::device_count()) + " CUDA devices");
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(r));
}

}  // namespace mha2mla::train
