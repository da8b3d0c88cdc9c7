#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "util/atomic_file.h"
#include "util/error.h"
#include "util/json_read.h"

namespace mha2mla::io {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Real headers are a few hundred KB; anything larger is corrupt or hostile.
constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;

struct DTypeEntry {
  DType dtype;
  const char* name;
  size_t size;
  torch::ScalarType scalar;
};

const DTypeEntry kDTypes[] = {
    {DType::F64, "F64", 8, torch::kFloat64}, {DType::F32, "F32", 4, torch::kFloat32},
    {DType::F16, "F16", 2, torch::kFloat16}, {DType::BF16, "BF16", 2, torch::kBFloat16},
    {DType::I64, "I64", 8, torch::kInt64},   {DType::I32, "I32", 4, torch::kInt32},
    {DType::I16, "I16", 2, torch::kInt16},   {DType::I8, "I8", 1, torch::kInt8},
    {DType::U8, "U8", 1, torch::kUInt8},     {DType::BOOL, "BOOL", 1, torch::kBool},
};

const DTypeEntry& entry(DType t) {
  for (const auto& e : kDTypes)
    if (e.dtype == t) return e;
  fail("invalid DType value " + std::to_string(static_cast<int>(t)));
}

std::string supported_list() {
  std::string s;
  for (const auto& e : kDTypes) s += std::string(s.empty() ? "" : " ") + e.name;
  return s;
}

std::string join_path(const std::string& dir, const std::string& name) { return (fs::path(dir) / name).string(); }

}  // namespace

size_t dtype_size(DType t) { return entry(t).size; }
std::string dtype_name(DType t) { return entry(t).name; }
torch::ScalarType to_torch(DType t) { return entry(t).scalar; }

bool is_float(DType t) { return t == DType::F64 || t == DType::F32 || t == DType::F16 || t == DType::BF16; }

std::string torch_dtype_name(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return "float32";
    case torch::kBFloat16: return "bfloat16";
    case torch::kFloat16: return "float16";
    case torch::kFloat64: return "float64";
    default: fail(std::string("no config.json torch_dtype for ") + c10::toString(t));
  }
}

DType parse_dtype(const std::string& name) {
  for (const auto& e : kDTypes)
    if (name == e.name) return e.dtype;
  fail("unknown dtype \"" + name + "\" (supported: " + supported_list() + ")");
}

DType from_torch(torch::ScalarType t) {
  for (const auto& e : kDTypes)
    if (e.scalar == t) return e.dtype;
  fail(std::string("unsupported tensor dtype ") + c10::toString(t) + " (safetensors supports " + supported_list() + ")");
}

// ---------------------------------------------------------------------------------------------- reading

struct Mapping {
  int fd = -1;
  uint8_t* data = nullptr;
  size_t size = 0;
  uint64_t data_start = 0;  // 8 + header length: where tensor offsets count from
  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (data) ::munmap(data, size);
    if (fd >= 0) ::close(fd);
  }
};

