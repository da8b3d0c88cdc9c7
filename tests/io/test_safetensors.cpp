#include "io/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <sstream>

#include "testing/files.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace fs = std::filesystem;
using mha2mla::Error;
using nlohmann::json;
using namespace mha2mla::io;

namespace {

// Runs f twice: once for EXPECT_THROW, once to check that the message names what went wrong.
void expect_error(const std::function<void()>& f, std::initializer_list<std::string> parts) {
  EXPECT_THROW(f(), Error);
  try {
    f();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "message \"" << msg << "\" lacks \"" << p << "\"";
  } catch (...) {
  }
}
#define EXPECT_ERROR(stmt, ...)                    \
  do {                                             \
    SCOPED_TRACE(#stmt);                           \
    expect_error([&] { stmt; }, {__VA_ARGS__}); \
  } while (0)

std::string bytes_of(const torch::Tensor& t) {
  auto c = t.contiguous();
  if (c.numel() == 0) return {};
  return std::string(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
}

std::string to_hex(const std::string& s) {
  static const char* d = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out += d[c >> 4];
    out += d[c & 15];
  }
  return out;
}

// Bit-exact: NaNs and -0.0 must survive too, which torch::equal would not check.
void expect_same(const torch::Tensor& a, const torch::Tensor& b, const std::string& what) {
  EXPECT_EQ(a.scalar_type(), b.scalar_type()) << what;
  EXPECT_EQ(a.sizes().vec(), b.sizes().vec()) << what;
  EXPECT_TRUE(bytes_of(a) == bytes_of(b)) << what << ": bytes differ";
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

void open_file(const std::string& path) { SafetensorsFile f(path); }

std::string read_bytes(const std::string& path) { return mha2mla::read_text_file(path); }

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(n >> (8 * i));
  return s;
}

// A file assembled by hand, so tests can produce any malformation.
std::string raw_file(const std::string& header, const std::string& data) { return le64(header.size()) + header + data; }

std::vector<std::string> tmp_leftovers(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().find(".tmp") != std::string::npos) out.push_back(e.path().string());
  return out;
}

bool have_python_torch() {
  static int ok = -1;
  if (ok < 0) ok = std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") == 0;
  return ok == 1;
}

class Safetensors : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = (fs::temp_directory_path() /
            ("mha2mla_io_" + std::to_string(::getpid()) + "_" + info->test_suite_name() + "_" + info->name()))
               .string();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string p(const std::string& name) const { return dir_ + "/" + name; }
  // Runs st_cross.py; returns its exit status and puts its output in out.
  int python(const std::string& args, std::string& out) {
    const std::string log = p("python.log");
    const std::string cmd = "/usr/bin/python3 " MHA2MLA_SOURCE_DIR "/tests/io/data/st_cross.py " + args + " >" + log + " 2>&1";
    int rc = std::system(cmd.c_str());
    out = fs::exists(log) ? read_bytes(log) : "";
    return rc;
  }
  std::string dir_;
};

NamedTensors sample_tensors() {
  torch::manual_seed(7);
  auto specials = torch::tensor({INFINITY, -INFINITY, NAN, -0.0f, 1e-42f, 65504.0f});
  NamedTensors t;
  t.emplace_back("model.embed_tokens.weight", torch::randn({5, 3}));
  t.emplace_back("f16", torch::cat({torch::randn({10}), specials}).to(torch::kFloat16));
  t.emplace_back("bf16", torch::cat({torch::randn({10}), specials}).to(torch::kBFloat16).reshape({4, 4}));
  t.emplace_back("f64", torch::randn({2, 2}, torch::kFloat64));
  t.emplace_back("i64", torch::tensor({INT64_MIN, INT64_MAX, int64_t(0), int64_t(-5)}, torch::kInt64));
  t.emplace_back("i32", torch::randint(-1000, 1000, {3}, torch::kInt32));
  t.emplace_back("i16", torch::tensor({-32768, 32767}, torch::kInt16));
  t.emplace_back("i8", torch::tensor({-128, 127, 3}, torch::kInt8));
  t.emplace_back("u8", torch::tensor({0, 255, 1}, torch::kUInt8));
  t.emplace_back("bool", torch::tensor({true, false, true, true}));
  t.emplace_back("scalar", torch::tensor(2.5f));
  t.emplace_back("empty", torch::zeros({0, 4}));
  t.emplace_back("empty2", torch::zeros({3, 0}, torch::kBFloat16));
  // Non-contiguous input must be written in logical (row-major) order.
  t.emplace_back("transposed", torch::arange(12, torch::kFloat32).reshape({3, 4}).t());
  return t;
}

}  // namespace

