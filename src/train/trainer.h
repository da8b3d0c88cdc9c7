#pragma once
// The training loop: AdamW with a warmup-stable-decay schedule, gradient accumulation and clipping,
// fp32 or bf16 mixed precision (fp32 master weights), periodic validation, and atomic checkpoints from
// which a run resumes exactly (same batches, same optimizer state, same loss trajectory).
#include <torch/torch.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/transformer.h"
#include "dist/distributed.h"
#include "train/optim.h"

namespace mha2mla::train {

using dist::Dist;  // the process group that training reduces over

struct TrainOptions {
  std::string out;              // run folder: model/, checkpoints/, train_log.jsonl, loss.svg
  std::string source_dir;       // model folder whose tokenizer files are copied into checkpoints
  int64_t steps = 100;          // optimizer steps in the whole run
  int64_t batch = 8;            // sequences per optimizer step, over all ranks and micro-batches
  int64_t accum = 1;            // micro-batches per step and rank
  int64_t seq_len = 256;
  Schedule schedule;
  AdamWOptions adam;
  double clip = 1.0;            // 0 = off
  std::string precision = "f32";  // f32 | bf16 (bf16 compute, fp32 master weights)
  std::string train = "all";      // all | attn (attention and norm parameters only)
  int64_t val_every = 0;          // 0 = only at the end
  int64_t save_every = 0;         // 0 = only at the end
  int64_t stop_after = 0;         // stop (with a checkpoint) after this step, as if interrupted; 0 = run to the end
  bool resume = false;
  bool zero1 = false;             // shard optimizer state across ranks
  bool progress = true;
  uint64_t seed = 42;
  torch::Device device = torch::kCPU;  // where the model trains (train_folder loads it there)
  // Distillation (X-EcoMLA's recovery loss): loss = CE + distill · KL(teacher ‖ student), the KL of the
  // teacher's next-token distribution per token, averaged over tokens. The teacher is frozen and runs beside
  // the student on the same batches; distill = 0 trains on CE alone.
  double distill = 0;
  std::shared_ptr<model::TransformerImpl> teacher;
};

// Micro-batch `micro` of optimizer step `step` for this rank: [b, seq_len + 1] token ids.
using BatchFn = std::function<torch::Tensor(int64_t step, int64_t micro)>;

struct TrainResult {
  int64_t steps = 0, tokens = 0;
  double last_loss = 0, val_loss = -1, tokens_per_s = 0, seconds = 0;
};

// Mean next-token loss over [b, T+1] batches, all ranks together (each evaluates its share).
double evaluate(model::TransformerImpl& m, const std::vector<torch::Tensor>& batches, Dist& dist,
                const std::string& precision = "f32");

// Next-token cross-entropy of one [b, T+1] batch (mean over tokens), with autograd.
torch::Tensor lm_loss(model::TransformerImpl& m, const torch::Tensor& batch);

// Mean over tokens of KL(p_teacher ‖ p_student) for the next-token distributions of one [b, T+1] batch; the
// gradient flows into the student's logits [b, T, V] only.
torch::Tensor kl_to_teacher(const torch::Tensor& student_logits, model::TransformerImpl& teacher,
                            const torch::Tensor& batch);

// The training loss of one batch: lm_loss, plus weight · kl_to_teacher when a teacher is given.
torch::Tensor training_loss(model::TransformerImpl& m, const torch::Tensor& batch,
                            model::TransformerImpl* teacher = nullptr, double weight = 0);

TrainResult run_training(model::TransformerImpl& m, const TrainOptions& opt, const BatchFn& batches,
                         const std::vector<torch::Tensor>& val_batches, Dist& dist);

// Line chart of train (and validation) loss against step.
void write_loss_svg(const std::string& path, const std::vector<std::pair<int64_t, double>>& train,
                    const std::vector<std::pair<int64_t, double>>& val);

// Enables bf16 autocast for its lifetime (no-op for f32).
class Autocast {
 public:
  Autocast(const std::string& precision, const torch::Device& device);
  ~Autocast();

 private:
  bool on_ = false;
  bool cuda_ = false;
};

}  // namespace mha2mla::train