namespace {

std::shared_ptr<Mapping> map_file(const std::string& path) {
  auto m = std::make_shared<Mapping>();
  m->fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (m->fd < 0) fail("cannot open safetensors file " + path + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(m->fd, &st) != 0) fail("cannot stat " + path + ": " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail("safetensors file " + path + " is not a regular file");
  m->size = static_cast<size_t>(st.st_size);
  if (m->size < 8) fail("safetensors file " + path + " is truncated: " + std::to_string(m->size) + " bytes, need at least 8");
  // MAP_PRIVATE + PROT_WRITE: a caller writing into a tensor view gets private copy-on-write pages
  // instead of a SIGSEGV, and the file on disk is never modified.
  void* p = ::mmap(nullptr, m->size, PROT_READ | PROT_WRITE, MAP_PRIVATE, m->fd, 0);
  if (p == MAP_FAILED) fail("cannot mmap " + path + ": " + std::strerror(errno));
  m->data = static_cast<uint8_t*>(p);
  return m;
}

uint64_t read_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// nlohmann keeps the last of duplicate keys silently; a callback sees every top-level key.
json parse_header(const std::string& path, const char* begin, const char* end) {
  std::set<std::string> seen;
  std::string dup;
  json::parser_callback_t cb = [&](int depth, json::parse_event_t ev, json& parsed) {
    if (ev == json::parse_event_t::key && depth == 1 && parsed.is_string()) {
      const auto& k = parsed.get_ref<const std::string&>();
      if (!seen.insert(k).second && dup.empty()) dup = k;
    }
    return true;
  };
  json h = parse_json(std::string_view(begin, static_cast<size_t>(end - begin)), "safetensors file " + path + " header", cb);
  if (!dup.empty()) fail("safetensors file " + path + ": tensor \"" + dup + "\" appears twice in the header");
  if (!h.is_object()) fail("safetensors file " + path + ": header is not a JSON object");
  return h;
}

bool get_u64(const json& v, uint64_t& out) {
  if (v.is_number_unsigned()) {
    out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer() && v.get<int64_t>() >= 0) {
    out = static_cast<uint64_t>(v.get<int64_t>());
    return true;
  }
  return false;
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  map_ = map_file(path);
  const std::string where = "safetensors file " + path;
  const uint64_t file_size = map_->size;
  const uint64_t n = read_le64(map_->data);
  if (n > kMaxHeaderBytes)
    fail(where + ": header length " + std::to_string(n) + " exceeds the " + std::to_string(kMaxHeaderBytes) +
         " byte limit (corrupt file?)");
  if (n > file_size - 8)
    fail(where + " is truncated: header length " + std::to_string(n) + " but only " + std::to_string(file_size - 8) +
         " bytes follow");
  const char* hb = reinterpret_cast<const char*>(map_->data + 8);
  json header = parse_header(path, hb, hb + n);

  const uint64_t data_start = 8 + n;
  const uint64_t data_size = file_size - data_start;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) fail(where + ": __metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m->is_string()) fail(where + ": __metadata__ value for \"" + m.key() + "\" is not a string");
        metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    const std::string tw = where + ", tensor \"" + name + "\"";
    if (!v.is_object()) fail(tw + ": entry is not an object");
    auto dt = v.find("dtype");
    if (dt == v.end() || !dt->is_string()) fail(tw + ": missing or non-string \"dtype\"");
    TensorInfo info;
    info.name = name;
    try {
      info.dtype = parse_dtype(dt->get<std::string>());
    } catch (const Error& e) {
      fail(tw + ": " + e.what());
    }
    auto sh = v.find("shape");
    if (sh == v.end() || !sh->is_array()) fail(tw + ": missing or non-array \"shape\"");
    uint64_t numel = 1;
    bool overflow = false, empty = false;
    for (const auto& d : *sh) {
      uint64_t dim = 0;
      if (!get_u64(d, dim) || dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        fail(tw + ": shape " + json_brief(*sh) + " must hold non-negative integers");
      info.shape.push_back(static_cast<int64_t>(dim));
      empty |= dim == 0;
      uint64_t prod = 0;
      if (__builtin_mul_overflow(numel, dim, &prod)) {
        overflow = true;
      } else {
        numel = prod;
      }
    }
    auto off = v.find("data_offsets");
    uint64_t begin = 0, end = 0;
    if (off == v.end() || !off->is_array() || off->size() != 2 || !get_u64((*off)[0], begin) ||
        !get_u64((*off)[1], end))
      fail(tw + ": \"data_offsets\" must be [begin, end] with non-negative integers");
    if (begin > end) fail(tw + ": data_offsets " + json_brief(*off) + " has begin > end");
    if (end > data_size)
      fail(tw + ": data_offsets " + json_brief(*off) + " lie outside the data section of " + std::to_string(data_size) +
           " bytes (truncated file?)");
    uint64_t nbytes = 0;
    // A zero dimension makes the tensor empty whatever the other dimensions are, so overflow only matters otherwise.
    if (!empty && (overflow || __builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(info.dtype)), &nbytes)))
      fail(tw + ": shape " + json_brief(*sh) + " is too large");
    if (nbytes != end - begin)
      fail(tw + ": shape " + json_brief(*sh) + " x " + dtype_name(info.dtype) + " needs " + std::to_string(nbytes) +
           " bytes but data_offsets " + json_brief(*off) + " span " + std::to_string(end - begin));
    info.offset = begin;
    info.nbytes = nbytes;
    tensors_.push_back(std::move(info));
  }

  std::sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.offset != b.offset ? a.offset < b.offset : a.nbytes < b.nbytes;
  });
  for (size_t i = 1; i < tensors_.size(); ++i) {
    const auto& a = tensors_[i - 1];
    const auto& b = tensors_[i];
    if (a.offset + a.nbytes > b.offset)
      fail(where + ": tensors \"" + a.name + "\" and \"" + b.name + "\" overlap in the data section");
  }
  for (size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
  map_->data_start = data_start;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

torch::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const TensorInfo* info = find(name);
  if (!info) fail("missing tensor " + name + " in " + path_);
  auto opts = torch::TensorOptions().dtype(to_torch(info->dtype));
  uint8_t* ptr = map_->data + map_->data_start + info->offset;
  // Kernels may assume element alignment; files with odd offsets (legal in the format) get a copy instead.
  if (reinterpret_cast<uintptr_t>(ptr) % dtype_size(info->dtype) != 0) {
    auto t = torch::empty(info->shape, opts);
    if (info->nbytes > 0) std::memcpy(t.data_ptr(), ptr, info->nbytes);  // an empty tensor has no data pointer
    return t;
  }
  auto keep = map_;
  return torch::from_blob(
      ptr, info->shape, [keep](void*) mutable { keep.reset(); }, opts);
}

