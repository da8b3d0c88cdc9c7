#include "train/data.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"
#include "util/atomic_file.h"
#include "util/error.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "token shards are little-endian and are read in place: a little-endian host is required"
#endif

namespace mha2mla::train {

namespace fs = std::filesystem;

namespace {

std::string errno_text() { return std::strerror(errno); }

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

uint64_t mix64(uint64_t z) {  // splitmix64 finaliser
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

double unit(uint64_t h) { return double(h >> 11) * 0x1.0p-53; }

// Uniform in [0, n) without a division: the high word of h * n.
int64_t below(uint64_t h, int64_t n) { return int64_t((unsigned __int128)h * uint64_t(n) >> 64); }

std::string need_tokens_message(int64_t have, int64_t seq_len) {
  return "data has " + std::to_string(have) + " tokens, need at least seq_len+1 = " + std::to_string(seq_len + 1);
}

void put_u32(unsigned char* p, uint32_t v) { std::memcpy(p, &v, 4); }
void put_u64(unsigned char* p, uint64_t v) { std::memcpy(p, &v, 8); }

}  // namespace

int token_bytes_for_vocab(int64_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

// ------------------------------------------------------------------------------------------------
// TokenShard

TokenShard::TokenShard(TokenShard&& o) noexcept { *this = std::move(o); }

TokenShard& TokenShard::operator=(TokenShard&& o) noexcept {
  if (this != &o) {
    if (map_) ::munmap(map_, map_bytes_);
    path_ = std::move(o.path_);
    map_ = o.map_;
    map_bytes_ = o.map_bytes_;
    tokens_ = o.tokens_;
    size_ = o.size_;
    bytes_ = o.bytes_;
    max_ = o.max_;
    o.map_ = nullptr;
    o.map_bytes_ = 0;
    o.tokens_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

TokenShard::~TokenShard() {
  if (map_) ::munmap(map_, map_bytes_);
}

namespace {

// Token size of a datatrove .ds file of FILE_BYTES bytes, from its .metadata or .index companion.
int ds_token_bytes(const std::string& path, int64_t file_bytes, int hint) {
  auto from_count = [&](int64_t count, const std::string& what) -> int {
    if (count <= 0) return 0;
    if (file_bytes % count != 0 || (file_bytes / count != 2 && file_bytes / count != 4))
      fail(path + ": " + what + " says " + std::to_string(count) + " tokens, which does not fit the file size " +
           std::to_string(file_bytes) + " bytes with 2- or 4-byte tokens");
    return int(file_bytes / count);
  };
  int found = 0;
  std::string source;
  if (std::ifstream meta(path + ".metadata"); meta) {
    std::string name, count;
    std::getline(meta, name);
    std::getline(meta, count);
    try {
      size_t pos = 0;
      long long n = std::stoll(count, &pos);
      found = from_count(n, path + ".metadata");
      source = ".metadata";
    } catch (const std::logic_error&) {
      fail(path + ".metadata: second line should be the token count, got \"" + count + "\"");
    }
  }
  if (!found) {
    if (std::ifstream index(path + ".index", std::ios::binary | std::ios::ate); index) {
      int64_t n = int64_t(index.tellg());
      if (n % 8 != 0) fail(path + ".index: size " + std::to_string(n) + " is not a multiple of 8 (uint64 ends)");
      if (n >= 8) {
        uint64_t last = 0;
        index.seekg(n - 8);
        index.read(reinterpret_cast<char*>(&last), 8);
        found = from_count(int64_t(last), path + ".index");
        source = ".index";
      }
    }
  }
  if (hint) {
    if (hint != 2 && hint != 4) fail(path + ": token size must be 2 or 4, got " + std::to_string(hint));
    if (found && found != hint)
      fail(path + ": token size " + std::to_string(hint) + " was requested but " + source + " implies " +
           std::to_string(found));
    return hint;
  }
  if (!found)
    fail(path + ": cannot tell the token size of a .ds file without " + path + ".metadata or .index; "
         "pass the token size (2 or 4)");
  return found;
}

}  // namespace

TokenShard TokenShard::open(const std::string& path, int token_bytes) {
  TokenShard s;
  s.path_ = path;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("cannot open token shard " + path + ": " + errno_text());
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    fail("cannot stat " + path + ": " + errno_text());
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    fail(path + " is a folder, not a token shard");
  }
  const int64_t file_bytes = int64_t(st.st_size);
  if (file_bytes > 0) {
    s.map_ = ::mmap(nullptr, size_t(file_bytes), PROT_READ, MAP_SHARED, fd, 0);
    int err = errno;
    ::close(fd);
    if (s.map_ == MAP_FAILED) {
      s.map_ = nullptr;
      fail("cannot map " + path + ": " + std::strerror(err));
    }
    s.map_bytes_ = size_t(file_bytes);
  } else {
    ::close(fd);
  }
  const auto* base = static_cast<const unsigned char*>(s.map_);

  if (ends_with(path, ".ds")) {
    s.bytes_ = ds_token_bytes(path, file_bytes, token_bytes);
    if (file_bytes % s.bytes_ != 0)
      fail(path + ": truncated .ds file: " + std::to_string(file_bytes) + " bytes is not a whole number of " +
           std::to_string(s.bytes_) + "-byte tokens");
    s.tokens_ = base;
    s.size_ = file_bytes / s.bytes_;
    return s;
  }

  if (file_bytes < kShardHeaderBytes)
    fail(path + ": truncated token shard: " + std::to_string(file_bytes) + " bytes, the header alone needs " +
         std::to_string(kShardHeaderBytes));
  if (std::memcmp(base, kShardMagic, 8) != 0)
    fail(path + ": not a token shard (magic is not " + std::string(kShardMagic) + ")");
  uint32_t version, bytes;
  uint64_t count, reserved;
  std::memcpy(&version, base + 8, 4);
  std::memcpy(&bytes, base + 12, 4);
  std::memcpy(&count, base + 16, 8);
  std::memcpy(&reserved, base + 24, 8);
  if (version != 1) fail(path + ": unsupported token shard version " + std::to_string(version) + " (expected 1)");
  if (bytes != 2 && bytes != 4) fail(path + ": corrupt token shard: bytes per token is " + std::to_string(bytes));
  if (reserved != 0) fail(path + ": corrupt token shard: reserved header field is not 0");
  const uint64_t payload = uint64_t(file_bytes - kShardHeaderBytes);
  if (count > payload / bytes || count * bytes != payload)
    fail(path + ": truncated or corrupt token shard: header says " + std::to_string(count) + " tokens (" +
         std::to_string(count * bytes) + " bytes) but the file holds " + std::to_string(payload) +
         " bytes after the header");
  s.bytes_ = int(bytes);
  s.size_ = int64_t(count);
  s.tokens_ = base + kShardHeaderBytes;
  return s;
}

void TokenShard::read(int64_t start, int64_t n, int64_t* out) const {
  if (start < 0 || n < 0 || start + n > size_)
    fail(path_ + ": read of tokens [" + std::to_string(start) + ", " + std::to_string(start + n) +
         ") is outside the shard's " + std::to_string(size_) + " tokens");
  if (bytes_ == 2) {
    const auto* p = reinterpret_cast<const uint16_t*>(tokens_) + start;
    for (int64_t i = 0; i < n; ++i) out[i] = p[i];
  } else {
    const auto* p = reinterpret_cast<const uint32_t*>(tokens_) + start;
    for (int64_t i = 0; i < n; ++i) out[i] = p[i];
  }
}

int64_t TokenShard::max_token() const {
  if (max_ != -2) return max_;
  int64_t m = -1;
  if (bytes_ == 2) {
    const auto* p = reinterpret_cast<const uint16_t*>(tokens_);
    uint16_t x = 0;
    for (int64_t i = 0; i < size_; ++i) x = std::max(x, p[i]);
    if (size_) m = x;
  } else {
    const auto* p = reinterpret_cast<const uint32_t*>(tokens_);
    uint32_t x = 0;
    for (int64_t i = 0; i < size_; ++i) x = std::max(x, p[i]);
    if (size_) m = x;
  }
  max_ = m;
  return m;
}

void check_vocab(const TokenShard& shard, int64_t vocab_size) {
  check(vocab_size > 0, "vocab size must be positive");
  if (shard.max_token() < vocab_size) return;
  for (int64_t i = 0; i < shard.size(); ++i)
    if (shard[i] >= vocab_size)
      fail("token id " + std::to_string(shard[i]) + " at position " + std::to_string(i) + " of " + shard.path() +
           " is >= the model's vocab size " + std::to_string(vocab_size) + " (max id in the shard: " +
           std::to_string(shard.max_token()) + "); was it tokenized with another tokenizer?");
}

// ------------------------------------------------------------------------------------------------
// ShardWriter

ShardWriter::ShardWriter(std::string path, int bytes_per_token) : path_(std::move(path)), bytes_(bytes_per_token) {
  check(bytes_ == 2 || bytes_ == 4, "token width must be 2 or 4 bytes");
  static std::atomic<unsigned long> counter{0};
  tmp_ = path_ + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
  out_ = std::make_unique<std::ofstream>(tmp_, std::ios::binary | std::ios::trunc);
  if (!*out_) fail("cannot create " + tmp_ + ": " + errno_text());
  char header[kShardHeaderBytes] = {};
  out_->write(header, kShardHeaderBytes);  // rewritten with the count by finish()
  buf_.reserve(1 << 20);
}

ShardWriter::~ShardWriter() {
  if (!finished_) {
    out_.reset();
    std::remove(tmp_.c_str());
  }
}

void ShardWriter::flush_buffer() {
  if (buf_.empty()) return;
  out_->write(reinterpret_cast<const char*>(buf_.data()), std::streamsize(buf_.size()));
  if (!*out_) fail("write failed for " + tmp_ + " (disk full?)");
  buf_.clear();
}

void ShardWriter::append(const int32_t* ids, size_t n) {
  check(!finished_, "shard " + path_ + " is already finished");
  const uint64_t limit = bytes_ == 2 ? 0xFFFFull : 0xFFFFFFFFull;
  for (size_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || uint64_t(ids[i]) > limit)
      fail("token id " + std::to_string(ids[i]) + " does not fit a " + std::to_string(bytes_) + "-byte shard");
    uint32_t v = uint32_t(ids[i]);
    unsigned char b[4];
    std::memcpy(b, &v, 4);
    buf_.insert(buf_.end(), b, b + bytes_);
  }
  count_ += int64_t(n);
  if (buf_.size() >= (1u << 20)) flush_buffer();
}

void ShardWriter::finish() {
  check(!finished_, "shard " + path_ + " is already finished");
  flush_buffer();
  unsigned char header[kShardHeaderBytes] = {};
  std::memcpy(header, kShardMagic, 8);
  put_u32(header + 8, 1);
  put_u32(header + 12, uint32_t(bytes_));
  put_u64(header + 16, uint64_t(count_));
  put_u64(header + 24, 0);
  out_->seekp(0);
  out_->write(reinterpret_cast<const char*>(header), kShardHeaderBytes);
  out_->flush();
  if (!*out_) fail("write failed for " + tmp_ + " (disk full?)");
  out_->close();
  if (out_->fail()) fail("cannot close " + tmp_);
  // Data on disk before the rename publishes it.
  int fd = ::open(tmp_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 || ::fsync(fd) != 0) {
    if (fd >= 0) ::close(fd);
    fail("cannot sync " + tmp_ + ": " + errno_text());
  }
  ::close(fd);
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0) fail("cannot rename " + tmp_ + " to " + path_ + ": " + errno_text());
  finished_ = true;
  std::string dir = fs::path(path_).parent_path().string();
  int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);  // best effort
    ::close(dfd);
  }
}