TEST(SafetensorsDType, NamesSizesAndTorchTypes) {
  const std::vector<std::pair<std::string, size_t>> all = {{"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8},
                                                           {"I32", 4}, {"I16", 2}, {"I8", 1},  {"U8", 1},   {"BOOL", 1}};
  for (const auto& [name, size] : all) {
    DType t = parse_dtype(name);
    EXPECT_EQ(dtype_name(t), name);
    EXPECT_EQ(dtype_size(t), size);
    EXPECT_EQ(from_torch(to_torch(t)), t);
    EXPECT_EQ(c10::elementSize(to_torch(t)), size);
  }
  EXPECT_ERROR(parse_dtype("F8_E4M3"), "F8_E4M3");
  EXPECT_ERROR(from_torch(torch::kComplexFloat), "ComplexFloat");
}

TEST_F(Safetensors, RoundTripAllDtypesBitExact) {
  const auto tensors = sample_tensors();
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "ünïcode ok"}};
  save_safetensors(p("a.safetensors"), tensors, meta);
  EXPECT_TRUE(tmp_leftovers(dir_).empty());

  SafetensorsFile f(p("a.safetensors"));
  EXPECT_EQ(f.path(), p("a.safetensors"));
  EXPECT_EQ(f.metadata(), meta);
  ASSERT_EQ(f.tensors().size(), tensors.size());
  for (size_t i = 1; i < f.tensors().size(); ++i) EXPECT_LE(f.tensors()[i - 1].offset, f.tensors()[i].offset);
  for (const auto& [name, t] : tensors) {
    const TensorInfo* info = f.find(name);
    ASSERT_NE(info, nullptr) << name;
    EXPECT_EQ(info->dtype, from_torch(t.scalar_type())) << name;
    EXPECT_EQ(info->shape, t.sizes().vec()) << name;
    EXPECT_EQ(info->nbytes, uint64_t(t.numel()) * t.element_size()) << name;
    expect_same(f.tensor(name), t, name);
  }
  EXPECT_EQ(f.tensor("scalar").dim(), 0);
  EXPECT_EQ(f.find("nope"), nullptr);
  EXPECT_ERROR(f.tensor("nope"), "nope", p("a.safetensors"));

  // Data section 8-byte aligned, as HF writes it.
  const std::string raw = read_bytes(p("a.safetensors"));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(raw[i]);
  EXPECT_EQ((8 + n) % 8, 0u);
  EXPECT_EQ(json::parse(raw.substr(8, n))["__metadata__"]["note"], "ünïcode ok");
}

TEST_F(Safetensors, NoMetadataAndEmptyFile) {
  save_safetensors(p("e.safetensors"), {});
  SafetensorsFile f(p("e.safetensors"));
  EXPECT_TRUE(f.tensors().empty());
  EXPECT_TRUE(f.metadata().empty());
  const std::string raw = read_bytes(p("e.safetensors"));
  EXPECT_EQ(raw.find("__metadata__"), std::string::npos);
}

TEST_F(Safetensors, ViewsAreCopyOnWriteAndOutliveTheFile) {
  save_safetensors(p("w.safetensors"), {{"x", torch::arange(8, torch::kFloat32)}});
  torch::Tensor t;
  {
    SafetensorsFile f(p("w.safetensors"));
    t = f.tensor("x");
  }
  // The mapping stays alive through the tensor; writing to it must not reach the file.
  EXPECT_EQ(t[3].item<float>(), 3.0f);
  t.add_(100);
  EXPECT_EQ(t[3].item<float>(), 103.0f);
  SafetensorsFile again(p("w.safetensors"));
  EXPECT_EQ(again.tensor("x")[3].item<float>(), 3.0f);
}

TEST_F(Safetensors, ReadsMisalignedOffsets) {
  // U8[3] then F32[2]: the F32 data starts at an odd address; legal in the format.
  std::string data = std::string("\x01\x02\x03", 3) + bytes_of(torch::tensor({1.5f, -2.0f}));
  std::string header = R"({"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},"b":{"dtype":"F32","shape":[2],"data_offsets":[3,11]}})";
  write_bytes(p("m.safetensors"), raw_file(header, data));
  SafetensorsFile f(p("m.safetensors"));
  expect_same(f.tensor("b"), torch::tensor({1.5f, -2.0f}), "b");
  expect_same(f.tensor("a"), torch::tensor({1, 2, 3}, torch::kUInt8), "a");
}