void SafetensorsFile::release(const std::string& name) const {
  const TensorInfo* info = find(name);
  if (!info || info->nbytes == 0) return;
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t b = reinterpret_cast<uintptr_t>(map_->data + map_->data_start + info->offset);
  const uintptr_t e = b + info->nbytes;
  // Whole pages only: a page shared with a neighbouring tensor stays, as that tensor may still be in use.
  const uintptr_t pb = (b + page - 1) / page * page, pe = e / page * page;
  if (pe > pb) ::madvise(reinterpret_cast<void*>(pb), pe - pb, MADV_DONTNEED);
}

bool SafetensorsFile::contains(const void* p) const {
  auto u = reinterpret_cast<const uint8_t*>(p);
  return u >= map_->data && u < map_->data + map_->size;
}

// ---------------------------------------------------------------------------------------------- checkpoint

namespace {

bool is_regular(const std::string& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

// A shard name is a relative path that never climbs out of the index's folder: no root, no "..".
bool shard_inside_folder(const std::string& shard) {
  if (shard.empty() || shard.find('\0') != std::string::npos) return false;
  const fs::path p(shard);
  if (p.is_absolute() || p.has_root_name() || p.has_root_directory()) return false;
  for (const auto& part : p)
    if (part == "..") return false;
  return true;
}

}  // namespace

Checkpoint Checkpoint::open(const std::string& dir_or_file) {
  Checkpoint ck;
  ck.path_ = dir_or_file;
  std::error_code ec;
  if (!fs::exists(dir_or_file, ec)) fail("checkpoint " + dir_or_file + " does not exist");

  std::string index_path;
  std::string single;
  std::string dir;
  if (fs::is_directory(dir_or_file, ec)) {
    dir = dir_or_file;
    if (is_regular(join_path(dir, "model.safetensors.index.json")))
      index_path = join_path(dir, "model.safetensors.index.json");
    else if (is_regular(join_path(dir, "model.safetensors")))
      single = join_path(dir, "model.safetensors");
    else
      fail("no model.safetensors or model.safetensors.index.json in " + dir);
  } else if (dir_or_file.size() >= 5 && dir_or_file.compare(dir_or_file.size() - 5, 5, ".json") == 0) {
    index_path = dir_or_file;
    dir = fs::path(dir_or_file).parent_path().string();
    if (dir.empty()) dir = ".";
  } else {
    single = dir_or_file;
  }

  auto add_file = [&](const std::string& path) {
    auto f = std::make_shared<SafetensorsFile>(path);
    size_t idx = ck.files_.size();
    for (const auto& t : f->tensors()) {
      auto [it, inserted] = ck.where_.emplace(t.name, idx);
      if (!inserted)
        fail("tensor " + t.name + " is present in both " + ck.files_[it->second]->path() + " and " + path);
    }
    ck.files_.push_back(std::move(f));
    return idx;
  };

  if (!single.empty()) {
    add_file(single);
    return ck;
  }

  json index = read_json_file(index_path);
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    fail("index " + index_path + " has no \"weight_map\" object");
  const json& wm = index["weight_map"];
  std::map<std::string, size_t> shard_idx;
  for (auto it = wm.begin(); it != wm.end(); ++it) {
    if (!it->is_string()) fail("index " + index_path + ": shard for tensor " + it.key() + " is not a string");
    const std::string shard = it->get<std::string>();
    if (shard_idx.count(shard)) continue;
    if (!shard_inside_folder(shard))
      fail("index " + index_path + ": shard \"" + shard + "\" for tensor " + it.key() +
           " is not a file name inside the model folder");
    const std::string sp = join_path(dir, shard);
    if (!is_regular(sp)) fail("shard " + sp + " listed in " + index_path + " (for tensor " + it.key() + ") is missing");
    shard_idx[shard] = add_file(sp);
  }
  for (auto it = wm.begin(); it != wm.end(); ++it) {
    const size_t want = shard_idx.at(it->get<std::string>());
    auto w = ck.where_.find(it.key());
    if (w == ck.where_.end() || w->second != want)
      fail("tensor " + it.key() + " listed in " + index_path + " is missing from shard " + ck.files_[want]->path());
  }
  return ck;
}

bool Checkpoint::has(const std::string& name) const { return where_.count(name) != 0; }

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& kv : where_) out.push_back(kv.first);
  return out;
}