// ------------------------------------------------------------------------------------------------
// Preparation

bool is_val_document(int64_t index, uint64_t seed, double val_fraction) {
  if (val_fraction <= 0) return false;
  if (val_fraction >= 1) return true;
  uint64_t h = mix64(mix64(uint64_t(index) + 0x9E3779B97F4A7C15ull) ^ (seed * 0xD1B54A32D192ED03ull + 0x8CB92BA72F3D8DD7ull));
  return unit(h) < val_fraction;
}

namespace {

struct Document {
  std::string text;
  size_t source;  // index into the sources list
  int64_t line;   // first line, for error messages
  bool val;
};

struct SourceStats {
  std::string path;
  bool val_only;
  int64_t bytes = 0, documents = 0, skipped_empty = 0, train_tokens = 0, val_tokens = 0;
};

std::optional<int64_t> config_eos(const std::string& tokenizer_path, const tok::Tokenizer& tok) {
  fs::path p(tokenizer_path);
  std::error_code ec;
  fs::path dir = fs::is_directory(p, ec) ? p : p.parent_path();
  fs::path cfg = dir / "tokenizer_config.json";
  std::ifstream f(cfg);
  if (!f) return std::nullopt;
  try {
    auto j = nlohmann::json::parse(f);
    if (!j.contains("eos_token")) return std::nullopt;
    const auto& e = j["eos_token"];
    std::string s = e.is_string() ? e.get<std::string>()
                    : e.is_object() && e.contains("content") ? e["content"].get<std::string>()
                                                             : std::string();
    if (s.empty()) return std::nullopt;
    if (auto id = tok.token_to_id(s)) return *id;
  } catch (const nlohmann::json::exception&) {
  }
  return std::nullopt;
}

// Encodes docs in parallel; ids[i] gets docs[i]'s tokens. The first failing document (in input order)
// is reported.
void encode_batch(const tok::Tokenizer& tok, const std::vector<Document>& docs, std::vector<std::vector<int32_t>>& ids,
                  int threads, const std::vector<SourceStats>& sources) {
  ids.assign(docs.size(), {});
  std::atomic<size_t> next{0};
  std::vector<std::string> errors(docs.size());
  std::atomic<bool> any_error{false};
  auto work = [&] {
    for (size_t i; (i = next++) < docs.size();) {
      try {
        ids[i] = tok.encode(docs[i].text, /*add_special_tokens=*/false);
      } catch (const std::exception& e) {
        errors[i] = e.what();
        any_error = true;
      }
    }
  };
  int n = std::max(1, std::min<int>(threads, int(docs.size() / 4) + 1));
  std::vector<std::thread> pool;
  for (int t = 1; t < n; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  if (any_error)
    for (size_t i = 0; i < docs.size(); ++i)
      if (!errors[i].empty())
        fail(sources[docs[i].source].path + ":" + std::to_string(docs[i].line) + ": " + errors[i]);
}

}  // namespace

PrepareResult prepare_data(const PrepareOptions& opts, const std::function<void(int64_t, int64_t)>& progress) {
  auto t0 = std::chrono::steady_clock::now();
  check(!opts.inputs.empty() || !opts.val_inputs.empty(), "no input files");
  check(!opts.out_dir.empty(), "no output folder");
  check(opts.val_fraction >= 0 && opts.val_fraction <= 1, "val fraction must be in [0, 1]");
  if (opts.jsonl_field) check(!opts.jsonl_field->empty(), "the JSONL field name is empty");

  tok::Tokenizer tok = tok::Tokenizer::load(opts.tokenizer);
  const int64_t vocab = tok.vocab_size();
  int64_t eos;
  if (opts.eos_id) {
    eos = *opts.eos_id;
  } else if (auto id = tok.token_to_id("<|endoftext|>")) {
    eos = *id;
  } else if (auto cid = config_eos(opts.tokenizer, tok)) {
    eos = *cid;
  } else {
    fail("the tokenizer has no <|endoftext|> token and no eos_token in tokenizer_config.json; pass --eos-id");
  }
  check(eos >= 0 && eos < vocab, "EOS id " + std::to_string(eos) + " is outside the tokenizer's vocab (size " +
                                     std::to_string(vocab) + ")");
  const int width = token_bytes_for_vocab(vocab);

  std::vector<SourceStats> sources;
  int64_t total_bytes = 0;
  for (const auto& p : opts.inputs) sources.push_back({p, false});
  for (const auto& p : opts.val_inputs) sources.push_back({p, true});
  for (auto& s : sources) {
    std::error_code ec;
    check(fs::is_regular_file(s.path, ec), "input not found (or not a file): " + s.path);
    s.bytes = int64_t(fs::file_size(s.path, ec));
    total_bytes += s.bytes;
  }

  {
    std::error_code ec;
    fs::create_directories(opts.out_dir, ec);
    if (ec || !fs::is_directory(opts.out_dir, ec)) fail("cannot create output folder " + opts.out_dir);
  }
  const std::string train_path = (fs::path(opts.out_dir) / "train.bin").string();
  const std::string val_path = (fs::path(opts.out_dir) / "val.bin").string();
  ShardWriter train_w(train_path, width), val_w(val_path, width);

  const int threads = opts.threads > 0 ? opts.threads : std::max(1, int(std::thread::hardware_concurrency()));
  std::vector<Document> batch;
  std::vector<std::vector<int32_t>> ids;
  size_t batch_bytes = 0;
  int64_t doc_index = 0, bytes_done = 0, docs_train = 0, docs_val = 0;
  auto flush = [&] {
    if (batch.empty()) return;
    encode_batch(tok, batch, ids, threads, sources);
    const int32_t eos32 = int32_t(eos);
    for (size_t i = 0; i < batch.size(); ++i) {
      ids[i].push_back(eos32);
      ShardWriter& w = batch[i].val ? val_w : train_w;
      w.append(ids[i].data(), ids[i].size());
      auto& st = sources[batch[i].source];
      (batch[i].val ? st.val_tokens : st.train_tokens) += int64_t(ids[i].size());
      (batch[i].val ? docs_val : docs_train) += 1;
    }
    batch.clear();
    batch_bytes = 0;
    if (progress) progress(bytes_done, total_bytes);
  };
  auto add_doc = [&](size_t source, std::string text, int64_t line) {
    auto& st = sources[source];
    if (text.empty()) {
      ++st.skipped_empty;
      return;
    }
    ++st.documents;
    bool val = st.val_only || is_val_document(doc_index++, opts.seed, opts.val_fraction);
    batch_bytes += text.size();
    batch.push_back({std::move(text), source, line, val});
    if (batch.size() >= 4096 || batch_bytes >= (8u << 20)) flush();
  };

  for (size_t si = 0; si < sources.size(); ++si) {
    const std::string& path = sources[si].path;
    std::ifstream in(path, std::ios::binary);
    if (!in) fail("cannot open " + path + ": " + errno_text());
    const bool jsonl = opts.jsonl_field.has_value() || ends_with(path, ".jsonl");
    const std::string field = opts.jsonl_field.value_or("text");
    std::string line, doc;
    int64_t line_no = 0, doc_line = 0;
    while (std::getline(in, line)) {
      ++line_no;
      bytes_done += int64_t(line.size()) + 1;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (jsonl) {
        if (line.find_first_not_of(" \t") == std::string::npos) continue;
        nlohmann::json j;
        try {
          j = nlohmann::json::parse(line);
        } catch (const nlohmann::json::exception& e) {
          fail(path + ":" + std::to_string(line_no) + ": invalid JSON: " + e.what());
        }
        if (!j.is_object() || !j.contains(field))
          fail(path + ":" + std::to_string(line_no) + ": no \"" + field + "\" field (set it with --jsonl-field)");
        if (!j[field].is_string())
          fail(path + ":" + std::to_string(line_no) + ": field \"" + field + "\" is not a string");
        add_doc(si, j[field].get<std::string>(), line_no);
        continue;
      }
      size_t bad = tok::find_invalid_utf8(line);
      if (bad != std::string::npos)
        fail(path + ":" + std::to_string(line_no) + ": invalid UTF-8 at byte " + std::to_string(bad) + " of the line");
      const bool blank = line.find_first_not_of(" \t\f\v") == std::string::npos;
      if (opts.doc_sep == DocSep::Line) {
        if (!blank) add_doc(si, std::move(line), line_no);
        continue;
      }
      if (blank) {
        if (!doc.empty()) add_doc(si, std::move(doc), doc_line);
        doc.clear();
        continue;
      }
      if (doc.empty()) doc_line = line_no;
      else doc += '\n';
      doc += line;
    }
    if (in.bad()) fail("error reading " + path);
    if (!doc.empty()) add_doc(si, std::move(doc), doc_line);
  }
  flush();
  if (docs_train + docs_val == 0) {
    std::string names;
    for (const auto& s : sources) names += (names.empty() ? "" : ", ") + s.path;
    fail("no documents found in " + names + " (empty input?)");
  }
  train_w.finish();
  val_w.finish();

  nlohmann::json src = nlohmann::json::array();
  for (const auto& s : sources)
    src.push_back({{"path", s.path},
                   {"split", s.val_only ? "val" : "train+val"},
                   {"bytes", s.bytes},
                   {"documents", s.documents},
                   {"skipped_empty", s.skipped_empty},
                   {"tokens", {{"train", s.train_tokens}, {"val", s.val_tokens}}}});
  nlohmann::json meta{{"format", kShardMagic},
                      {"vocab_size", vocab},
                      {"dtype", width == 2 ? "uint16" : "uint32"},
                      {"eos_id", eos},
                      {"tokens", {{"train", train_w.size()}, {"val", val_w.size()}}},
                      {"documents", {{"train", docs_train}, {"val", docs_val}}},
                      {"tokenizer", opts.tokenizer},
                      {"val_fraction", opts.val_fraction},
                      {"seed", opts.seed},
                      {"doc_sep", opts.doc_sep == DocSep::Line ? "line" : "blank"},
                      {"sources", std::move(src)}};
  write_text_atomic((fs::path(opts.out_dir) / "meta.json").string(), meta.dump(2) + "\n");
  PrepareResult r;
  r.meta = std::move(meta);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

// ------------------------------------------------------------------------------------------------
// Sampling

std::vector<std::string> resolve_shards(const std::string& path, const std::string& split) {
  std::error_code ec;
  if (!fs::exists(path, ec)) fail("data not found: " + path);
  if (!fs::is_directory(path, ec)) return {path};
  fs::path named = fs::path(path) / (split + ".bin");
  if (fs::is_regular_file(named, ec)) return {named.string()};
  std::vector<std::string> bins, ds;
  for (const auto& e : fs::directory_iterator(path)) {
    if (!e.is_regular_file()) continue;
    std::string p = e.path().string();
    if (ends_with(p, ".bin")) bins.push_back(p);
    else if (ends_with(p, ".ds")) ds.push_back(p);
  }
  auto& chosen = bins.empty() ? ds : bins;
  check(!chosen.empty(), "no token shards in " + path + " (expected " + split + ".bin, *.bin or *.ds)");
  std::sort(chosen.begin(), chosen.end());
  return chosen;
}

nlohmann::json SamplerState::to_json() const { return {{"step", step}, {"seed", seed}}; }

SamplerState SamplerState::from_json(const nlohmann::json& j) {
  SamplerState s;
  try {
    s.step = j.at("step").get<int64_t>();
    s.seed = j.at("seed").get<uint64_t>();
  } catch (const nlohmann::json::exception& e) {
    fail(std::string("invalid sampler state: ") + e.what());
  }
  check(s.step >= 0, "invalid sampler state: negative step");
  return s;
}

MixtureSampler::MixtureSampler(const std::vector<DataSource>& sources, int64_t seq_len, int64_t batch_size,
                               uint64_t seed, int64_t rank, int64_t world_size)
    : seq_len_(seq_len), batch_(batch_size), seed_(seed), rank_(rank), world_(world_size) {
  check(!sources.empty(), "no training data sources");
  check(seq_len >= 1, "seq_len must be at least 1");
  check(batch_size >= 1, "batch size must be at least 1");
  check(world_size >= 1 && rank >= 0 && rank < world_size,
        "rank " + std::to_string(rank) + " is outside world size " + std::to_string(world_size));
  double total_weight = 0;
  for (const auto& d : sources) {
    check(std::isfinite(d.weight) && d.weight > 0, d.path + ": data weight must be positive, got " + std::to_string(d.weight));
    total_weight += d.weight;
  }
  double cum = 0;
  for (const auto& d : sources) {
    Source s;
    s.path = d.path;
    int64_t windows = 0, tokens = 0, longest = 0;
    for (const auto& f : resolve_shards(d.path, "train")) {
      TokenShard sh = TokenShard::open(f);
      tokens += sh.size();
      longest = std::max(longest, sh.size());
      windows += std::max<int64_t>(0, sh.size() - seq_len);
      s.window_ends.push_back(windows);
      s.shards.push_back(std::move(sh));
    }
    if (windows == 0) {
      if (tokens < seq_len + 1) fail(d.path + ": " + need_tokens_message(tokens, seq_len));
      fail(d.path + ": no single shard holds seq_len+1 = " + std::to_string(seq_len + 1) +
           " tokens (the longest has " + std::to_string(longest) + ")");
    }
    cum += d.weight / total_weight;
    s.cum_weight = cum;
    sources_.push_back(std::move(s));
  }
  sources_.back().cum_weight = 1.0;
}

int64_t MixtureSampler::source_tokens(int64_t i) const {
  int64_t n = 0;
  for (const auto& s : sources_.at(size_t(i)).shards) n += s.size();
  return n;
}

MixtureSampler::Draw MixtureSampler::draw(int64_t sample_index) const {
  const uint64_t h1 = mix64(seed_ ^ mix64(uint64_t(sample_index) + 0xA0761D6478BD642Full));
  const uint64_t h2 = mix64(h1 ^ 0xE7037ED1A0B428DBull);
  const double u = unit(h1);
  size_t src = 0;
  while (src + 1 < sources_.size() && u >= sources_[src].cum_weight) ++src;
  const Source& s = sources_[src];
  int64_t w = below(h2, s.window_ends.back());
  size_t shard = size_t(std::upper_bound(s.window_ends.begin(), s.window_ends.end(), w) - s.window_ends.begin());
  int64_t start = w - (shard ? s.window_ends[shard - 1] : 0);
  return {int32_t(src), int32_t(shard), start};
}

torch::Tensor MixtureSampler::batch_at(int64_t step) const {
  check(step >= 0, "negative sampler step");
  auto out = torch::empty({batch_, seq_len_ + 1}, torch::kInt64);
  int64_t* p = out.data_ptr<int64_t>();
  const int64_t base = (step * world_ + rank_) * batch_;
  for (int64_t i = 0; i < batch_; ++i) {
    Draw d = draw(base + i);
    sources_[size_t(d.source)].shards[size_t(d.shard)].read(d.start, seq_len_ + 1, p + i * (seq_len_ + 1));
  }
  return out;
}

torch::Tensor MixtureSampler::next() { return batch_at(step_++); }

void MixtureSampler::set_state(const SamplerState& s) {
  check(s.step >= 0, "invalid sampler state: negative step");
  step_ = s.step;
  seed_ = s.seed;
}

void MixtureSampler::check_vocab(int64_t vocab_size) const {
  for (const auto& s : sources_)
    for (const auto& sh : s.shards) train::check_vocab(sh, vocab_size);
}

SequentialBatches::SequentialBatches(const std::string& path, int64_t seq_len, int64_t batch_size, int64_t max_windows,
                                     int64_t rank, int64_t world_size)
    : seq_len_(seq_len), batch_(batch_size) {
  check(seq_len >= 1, "seq_len must be at least 1");
  check(batch_size >= 1, "batch size must be at least 1");
  check(world_size >= 1 && rank >= 0 && rank < world_size,
        "rank " + std::to_string(rank) + " is outside world size " + std::to_string(world_size));
  int64_t tokens = 0, w = 0;
  for (const auto& f : resolve_shards(path, "val")) {
    shards_.push_back(TokenShard::open(f));
    const TokenShard& sh = shards_.back();
    tokens += sh.size();
    const int64_t n = sh.size() > 0 ? (sh.size() - 1) / seq_len : 0;
    for (int64_t k = 0; k < n && (max_windows < 0 || w < max_windows); ++k, ++w)
      if (w % world_size == rank) windows_.emplace_back(int32_t(shards_.size() - 1), k * seq_len);
  }
  if (w == 0) fail(path + ": " + need_tokens_message(tokens, seq_len));
}

bool SequentialBatches::next(torch::Tensor& batch) {
  if (pos_ >= windows_.size()) return false;
  const int64_t b = std::min<int64_t>(batch_, int64_t(windows_.size() - pos_));
  batch = torch::empty({b, seq_len_ + 1}, torch::kInt64);
  int64_t* p = batch.data_ptr<int64_t>();
  for (int64_t i = 0; i < b; ++i, ++pos_) {
    auto [shard, start] = windows_[pos_];
    shards_[size_t(shard)].read(start, seq_len_ + 1, p + i * (seq_len_ + 1));
  }
  return true;
}

void SequentialBatches::check_vocab(int64_t vocab_size) const {
  for (const auto& sh : shards_) train::check_vocab(sh, vocab_size);
}

}  // namespace mha2mla::train
