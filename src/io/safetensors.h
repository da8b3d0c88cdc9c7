#pragma once
// safetensors reading (memory-mapped, strictly validated) and atomic writing, single file or sharded.
#include <torch/torch.h>

#include <cstdint>
#include <map>
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

// Writes DIR/model.safetensors, or, when the data exceed max_shard_bytes (> 0),
// DIR/model-0000i-of-0000n.safetensors plus model.safetensors.index.json. Each file atomically.
void save_checkpoint(const std::string& dir, const NamedTensors& tensors, uint64_t max_shard_bytes = 0);

}  // namespace mha2mla::io