const TensorInfo& Checkpoint::info(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail("missing tensor " + name + " in " + path_);
  return *files_[it->second]->find(name);
}

torch::Tensor Checkpoint::get(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail("missing tensor " + name + " in " + path_);
  return files_[it->second]->tensor(name);
}

torch::Tensor Checkpoint::get_float(const std::string& name) const {
  const TensorInfo& ti = info(name);
  if (!is_float(ti.dtype))
    fail("tensor " + name + " in " + files_[where_.at(name)]->path() + " has dtype " + dtype_name(ti.dtype) +
         ", but a float weight belongs there (only float-to-float casts are allowed)");
  return get(name);
}

void Checkpoint::release(const std::string& name) const {
  auto it = where_.find(name);
  if (it != where_.end()) files_[it->second]->release(name);
}

bool Checkpoint::contains(const void* p) const {
  for (const auto& f : files_)
    if (f->contains(p)) return true;
  return false;
}

// ---------------------------------------------------------------------------------------------- writing

namespace {

uint64_t tensor_bytes(const torch::Tensor& t) { return static_cast<uint64_t>(t.numel()) * t.element_size(); }

// Checks names and dtypes before anything touches the disk, so a refused save leaves no trace.
void check_writable(const std::string& path, const NamedTensors& tensors) {
  std::set<std::string> names;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__") fail("cannot save " + path + ": \"__metadata__\" is reserved, not a tensor name");
    if (!names.insert(name).second) fail("cannot save " + path + ": tensor " + name + " given twice");
    if (!t.defined()) fail("cannot save " + path + ": tensor " + name + " is undefined");
    try {
      from_torch(t.scalar_type());
    } catch (const Error& e) {
      fail("cannot save " + path + ", tensor " + name + ": " + e.what());
    }
  }
}

