#pragma once
// Training from model folders and token shards: what the train and finetune subcommands share.
#include <string>
#include <vector>

#include "train/data.h"
#include "train/trainer.h"

namespace mha2mla::train {

// "PATH" or "PATH:WEIGHT" -> a mixture source.
DataSource parse_source(const std::string& spec);

// Validation windows of seq_len+1 tokens (at most max_windows; < 0 = all), checked against the vocabulary.
std::vector<torch::Tensor> load_val_batches(const std::string& path, int64_t seq_len, int64_t batch,
                                            int64_t max_windows, int64_t vocab);

// Trains the model in model_dir on the mixture and writes the result to OUT/model (an HF folder with the
// tokenizer) besides the run files. The batches come from a MixtureSampler seeded with opt.seed.
TrainResult train_folder(const std::string& model_dir, const std::vector<DataSource>& data,
                         const std::vector<torch::Tensor>& val, TrainOptions opt, Dist& dist);

// Held-out loss (mean NLL per token) of the model in model_dir.
double folder_val_loss(const std::string& model_dir, const std::vector<torch::Tensor>& val, Dist& dist,
                       const std::string& precision = "f32", const torch::Device& device = torch::kCPU);

// The device this rank trains on: a bare "cuda" becomes cuda:LOCAL_RANK under torchrun-style variables, so
// each process of a node takes its own GPU; an explicit index or the CPU is kept.
torch::Device rank_device(const torch::Device& requested);

}  // namespace mha2mla::train