TEST_F(Safetensors, CrossCheckWithIndependentPythonImplementation) {
  MHA2MLA_REQUIRE_ORACLE(have_python_torch(), "/usr/bin/python3 with torch is not available for the cross-check");
  std::string out;
  // Python -> C++: a file written by hand from the spec (unpadded header, odd offsets, specials).
  ASSERT_EQ(python("write " + p("py.safetensors") + " " + p("py.json"), out), 0) << out;
  const json expected = json::parse(read_bytes(p("py.json")));
  SafetensorsFile f(p("py.safetensors"));
  using StrMap = std::map<std::string, std::string>;
  EXPECT_EQ(f.metadata(), expected["metadata"].get<StrMap>());
  ASSERT_EQ(f.tensors().size(), expected["tensors"].size());
  NamedTensors back;
  for (const auto& [name, e] : expected["tensors"].items()) {
    const TensorInfo* info = f.find(name);
    ASSERT_NE(info, nullptr) << name;
    torch::Tensor t = f.tensor(name);
    EXPECT_EQ(dtype_name(from_torch(t.scalar_type())), e["dtype"].get<std::string>()) << name;
    EXPECT_EQ(t.sizes().vec(), e["shape"].get<std::vector<int64_t>>()) << name;
    EXPECT_TRUE(to_hex(bytes_of(t)) == e["hex"].get<std::string>()) << name << ": values differ";
    back.emplace_back(name, t);
  }
  expect_same(f.tensor("i64"), torch::tensor({INT64_MIN, INT64_MAX, int64_t(0), int64_t(1), int64_t(-1), int64_t(123456789012)})
                                   .reshape({2, 3}),
              "i64");

  // C++ -> Python: the tensors just read (mapped views) plus our own samples, written by our writer.
  for (auto& kv : sample_tensors()) back.emplace_back("cpp." + kv.first, kv.second);
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"origin", "c++"}};
  save_safetensors(p("cpp.safetensors"), back, meta);
  json exp2 = {{"metadata", meta}, {"tensors", json::object()}};
  for (const auto& [name, t] : back)
    exp2["tensors"][name] = {{"dtype", dtype_name(from_torch(t.scalar_type()))},
                             {"shape", t.sizes().vec()},
                             {"hex", to_hex(bytes_of(t))},
                             {"sum", t.to(torch::kFloat64).nan_to_num(0.0, 0.0, 0.0).sum().item<double>()}};
  mha2mla::write_text_atomic(p("cpp.json"), exp2.dump());
  EXPECT_EQ(python("check " + p("cpp.safetensors") + " " + p("cpp.json"), out), 0) << out;

  // The checker itself must notice a mismatch, or the pass above means nothing.
  exp2["tensors"]["cpp.f16"]["hex"] = to_hex(bytes_of(torch::ones({16}, torch::kFloat16)));
  mha2mla::write_text_atomic(p("bad.json"), exp2.dump());
  EXPECT_NE(python("check " + p("cpp.safetensors") + " " + p("bad.json"), out), 0) << out;
}

TEST_F(Safetensors, SingleFileCheckpoint) {
  const auto tensors = sample_tensors();
  save_checkpoint(p("ck"), tensors);  // creates the directory
  EXPECT_TRUE(fs::exists(p("ck/model.safetensors")));
  EXPECT_FALSE(fs::exists(p("ck/model.safetensors.index.json")));
  EXPECT_TRUE(tmp_leftovers(p("ck")).empty());
  for (const std::string& where : {p("ck"), p("ck/model.safetensors")}) {
    Checkpoint ck = Checkpoint::open(where);
    EXPECT_EQ(ck.path(), where);
    const auto names = ck.names();
    EXPECT_EQ(names.size(), tensors.size());
    EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
    for (const auto& [name, t] : tensors) {
      EXPECT_TRUE(ck.has(name));
      EXPECT_EQ(ck.info(name).shape, t.sizes().vec());
      expect_same(ck.get(name), t, name);
    }
    EXPECT_FALSE(ck.has("nope"));
    EXPECT_ERROR(ck.info("nope"), "missing tensor nope in " + where);
    EXPECT_ERROR(ck.get("nope"), "missing tensor nope in " + where);
  }
  // transformers requires format=pt in the metadata.
  EXPECT_EQ(SafetensorsFile(p("ck/model.safetensors")).metadata().at("format"), "pt");
}