uint64_t spec_bytes(const TensorSpec& s) {
  uint64_t n = dtype_size(s.dtype);
  for (auto d : s.shape) n *= static_cast<uint64_t>(d);
  return n;
}

void write_streamed(const std::string& path, const std::vector<TensorSpec>& specs,
                    const std::function<torch::Tensor(size_t)>& produce,
                    const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& s : specs) {
    const uint64_t nb = spec_bytes(s);
    header[s.name] = {{"dtype", dtype_name(s.dtype)}, {"shape", s.shape}, {"data_offsets", {offset, offset + nb}}};
    offset += nb;
  }
  std::string hs = header.dump();
  // Pad so the data section starts 8-byte aligned (as HF does), keeping mapped tensors aligned.
  hs.append((8 - (8 + hs.size()) % 8) % 8, ' ');

  write_file_atomic(path, [&](std::ostream& os) {
    uint8_t len[8];
    uint64_t n = hs.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
    os.write(reinterpret_cast<const char*>(len), 8);
    os.write(hs.data(), static_cast<std::streamsize>(hs.size()));
    // One tensor at a time on the CPU, so saving a GPU model does not need a second full copy in host memory.
    for (size_t i = 0; i < specs.size(); ++i) {
      const auto& s = specs[i];
      torch::Tensor c = produce(i).detach().to(torch::kCPU).contiguous();
      if (from_torch(c.scalar_type()) != s.dtype || c.sizes().vec() != s.shape)
        fail("cannot save " + path + ": tensor " + s.name + " does not match its declared dtype and shape");
      if (c.numel() > 0) os.write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(tensor_bytes(c)));
      if (!os) fail("write failed for " + path + " at tensor " + s.name);
    }
  });
}

void write_safetensors_unchecked(const std::string& path, const NamedTensors& tensors,
                                 const std::map<std::string, std::string>& metadata) {
  std::vector<TensorSpec> specs;
  for (const auto& [name, t] : tensors) specs.push_back({name, from_torch(t.scalar_type()), t.sizes().vec()});
  write_streamed(path, specs, [&](size_t i) { return tensors[i].second; }, metadata);
}

}  // namespace

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  check_writable(path, tensors);
  write_safetensors_unchecked(path, tensors, metadata);
}

void save_safetensors_streamed(const std::string& path, const std::vector<TensorSpec>& specs,
                               const std::function<torch::Tensor(size_t)>& produce,
                               const std::map<std::string, std::string>& metadata) {
  std::set<std::string> names;
  for (const auto& s : specs) {
    if (s.name == "__metadata__") fail("cannot save " + path + ": \"__metadata__\" is reserved, not a tensor name");
    if (!names.insert(s.name).second) fail("cannot save " + path + ": tensor " + s.name + " given twice");
  }
  write_streamed(path, specs, produce, metadata);
}

