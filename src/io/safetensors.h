#pragma once
// safetensors reading (memory-mapped, strictly validated) and atomic writing, single file or sharded.
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace mha2mla::io {

enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

size_t dtype_size(DType t);
std::string dtype_name(DType t);            // "F32", "BF16", ...
DType parse_dtype(const std::string& name);  // throws Error on an unknown name
torch::ScalarType to_torch(DType t);
DType from_torch(torch::ScalarType t);       // throws Error if unsupported
bool is_float(DType t);                      // F64, F32, F16, BF16
// config.json's "torch_dtype" for a weight dtype: "float32", "bfloat16", "float16", "float64"; throws otherwise.
std::string torch_dtype_name(torch::ScalarType t);

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t offset = 0;  // from the start of the data section
  uint64_t nbytes = 0;
};

struct Mapping;  // an mmap'd file, shared by the tensors that view it

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);  // maps and validates; throws Error naming file and tensor
  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in file (offset) order
  const TensorInfo* find(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Zero-copy, copy-on-write view of the mapped bytes; keeps the mapping alive.
  torch::Tensor tensor(const std::string& name) const;
  // Gives the pages that hold only this tensor's bytes back to the kernel (madvise MADV_DONTNEED), so they stop
  // counting as resident; a later read maps them in again from the file. Writes made through a view of these
  // pages are lost, so call it only for tensors that were read (converted, copied, written out) and are done with.
  void release(const std::string& name) const;
  // Whether p points into this file's mapping (a zero-copy view's storage does).
  bool contains(const void* p) const;

 private:
  std::string path_;
  std::shared_ptr<Mapping> map_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// A model's weights: DIR/model.safetensors, DIR/model.safetensors.index.json with shards, or a single file path.
class Checkpoint {
 public:
  static Checkpoint open(const std::string& dir_or_file);
  bool has(const std::string& name) const;
  std::vector<std::string> names() const;  // sorted
  const TensorInfo& info(const std::string& name) const;  // throws Error "missing tensor NAME in PATH"
  torch::Tensor get(const std::string& name) const;       // zero-copy view, see SafetensorsFile::tensor
  // get() for a weight: throws Error naming tensor, file and dtype unless it is F64/F32/F16/BF16.
  torch::Tensor get_float(const std::string& name) const;
  void release(const std::string& name) const;            // see SafetensorsFile::release
  bool contains(const void* p) const;                     // p points into one of the mapped files
  const std::vector<std::shared_ptr<SafetensorsFile>>& files() const { return files_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index into files_
};

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// Writes PATH.tmp then renames; tensors are written contiguous on CPU in their own dtype.
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// One tensor of a file written by save_safetensors_streamed: what its header says before the data exist.
struct TensorSpec {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
};

// save_safetensors for tensors made one at a time: produce(i) returns tensor i (it must match specs[i]), which is
// written and dropped before the next is made, so the file's tensors are never all in memory at once.
void save_safetensors_streamed(const std::string& path, const std::vector<TensorSpec>& specs,
                               const std::function<torch::Tensor(size_t)>& produce,
                               const std::map<std::string, std::string>& metadata = {});

// Writes DIR/model.safetensors, or, when the data exceed max_shard_bytes (> 0),
// DIR/model-0000i-of-0000n.safetensors plus model.safetensors.index.json. Each file atomically.
void save_checkpoint(const std::string& dir, const NamedTensors& tensors, uint64_t max_shard_bytes = 0);

// Writes a checkpoint folder one tensor at a time, so only the tensor being written is held: files of at most
// max_shard_bytes of data (a larger tensor gets a file of its own), named as HF does,
// model-0000k-of-0000n.safetensors plus model.safetensors.index.json, or model.safetensors when one file holds
// everything (max_shard_bytes = 0: always one). Each file is written under a temporary name, synced and renamed
// by finish(); an unfinished writer removes its temporary files. Make the folder itself atomic by writing into a
// temporary folder and renaming it.
class CheckpointWriter {
 public:
  CheckpointWriter(std::string dir, uint64_t max_shard_bytes);
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;
  void add(const std::string& name, const torch::Tensor& t);  // any device/dtype; written contiguous from the CPU
  void finish();
  uint64_t total_bytes() const { return total_; }

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    uint64_t begin, end;
  };
  void close_shard();

  std::string dir_;
  uint64_t max_shard_bytes_;
  uint64_t total_ = 0;
  int fd_ = -1;                          // the open temporary shard, or -1
  uint64_t data_bytes_ = 0;              // data written to the open shard
  std::vector<Entry> entries_;           // of the open shard
  std::vector<std::string> done_;        // temporary names of the closed shards, in order
  std::vector<std::vector<std::string>> done_names_;  // tensor names per closed shard
  std::set<std::string> names_;
  bool finished_ = false;
};

}  // namespace mha2mla::io