TEST_F(Safetensors, ShardedCheckpoint) {
  NamedTensors tensors;
  for (int i = 0; i < 9; ++i)
    tensors.emplace_back("layers." + std::to_string(i) + ".w", torch::randn({64}).to(i % 2 ? torch::kBFloat16 : torch::kFloat32));
  tensors.emplace_back("big", torch::randn({1000}));  // larger than the limit: a shard of its own
  uint64_t total = 0;
  for (const auto& kv : tensors) total += kv.second.numel() * kv.second.element_size();

  save_checkpoint(p("ck"), tensors, 600);
  EXPECT_TRUE(tmp_leftovers(p("ck")).empty());
  EXPECT_FALSE(fs::exists(p("ck/model.safetensors")));
  const json index = json::parse(read_bytes(p("ck/model.safetensors.index.json")));
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), total);
  std::set<std::string> shards;
  for (const auto& [name, shard] : index["weight_map"].items()) shards.insert(shard.get<std::string>());
  EXPECT_EQ(index["weight_map"].size(), tensors.size());
  ASSERT_GE(shards.size(), 3u);
  for (size_t i = 1; i <= shards.size(); ++i) {
    char fn[64];
    std::snprintf(fn, sizeof fn, "model-%05zu-of-%05zu.safetensors", i, shards.size());
    EXPECT_TRUE(shards.count(fn)) << fn;
    EXPECT_TRUE(fs::exists(p("ck/") + fn)) << fn;
    EXPECT_LE(fs::file_size(p("ck/") + fn), 600u + 1000u * 4u + 512u);
  }
  char last[64];
  std::snprintf(last, sizeof last, "model-%05zu-of-%05zu.safetensors", shards.size(), shards.size());
  EXPECT_EQ(index["weight_map"]["big"].get<std::string>(), last);

  for (const std::string& where : {p("ck"), p("ck/model.safetensors.index.json")}) {
    Checkpoint ck = Checkpoint::open(where);
    ASSERT_EQ(ck.names().size(), tensors.size());
    for (const auto& [name, t] : tensors) expect_same(ck.get(name), t, name);
  }

  // Saving unsharded over it leaves no stale index or shards that would shadow the new file.
  save_checkpoint(p("ck"), {{"only", torch::ones({2})}});
  EXPECT_TRUE(fs::exists(p("ck/model.safetensors")));
  EXPECT_FALSE(fs::exists(p("ck/model.safetensors.index.json")));
  for (const auto& s : shards) EXPECT_FALSE(fs::exists(p("ck/") + s)) << s;
  EXPECT_EQ(Checkpoint::open(p("ck")).names(), std::vector<std::string>{"only"});
}

TEST_F(Safetensors, MissingCheckpointFiles) {
  EXPECT_ERROR(Checkpoint::open(p("absent")), p("absent"));
  fs::create_directories(p("emptydir"));
  EXPECT_ERROR(Checkpoint::open(p("emptydir")), "no model.safetensors or model.safetensors.index.json in " + p("emptydir"));
  EXPECT_ERROR(open_file(p("absent.safetensors")), p("absent.safetensors"));
}

TEST_F(Safetensors, TruncatedFiles) {
  save_safetensors(p("full.safetensors"), {{"a", torch::randn({4, 4})}, {"b", torch::randn({3})}}, {{"k", "v"}});
  const std::string full = read_bytes(p("full.safetensors"));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(full[i]);
  for (size_t cut : {size_t(0), size_t(1), size_t(7), size_t(8), size_t(8 + n / 2), size_t(8 + n - 1), size_t(8 + n),
                     size_t(8 + n + 5), full.size() - 1}) {
    SCOPED_TRACE("cut at " + std::to_string(cut) + " of " + std::to_string(full.size()));
    write_bytes(p("cut.safetensors"), full.substr(0, cut));
    EXPECT_ERROR(open_file(p("cut.safetensors")), p("cut.safetensors"));
  }
  // Data cut: the error names a tensor that no longer fits.
  write_bytes(p("cut.safetensors"), full.substr(0, full.size() - 1));
  EXPECT_ERROR(open_file(p("cut.safetensors")), "tensor \"", "truncated");
}

TEST_F(Safetensors, BadHeaderLength) {
  const std::string f = p("h.safetensors");
  write_bytes(f, le64(uint64_t(1) << 40) + "{}");
  EXPECT_ERROR(open_file(f), f, "limit");
  write_bytes(f, le64(~uint64_t(0)) + "{}");
  EXPECT_ERROR(open_file(f), f, "limit");
  write_bytes(f, le64(1000) + "{}");
  EXPECT_ERROR(open_file(f), f, "truncated");
}