void save_checkpoint(const std::string& dir, const NamedTensors& tensors, uint64_t max_shard_bytes) {
  check_writable(dir, tensors);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir)) fail("cannot create checkpoint directory " + dir + ": " + ec.message());
  // transformers refuses safetensors weights whose metadata lacks a known "format".
  const std::map<std::string, std::string> meta = {{"format", "pt"}};
  const std::string index_path = join_path(dir, "model.safetensors.index.json");
  const std::regex shard_re(R"(model-\d{5}-of-\d{5}\.safetensors)");

  uint64_t total = 0;
  for (const auto& kv : tensors) total += tensor_bytes(kv.second);

  // Removes weight files of an earlier save that the new layout does not use; a stale index
  // would otherwise take precedence over the new model.safetensors when loading.
  auto remove_stale = [&](const std::set<std::string>& keep) {
    std::vector<fs::path> stale;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      const std::string fn = e.path().filename().string();
      bool ours = fn == "model.safetensors" || fn == "model.safetensors.index.json" || std::regex_match(fn, shard_re);
      if (ours && !keep.count(fn)) stale.push_back(e.path());
    }
    for (const auto& p : stale) fs::remove(p, ec);
  };

  if (max_shard_bytes == 0 || total <= max_shard_bytes) {
    write_safetensors_unchecked(join_path(dir, "model.safetensors"), tensors, meta);
    remove_stale({"model.safetensors"});
    return;
  }

  // Greedy packing in the given order; a tensor larger than the limit gets a shard of its own.
  std::vector<NamedTensors> shards(1);
  uint64_t cur = 0;
  for (const auto& kv : tensors) {
    const uint64_t nb = tensor_bytes(kv.second);
    if (!shards.back().empty() && cur + nb > max_shard_bytes) {
      shards.emplace_back();
      cur = 0;
    }
    shards.back().push_back(kv);
    cur += nb;
  }
  json weight_map = json::object();
  std::set<std::string> keep = {"model.safetensors.index.json"};
  for (size_t i = 0; i < shards.size(); ++i) {
    char fn[64];
    std::snprintf(fn, sizeof fn, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    write_safetensors_unchecked(join_path(dir, fn), shards[i], meta);
    keep.insert(fn);
    for (const auto& kv : shards[i]) weight_map[kv.first] = fn;
  }
  // The index goes last so it never names a shard that is not yet complete.
  json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  write_text_atomic(index_path, index.dump(2) + "\n");
  remove_stale(keep);
}

// ---------------------------------------------------------------------------------------------- streaming

namespace {

// Room left before the data of a streamed shard for its header, which is known only when the shard closes.
// ~150 bytes per tensor: enough for about 400 tensors; a larger header moves the data once (see close_shard).
constexpr uint64_t kHeaderReserve = 64 * 1024;

void pwrite_all(int fd, const void* buf, uint64_t n, uint64_t off, const std::string& path) {
  auto p = static_cast<const char*>(buf);
  while (n > 0) {
    ssize_t w = ::pwrite(fd, p, std::min<uint64_t>(n, 1ull << 30), static_cast<off_t>(off));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) fail("write failed for " + path + ": " + std::strerror(errno));
    p += w;
    off += static_cast<uint64_t>(w);
    n -= static_cast<uint64_t>(w);
  }
}

std::string shard_tmp_name(const std::string& dir, size_t k) {
  return join_path(dir, ".model-shard-" + std::to_string(k + 1) + ".safetensors.tmp." + std::to_string(::getpid()));
}

}  // namespace

CheckpointWriter::CheckpointWriter(std::string dir, uint64_t max_shard_bytes)
    : dir_(std::move(dir)), max_shard_bytes_(max_shard_bytes) {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec || !fs::is_directory(dir_)) fail("cannot create checkpoint directory " + dir_ + ": " + ec.message());
}

CheckpointWriter::~CheckpointWriter() {
  if (finished_) return;
  std::error_code ec;
  if (fd_ >= 0) {
    ::close(fd_);
    fs::remove(shard_tmp_name(dir_, done_.size()), ec);
  }
  for (const auto& p : done_) fs::remove(p, ec);
}

void CheckpointWriter::add(const std::string& name, const torch::Tensor& t) {
  check(!finished_, "cannot add tensor " + name + " to " + dir_ + ": the checkpoint is finished");
  check_writable(dir_, {{name, t}});
  if (!names_.insert(name).second) fail("cannot save " + dir_ + ": tensor " + name + " given twice");
  const uint64_t nb = tensor_bytes(t);
  if (fd_ >= 0 && max_shard_bytes_ > 0 && data_bytes_ > 0 && data_bytes_ + nb > max_shard_bytes_) close_shard();
  const std::string path = shard_tmp_name(dir_, done_.size());
  if (fd_ < 0) {
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("cannot create " + path + ": " + std::strerror(errno));
    data_bytes_ = 0;
    entries_.clear();
  }
  torch::Tensor c = t.detach().to(torch::kCPU).contiguous();
  if (nb > 0) pwrite_all(fd_, c.data_ptr(), nb, kHeaderReserve + data_bytes_, path);
  entries_.push_back({name, from_torch(c.scalar_type()), c.sizes().vec(), data_bytes_, data_bytes_ + nb});
  data_bytes_ += nb;
  total_ += nb;
}