TEST_F(Safetensors, MalformedHeaders) {
  const std::string f = p("bad.safetensors");
  const std::string d16(16, '\0');
  struct Case {
    std::string header, data;
    std::vector<std::string> expect;
  };
  const std::vector<Case> cases = {
      {R"({"a": {"dtype": "F32",)", d16, {"malformed JSON"}},
      {"{\"a\xff\": 1}", "", {"malformed JSON"}},  // invalid UTF-8
      {"[1, 2]", "", {"not a JSON object"}},
      {R"({"a": 5})", "", {"\"a\"", "not an object"}},
      {R"({"a": {"shape": [4], "data_offsets": [0, 16]}})", d16, {"\"a\"", "dtype"}},
      {R"({"a": {"dtype": 3, "shape": [4], "data_offsets": [0, 16]}})", d16, {"\"a\"", "dtype"}},
      {R"({"w": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}})", d16, {"\"w\"", "F8_E4M3", "unknown dtype"}},
      {R"({"w": {"dtype": "C64", "shape": [2], "data_offsets": [0, 16]}})", d16, {"\"w\"", "C64"}},
      {R"({"w": {"dtype": "F32", "data_offsets": [0, 16]}})", d16, {"\"w\"", "shape"}},
      {R"({"w": {"dtype": "F32", "shape": "4", "data_offsets": [0, 16]}})", d16, {"\"w\"", "shape"}},
      {R"({"w": {"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 16]}})", d16, {"\"w\"", "non-negative"}},
      {R"({"w": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 16]}})", d16, {"\"w\"", "non-negative"}},
      {R"({"w": {"dtype": "F32", "shape": [4]}})", d16, {"\"w\"", "data_offsets"}},
      {R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8, 16]}})", d16, {"\"w\"", "data_offsets"}},
      {R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [-16, 0]}})", d16, {"\"w\"", "data_offsets"}},
      {R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [16, 0]}})", d16, {"\"w\"", "begin > end"}},
      {R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1000]}})", d16, {"\"w\"", "outside the data section"}},
      {R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})", d16, {"\"w\"", "outside the data section"}},
      {R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}})", d16, {"\"w\"", "needs 12 bytes"}},
      {R"({"w": {"dtype": "F32", "shape": [4611686018427387904, 4611686018427387904], "data_offsets": [0, 16]}})",
       d16, {"\"w\"", "too large"}},
      {R"({"w": {"dtype": "F32", "shape": [9223372036854775808], "data_offsets": [0, 16]}})", d16, {"\"w\"", "non-negative"}},
      {R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
           "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", d16, {"\"a\"", "\"b\"", "overlap"}},
      {R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
           "z": {"dtype": "F32", "shape": [0], "data_offsets": [8, 8]}})", d16, {"\"a\"", "\"z\"", "overlap"}},
      {R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
           "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})", d16, {"\"a\"", "twice"}},
      {R"({"__metadata__": {"k": 1}})", "", {"__metadata__", "\"k\""}},
      {R"({"__metadata__": [1]})", "", {"__metadata__"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.header);
    write_bytes(f, raw_file(c.header, c.data));
    EXPECT_THROW(SafetensorsFile{f}, Error);
    try {
      SafetensorsFile s(f);
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(f), std::string::npos) << msg;
      for (const auto& part : c.expect) EXPECT_NE(msg.find(part), std::string::npos) << msg << " lacks " << part;
    }
  }
  // Legal corner cases: zero-size tensors (even with huge other dims), touching spans, gaps, padding.
  write_bytes(f, raw_file(R"({"e": {"dtype": "F32", "shape": [4611686018427387904, 0], "data_offsets": [16, 16]},
                             "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                             "z": {"dtype": "BOOL", "shape": [0], "data_offsets": [8, 8]},
                             "b": {"dtype": "I32", "shape": [], "data_offsets": [12, 16]}}   )",
                          d16));
  SafetensorsFile ok(f);
  EXPECT_EQ(ok.tensors().size(), 4u);
  EXPECT_EQ(ok.tensor("e").numel(), 0);
  EXPECT_EQ(ok.tensor("b").dim(), 0);
}

TEST_F(Safetensors, BadIndexFiles) {
  const std::string dir = p("ck");
  save_checkpoint(dir, {{"a", torch::ones({64})}, {"b", torch::ones({64})}, {"c", torch::ones({64})}}, 300);
  const std::string idx = dir + "/model.safetensors.index.json";
  const json good = json::parse(read_bytes(idx));
  const std::string shard1 = good["weight_map"]["a"];
  const std::string shard2 = good["weight_map"]["b"];
  ASSERT_NE(shard1, shard2);

  json j = good;
  j["weight_map"]["a"] = "model-00009-of-00009.safetensors";
  mha2mla::write_text_atomic(idx, j.dump());
  EXPECT_ERROR(Checkpoint::open(dir), "model-00009-of-00009.safetensors", idx, "missing");

  j = good;
  j["weight_map"]["ghost"] = shard1;
  mha2mla::write_text_atomic(idx, j.dump());
  EXPECT_ERROR(Checkpoint::open(dir), "ghost", idx, shard1);

  j = good;  // listed in the wrong shard
  j["weight_map"]["b"] = shard1;
  mha2mla::write_text_atomic(idx, j.dump());
  EXPECT_ERROR(Checkpoint::open(dir), "tensor b", shard1);

  mha2mla::write_text_atomic(idx, "{\"weight_map\": ");
  EXPECT_ERROR(Checkpoint::open(dir), idx);
  mha2mla::write_text_atomic(idx, "{\"metadata\": {}}");
  EXPECT_ERROR(Checkpoint::open(dir), idx, "weight_map");

  // The same tensor in two shards.
  mha2mla::write_text_atomic(idx, good.dump());
  save_safetensors(dir + "/" + shard2, {{"a", torch::ones({64})}, {"b", torch::ones({64})}});
  EXPECT_ERROR(Checkpoint::open(dir), "tensor a", shard1, shard2);
}

TEST_F(Safetensors, AtomicWrites) {
  const std::string f = p("x.safetensors");
  save_safetensors(f, {{"a", torch::ones({3})}});
  EXPECT_TRUE(tmp_leftovers(dir_).empty());
  const std::string before = read_bytes(f);

  // An unsupported dtype is refused before anything is written; the old file survives.
  EXPECT_ERROR(save_safetensors(f, {{"a", torch::ones({2})}, {"c", torch::ones({2}, torch::kComplexFloat)}}), "c", f);
  EXPECT_EQ(read_bytes(f), before);
  EXPECT_ERROR(save_safetensors(p("new.safetensors"), {{"c", torch::ones({2}, torch::kComplexFloat)}}), "c");
  EXPECT_FALSE(fs::exists(p("new.safetensors")));
  EXPECT_ERROR(save_checkpoint(p("ck"), {{"c", torch::ones({2}, torch::kComplexDouble)}}), "c");
  EXPECT_FALSE(fs::exists(p("ck/model.safetensors")));
  EXPECT_ERROR(save_safetensors(p("d.safetensors"), {{"a", torch::ones({2})}, {"a", torch::ones({2})}}), "a", "twice");
  EXPECT_ERROR(save_safetensors(p("d.safetensors"), {{"__metadata__", torch::ones({2})}}), "__metadata__");
  EXPECT_FALSE(fs::exists(p("d.safetensors")));
  EXPECT_TRUE(tmp_leftovers(dir_).empty());

  // A writer failing midway leaves neither a partial target nor a temp file.
  EXPECT_THROW(mha2mla::write_file_atomic(f,
                                          [](std::ostream& os) {
                                            os << "partial";
                                            throw std::runtime_error("boom");
                                          }),
               std::runtime_error);
  EXPECT_EQ(read_bytes(f), before);
  EXPECT_THROW(mha2mla::write_file_atomic(p("y.txt"), [](std::ostream& os) { mha2mla::fail("boom"); }), Error);
  EXPECT_FALSE(fs::exists(p("y.txt")));
  EXPECT_TRUE(tmp_leftovers(dir_).empty());

  mha2mla::write_text_atomic(p("t.txt"), "hello");
  mha2mla::write_text_atomic(p("t.txt"), "world!");
  EXPECT_EQ(read_bytes(p("t.txt")), "world!");
  EXPECT_ERROR(mha2mla::write_text_atomic(p("no/such/dir/t.txt"), "x"), p("no/such/dir/t.txt"));
  EXPECT_ERROR(mha2mla::read_text_file(p("nothing.txt")), p("nothing.txt"));
  EXPECT_TRUE(tmp_leftovers(dir_).empty());
}