void CheckpointWriter::close_shard() {
  const std::string path = shard_tmp_name(dir_, done_.size());
  json header = json::object();
  header["__metadata__"] = {{"format", "pt"}};  // transformers refuses safetensors without a known format
  std::vector<std::string> names;
  for (const auto& e : entries_) {
    header[e.name] = {{"dtype", dtype_name(e.dtype)}, {"shape", e.shape}, {"data_offsets", {e.begin, e.end}}};
    names.push_back(e.name);
  }
  std::string hs = header.dump();
  if (8 + hs.size() <= kHeaderReserve) {
    // Trailing spaces are the format's own padding; the data then start exactly at the reserve.
    hs.append(kHeaderReserve - 8 - hs.size(), ' ');
  } else {
    // Too many tensors for the reserve: move the data behind a header of the right size (rare, costs one copy).
    hs.append((8 - (8 + hs.size()) % 8) % 8, ' ');
    const uint64_t start = 8 + hs.size();
    std::vector<char> buf(64 << 20);
    // Backwards, so the growing gap never overwrites data not yet moved.
    uint64_t left = data_bytes_;
    while (left > 0) {
      const uint64_t n = std::min<uint64_t>(left, buf.size());
      left -= n;
      uint64_t got = 0;
      while (got < n) {
        ssize_t r = ::pread(fd_, buf.data() + got, n - got, static_cast<off_t>(kHeaderReserve + left + got));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) fail("read failed for " + path + ": " + std::strerror(errno));
        got += static_cast<uint64_t>(r);
      }
      pwrite_all(fd_, buf.data(), n, start + left, path);
    }
    if (::ftruncate(fd_, static_cast<off_t>(start + data_bytes_)) != 0)
      fail("cannot truncate " + path + ": " + std::strerror(errno));
  }
  uint8_t len[8];
  const uint64_t n = hs.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
  pwrite_all(fd_, len, 8, 0, path);
  pwrite_all(fd_, hs.data(), hs.size(), 8, path);
  if (::fsync(fd_) != 0) fail("cannot sync " + path + ": " + std::strerror(errno));
  ::close(fd_);
  fd_ = -1;
  done_.push_back(path);
  done_names_.push_back(std::move(names));
  entries_.clear();
  data_bytes_ = 0;
}

void CheckpointWriter::finish() {
  check(!finished_, "checkpoint " + dir_ + " is already finished");
  if (fd_ >= 0 || done_.empty()) {
    if (fd_ < 0) {  // no tensor at all: still a valid, empty file
      const std::string path = shard_tmp_name(dir_, 0);
      fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd_ < 0) fail("cannot create " + path + ": " + std::strerror(errno));
    }
    close_shard();
  }
  const size_t n = done_.size();
  auto rename_to = [&](const std::string& from, const std::string& to) {
    std::error_code ec;
    fs::rename(from, join_path(dir_, to), ec);
    if (ec) fail("cannot rename " + from + " to " + to + ": " + ec.message());
  };
  if (n == 1) {
    rename_to(done_[0], "model.safetensors");
  } else {
    json weight_map = json::object();
    for (size_t i = 0; i < n; ++i) {
      char fn[64];
      std::snprintf(fn, sizeof fn, "model-%05zu-of-%05zu.safetensors", i + 1, n);
      rename_to(done_[i], fn);
      for (const auto& name : done_names_[i]) weight_map[name] = fn;
    }
    // The index goes last so it never names a shard that is not yet complete.
    json index = {{"metadata", {{"total_size", total_}}}, {"weight_map", weight_map}};
    write_text_atomic(join_path(dir_, "model.safetensors.index.json"), index.dump(2) + "\n");
  }
  finished_ = true;
}

}  // namespace mha2mla::io
