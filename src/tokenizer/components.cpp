#include "tokenizer/components.h"

#include <utf8proc.h>

#include <algorithm>
#include <cstring>
#include <queue>

#include "tokenizer/unicode.h"
#include "util/error.h"
#include "util/json_read.h"

namespace mha2mla::tok {

bool jbool(const json& j, const char* key, bool def) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  if (!it->is_boolean()) fail(std::string("tokenizer.json: \"") + key + "\" must be a boolean");
  return it->get<bool>();
}

int32_t token_id(const json& j, const std::string& what) {
  if (!j.is_number_integer()) fail("tokenizer.json: " + what + " is not an integer");
  if (j.is_number_unsigned() ? j.get<uint64_t>() >= uint64_t(kMaxTokenId)
                             : (j.get<int64_t>() < 0 || j.get<int64_t>() >= kMaxTokenId))
    fail("tokenizer.json: " + what + " is " + j.dump() + ", outside [0, " + std::to_string(kMaxTokenId) + ")");
  return static_cast<int32_t>(j.get<int64_t>());
}

std::optional<std::string> jstr(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_string()) fail(std::string("tokenizer.json: \"") + key + "\" must be a string");
  return it->get<std::string>();
}

static std::string jtype(const json& j, const char* what) {
  if (!j.is_object()) fail(std::string("tokenizer.json: ") + what + " must be an object");
  auto t = jstr(j, "type");
  if (!t) fail(std::string("tokenizer.json: ") + what + " has no \"type\"");
  return *t;
}

std::unique_ptr<Regex> make_pattern(const json& pattern) {
  if (pattern.is_object()) {
    if (auto s = jstr(pattern, "String")) return std::make_unique<Regex>(*s, /*literal=*/true);
    if (auto r = jstr(pattern, "Regex")) return std::make_unique<Regex>(*r);
  }
  fail("tokenizer.json: pattern must be {\"String\": ...} or {\"Regex\": ...}");
}

// =============================================================================================
// Normalizers
namespace {

struct NormSequence : Normalizer {
  std::vector<std::unique_ptr<Normalizer>> items;
  void apply(std::string& s) const override {
    for (auto& n : items) n->apply(s);
  }
};

struct NormUnicode : Normalizer {
  std::string form;
  explicit NormUnicode(std::string f) : form(std::move(f)) {}
  void apply(std::string& s) const override { s = unicode_normalize(s, form); }
};

struct NormPrepend : Normalizer {
  std::string prefix;
  void apply(std::string& s) const override {
    if (!s.empty()) s.insert(0, prefix);
  }
};

struct NormReplace : Normalizer {
  std::unique_ptr<Regex> pattern;
  std::string content;
  void apply(std::string& s) const override { s = pattern->replace_all(s, content); }
};

template <class F>
std::string map_code_points(std::string_view s, F f) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) f(next_cp(s, i), out);
  return out;
}

struct NormLowercase : Normalizer {
  void apply(std::string& s) const override {
    s = map_code_points(s, [](uint32_t cp, std::string& o) { append_utf8(o, uint32_t(utf8proc_tolower(utf8proc_int32_t(cp)))); });
  }
};

struct NormStripAccents : Normalizer {
  void apply(std::string& s) const override {
    s = map_code_points(s, [](uint32_t cp, std::string& o) {
      auto cat = utf8proc_category(utf8proc_int32_t(cp));
      if (cat != UTF8PROC_CATEGORY_MN && cat != UTF8PROC_CATEGORY_MC && cat != UTF8PROC_CATEGORY_ME) append_utf8(o, cp);
    });
  }
};

struct NormStrip : Normalizer {
  bool left = true, right = true;
  void apply(std::string& s) const override {
    std::string_view v = s;
    if (left) v = js_trim_start(v);
    if (right) v = js_trim_end(v);
    s = std::string(v);
  }
};

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const json& j) {
  if (j.is_null()) return nullptr;
  std::string type = jtype(j, "normalizer");
  if (type == "Sequence") {
    auto seq = std::make_unique<NormSequence>();
    for (const auto& n : j.at("normalizers"))
      if (auto p = make_normalizer(n)) seq->items.push_back(std::move(p));
    return seq;
  }
  if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") return std::make_unique<NormUnicode>(type);
  if (type == "Prepend") {
    auto p = std::make_unique<NormPrepend>();
    p->prefix = jstr(j, "prepend").value_or("");
    return p;
  }
  if (type == "Replace") {
    auto p = std::make_unique<NormReplace>();
    p->pattern = make_pattern(j.at("pattern"));
    p->content = jstr(j, "content").value_or("");
    return p;
  }
  if (type == "Lowercase") return std::make_unique<NormLowercase>();
  if (type == "StripAccents") return std::make_unique<NormStripAccents>();
  if (type == "Strip") {
    auto p = std::make_unique<NormStrip>();
    p->left = jbool(j, "strip_left", true);
    p->right = jbool(j, "strip_right", true);
    return p;
  }
  fail("tokenizer.json: unsupported normalizer type \"" + type + "\"");
}

// =============================================================================================
// Pre-tokenizers
namespace {

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

Behavior parse_behavior(const std::string& b) {
  if (b == "Removed") return Behavior::Removed;
  if (b == "Isolated") return Behavior::Isolated;
  if (b == "MergedWithPrevious") return Behavior::MergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::MergedWithNext;
  if (b == "Contiguous") return Behavior::Contiguous;
  fail("tokenizer.json: unknown split behavior \"" + b + "\"");
}

// Splits `text` around delimiter spans [(begin, end)] following HF's SplitDelimiterBehavior.
// `delims` come from `find` as (begin, end, is_delimiter) segments covering the text.
struct Segment {
  size_t b, e;
  bool delim;
};

void emit_segments(std::string_view text, const std::vector<Segment>& segs, Behavior beh, Pieces& out) {
  switch (beh) {
    case Behavior::Removed:
      for (auto& s : segs)
        if (!s.delim && s.e > s.b) out.add(text.substr(s.b, s.e - s.b));
      return;
    case Behavior::Isolated:
      for (auto& s : segs)
        if (s.e > s.b) out.add(text.substr(s.b, s.e - s.b));
      return;
    case Behavior::MergedWithPrevious: {
      // A delimiter joins the piece before it.
      size_t start = 0;
      bool open = false;
      for (auto& s : segs) {
        if (s.delim) {
          if (s.e > s.b || open) {
            out.add(text.substr(start, s.e - start));
            start = s.e;
            open = false;
          }
        } else if (s.e > s.b) {
          if (open) out.add(text.substr(start, s.b - start));
          start = s.b;
          open = true;
        }
      }
      if (open && text.size() > start) out.add(text.substr(start));
      return;
    }
    case Behavior::MergedWithNext: {
      // A delimiter joins the piece after it.
      size_t start = 0;
      bool pending = false;
      for (auto& s : segs) {
        if (s.e == s.b) continue;
        if (s.delim) {
          if (pending) out.add(text.substr(start, s.b - start));
          start = s.b;
          pending = true;
        } else {
          out.add(text.substr(pending ? start : s.b, s.e - (pending ? start : s.b)));
          pending = false;
        }
      }
      if (pending) out.add(text.substr(start));
      return;
    }
    case Behavior::Contiguous: {
      size_t i = 0;
      while (i < segs.size()) {
        if (segs[i].e == segs[i].b) { ++i; continue; }
        size_t b = segs[i].b, e = segs[i].e;
        if (segs[i].delim) {
          size_t j = i + 1;
          while (j < segs.size() && (segs[j].delim || segs[j].e == segs[j].b)) e = std::max(e, segs[j++].e);
          out.add(text.substr(b, e - b));
          i = j;
        } else {
          out.add(text.substr(b, e - b));
          ++i;
        }
      }
      return;
    }
  }
}

void find_segments(const Regex& re, std::string_view text, bool invert, std::vector<Segment>& segs) {
  segs.clear();
  size_t prev = 0;
  re.for_each_match(text, [&](size_t b, size_t e) {
    if (b > prev) segs.push_back({prev, b, invert});
    segs.push_back({b, e, !invert});
    prev = e;
  });
  if (prev < text.size()) segs.push_back({prev, text.size(), invert});
}

struct PreSplit : PreTokenizer {
  std::unique_ptr<Regex> re;
  Behavior behavior = Behavior::Isolated;
  bool invert = false;
  void apply(const Pieces& in, Pieces& out, int) const override {
    thread_local std::vector<Segment> segs;
    for (size_t i = 0; i < in.size(); ++i) {
      std::string_view t = in.get(i);
      find_segments(*re, t, invert, segs);
      emit_segments(t, segs, behavior, out);
    }
  }
};

// Appends the GPT-2 byte-to-printable mapping of `s`.
struct ByteMapper {
  std::array<std::array<char, 2>, 256> enc{};
  std::array<uint8_t, 256> len{};
  ByteMapper() {
    for (int b = 0; b < 256; ++b) {
      std::string s;
      append_utf8(s, byte_to_cp(uint8_t(b)));
      len[b] = uint8_t(s.size());
      for (size_t k = 0; k < s.size(); ++k) enc[b][k] = s[k];
    }
  }
  void append(std::string& out, std::string_view s) const {
    for (unsigned char c : s) out.append(enc[c].data(), len[c]);
  }
};

const ByteMapper& byte_mapper() {
  static const ByteMapper m;
  return m;
}

struct PreByteLevel : PreTokenizer {
  bool add_prefix_space = false;
  std::unique_ptr<Regex> re;  // GPT-2 pattern when use_regex
  void apply(const Pieces& in, Pieces& out, int) const override {
    thread_local std::string tmp;
    const ByteMapper& bm = byte_mapper();
    auto map_piece = [&](std::string_view p) {
      out.spans.emplace_back(uint32_t(out.buf.size()), 0);
      bm.append(out.buf, p);
      out.spans.back().second = uint32_t(out.buf.size() - out.spans.back().first);
    };
    for (size_t i = 0; i < in.size(); ++i) {
      std::string_view t = in.get(i);
      if (add_prefix_space && (t.empty() || t[0] != ' ')) {
        tmp.assign(" ");
        tmp.append(t);
        t = tmp;
      }
      if (re) {
        re->for_each_match(t, [&](size_t b, size_t e) {
          if (e > b) map_piece(t.substr(b, e - b));
        });
      } else if (!t.empty()) {
        map_piece(t);
      }
    }
  }
};

struct PreMetaspace : PreTokenizer {
  std::string replacement = "\xE2\x96\x81";
  std::string scheme = "always";  // always | first | never
  bool split = true;
  void apply(const Pieces& in, Pieces& out, int section_index) const override {
    thread_local std::string s;
    for (size_t i = 0; i < in.size(); ++i) {
      std::string_view t = in.get(i);
      s.clear();
      for (char c : t) {
        if (c == ' ') s += replacement;
        else s += c;
      }
      bool prepend = scheme == "always" || (scheme == "first" && section_index == 0);
      if (prepend && s.compare(0, replacement.size(), replacement) != 0) s.insert(0, replacement);
      if (!split) {
        if (!s.empty()) out.add(s);
        continue;
      }
      // MergedWithNext on the replacement: every occurrence starts a new piece.
      size_t start = 0, pos = 0;
      while ((pos = s.find(replacement, pos + 1)) != std::string::npos) {
        if (pos > start) out.add(std::string_view(s).substr(start, pos - start));
        start = pos;
      }
      if (start < s.size()) out.add(std::string_view(s).substr(start));
    }
  }
};

struct PreSequence : PreTokenizer {
  std::vector<std::unique_ptr<PreTokenizer>> items;
  void apply(const Pieces& in, Pieces& out, int section_index) const override {
    if (items.empty()) {
      out = in;
      return;
    }
    thread_local std::vector<Pieces> tmp;
    size_t depth = 0;
    // Nested sequences reuse their own slots.
    thread_local size_t level = 0;
    size_t base = level;
    level += 2;
    if (tmp.size() < level) tmp.resize(level);
    const Pieces* src = &in;
    for (size_t k = 0; k < items.size(); ++k) {
      Pieces* dst = (k + 1 == items.size()) ? &out : &tmp[base + (depth++ & 1)];
      dst->clear();
      items[k]->apply(*src, *dst, section_index);
      src = dst;
    }
    level -= 2;
  }
};

struct PreWhitespaceSplit : PreTokenizer {
  void apply(const Pieces& in, Pieces& out, int) const override {
    for (size_t i = 0; i < in.size(); ++i) {
      std::string_view t = in.get(i);
      size_t p = 0, start = std::string_view::npos;
      while (p < t.size()) {
        size_t q = p;
        uint32_t cp = next_cp(t, q);
        bool ws = is_js_space(cp) || cp == 0x85;
        if (ws && start != std::string_view::npos) {
          out.add(t.substr(start, p - start));
          start = std::string_view::npos;
        } else if (!ws && start == std::string_view::npos) {
          start = p;
        }
        p = q;
      }
      if (start != std::string_view::npos) out.add(t.substr(start));
    }
  }
};

struct PreRegexMatches : PreTokenizer {  // keeps only the matches (Whitespace, Digits-like)
  std::unique_ptr<Regex> re;
  Behavior behavior = Behavior::Removed;
  bool matches_only = true;
  void apply(const Pieces& in, Pieces& out, int) const override {
    thread_local std::vector<Segment> segs;
    for (size_t i = 0; i < in.size(); ++i) {
      std::string_view t = in.get(i);
      if (matches_only) {
        re->for_each_match(t, [&](size_t b, size_t e) {
          if (e > b) out.add(t.substr(b, e - b));
        });
      } else {
        find_segments(*re, t, false, segs);
        emit_segments(t, segs, behavior, out);
      }
    }
  }
};

constexpr const char* kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

}  // namespace

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j) {
  if (j.is_null()) return nullptr;
  std::string type = jtype(j, "pre_tokenizer");
  if (type == "Sequence") {
    auto seq = std::make_unique<PreSequence>();
    for (const auto& p : j.at("pretokenizers"))
      if (auto q = make_pre_tokenizer(p)) seq->items.push_back(std::move(q));
    return seq;
  }
  if (type == "Split") {
    auto p = std::make_unique<PreSplit>();
    p->re = make_pattern(j.at("pattern"));
    p->behavior = parse_behavior(jstr(j, "behavior").value_or("Isolated"));
    p->invert = jbool(j, "invert", false);
    return p;
  }
  if (type == "ByteLevel") {
    auto p = std::make_unique<PreByteLevel>();
    p->add_prefix_space = jbool(j, "add_prefix_space", false);
    if (jbool(j, "use_regex", true)) p->re = std::make_unique<Regex>(kGpt2Pattern);
    return p;
  }
  if (type == "Metaspace") {
    auto p = std::make_unique<PreMetaspace>();
    if (auto r = jstr(j, "replacement")) p->replacement = *r;
    if (auto s = jstr(j, "prepend_scheme")) p->scheme = *s;
    else p->scheme = jbool(j, "add_prefix_space", true) ? "always" : "never";
    p->split = jbool(j, "split", true);
    return p;
  }
  if (type == "WhitespaceSplit") return std::make_unique<PreWhitespaceSplit>();
  if (type == "Whitespace") {
    auto p = std::make_unique<PreRegexMatches>();
    p->re = std::make_unique<Regex>("\\w+|[^\\w\\s]+");
    return p;
  }
  if (type == "Digits") {
    auto p = std::make_unique<PreRegexMatches>();
    p->re = std::make_unique<Regex>(jbool(j, "individual_digits", false) ? "[0-9]" : "[0-9]+");
    p->matches_only = false;
    p->behavior = Behavior::Isolated;
    return p;
  }
  fail("tokenizer.json: unsupported pre_tokenizer type \"" + type + "\"");
}

// =============================================================================================
// BPE model

void PairMap::reserve(size_t n) {
  size_t cap = 16;
  while (cap < n * 2) cap <<= 1;
  slots_.assign(cap, Slot{});
  mask_ = cap - 1;
  shift_ = 64 - __builtin_ctzll(cap);
  count_ = 0;
}

void PairMap::insert(int32_t a, int32_t b, int32_t rank, int32_t merged) {
  if (slots_.empty() || (count_ + 1) * 2 > slots_.size()) {
    std::vector<Slot> old = std::move(slots_);
    reserve(std::max<size_t>(16, (count_ + 1) * 2));
    for (auto& s : old)
      if (s.key != kEmpty) insert(int32_t(s.key >> 32), int32_t(uint32_t(s.key)), s.rank, s.merged);
  }
  uint64_t key = (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
  size_t i = hash(key);
  while (slots_[i].key != kEmpty) {
    if (slots_[i].key == key) return;  // keep the first (lowest) rank, as HF does
    i = (i + 1) & mask_;
  }
  slots_[i] = Slot{key, rank, merged};
  ++count_;
}

BpeModel::BpeModel(const json& m, const StrIdMap& token_ids) : ids_(token_ids) {
  if (auto u = jstr(m, "unk_token")) {
    if (const int32_t* id = ids_.get(*u)) unk_id_ = *id;
  }
  fuse_unk_ = jbool(m, "fuse_unk", false);
  byte_fallback_ = jbool(m, "byte_fallback", false);
  ignore_merges_ = jbool(m, "ignore_merges", false);
  end_of_word_suffix_ = jstr(m, "end_of_word_suffix").value_or("");
  if (!jstr(m, "continuing_subword_prefix").value_or("").empty())
    fail("tokenizer.json: BPE continuing_subword_prefix is not supported");
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    byte_ids_[b] = lookup(name);
  }

  auto mit = m.find("merges");
  if (mit == m.end() || mit->is_null()) return;
  if (!mit->is_array()) fail("tokenizer.json: model.merges must be an array");
  merges_.reserve(mit->size());
  std::string merged;
  int32_t rank = 0;
  for (const auto& e : *mit) {
    std::string_view a, b;
    std::string joined;
    if (e.is_string()) {
      const std::string& s = e.get_ref<const std::string&>();
      size_t sp = s.find(' ');
      if (sp == std::string::npos) fail("tokenizer.json: malformed merge \"" + s + "\"");
      a = std::string_view(s).substr(0, sp);
      b = std::string_view(s).substr(sp + 1);
      size_t sp2 = b.find(' ');
      if (sp2 != std::string_view::npos) b = b.substr(0, sp2);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      a = e[0].get_ref<const std::string&>();
      b = e[1].get_ref<const std::string&>();
    } else {
      fail("tokenizer.json: malformed merge entry " + json_brief(e));
    }
    merged.assign(a);
    merged.append(b);
    int32_t ia = lookup(a), ib = lookup(b), im = lookup(merged);
    // A merge whose parts or result are outside the vocabulary can never produce a known token.
    if (ia >= 0 && ib >= 0 && im >= 0) merges_.insert(ia, ib, rank, im);
    ++rank;
  }
}

void BpeModel::fuse_unknown(std::vector<int32_t>& ids, size_t from) const {
  if (!fuse_unk_ || !unk_id_) return;
  size_t w = from;
  for (size_t r = from; r < ids.size(); ++r) {
    if (ids[r] == *unk_id_ && w > from && ids[w - 1] == *unk_id_) continue;
    ids[w++] = ids[r];
  }
  ids.resize(w);
}

void BpeModel::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  // The cache is consulted first: it is much smaller (hotter) than the vocabulary.
  bool cacheable = piece.size() < kCacheMaxPiece;
  if (cacheable) {
    std::lock_guard<std::mutex> lk(cache_.mu);
    if (const auto* hit = cache_.index.get(piece)) {
      const int32_t* p = cache_.ids.data() + hit->first;
      out.insert(out.end(), p, p + hit->second);
      return;
    }
  }
  size_t before = out.size();
  int32_t whole = ignore_merges_ ? lookup(piece) : -1;
  if (whole >= 0) out.push_back(remapped(whole));  // ignore_merges: an in-vocab pre-token maps directly
  else bpe(piece, out);
  if (!cacheable) return;
  std::lock_guard<std::mutex> lk(cache_.mu);
  if (cache_.index.size() >= kCacheMaxEntries) {
    // Dropping everything keeps the bound without LRU bookkeeping on the hot path.
    cache_.index.clear();
    cache_.ids.clear();
  }
  uint32_t off = uint32_t(cache_.ids.size());
  cache_.ids.insert(cache_.ids.end(), out.begin() + std::ptrdiff_t(before), out.end());
  cache_.index.set(piece, std::make_pair(off, uint32_t(out.size() - before)));
}

void BpeModel::bpe(std::string_view piece, std::vector<int32_t>& out) const {
  struct Sym {
    int32_t id;
    int32_t prev, next;
    uint32_t start, len;
  };
  struct Cand {
    int32_t rank, pos, merged;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  thread_local std::vector<Sym> syms;
  thread_local std::vector<Cand> heap;
  thread_local std::string tmp;
  syms.clear();
  heap.clear();

  size_t i = 0;
  while (i < piece.size()) {
    size_t start = i;
    i += cp_len(static_cast<unsigned char>(piece[i]));
    std::string_view ch = piece.substr(start, i - start);
    int32_t id;
    if (i == piece.size() && !end_of_word_suffix_.empty()) {
      tmp.assign(ch);
      tmp += end_of_word_suffix_;
      id = lookup(tmp);
    } else {
      id = lookup(ch);
    }
    int32_t n = int32_t(syms.size());
    syms.push_back({id, n - 1, -1, uint32_t(start), uint32_t(i - start)});
    if (n > 0) syms[n - 1].next = n;
  }

  auto cmp = [](const Cand& a, const Cand& b) { return a > b; };
  auto push_pair = [&](int32_t pos) {
    int32_t nx = syms[pos].next;
    if (nx < 0 || syms[pos].id < 0 || syms[nx].id < 0) return;
    int32_t rank, merged;
    if (merges_.find(syms[pos].id, syms[nx].id, rank, merged)) {
      heap.push_back({rank, pos, merged});
      std::push_heap(heap.begin(), heap.end(), cmp);
    }
  };
  for (int32_t k = 0; k + 1 < int32_t(syms.size()); ++k) push_pair(k);

  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), cmp);
    Cand c = heap.back();
    heap.pop_back();
    Sym& s = syms[c.pos];
    if (s.len == 0 || s.next < 0) continue;
    // Stale entry: the pair at this position changed since it was queued.
    int32_t rank, merged;
    if (!merges_.find(s.id, syms[s.next].id, rank, merged) || merged != c.merged || rank != c.rank) continue;
    Sym& nx = syms[s.next];
    s.id = c.merged;
    s.len += nx.len;
    nx.len = 0;
    s.next = nx.next;
    if (s.next >= 0) syms[s.next].prev = c.pos;
    if (s.prev >= 0) push_pair(s.prev);
    push_pair(c.pos);
  }

  for (int32_t k = syms.empty() ? -1 : 0; k >= 0; k = syms[k].next) {
    const Sym& s = syms[k];
    if (s.id >= 0) {
      out.push_back(remapped(s.id));
      continue;
    }
    std::string_view bytes = piece.substr(s.start, s.len);
    if (byte_fallback_) {
      bool all = true;
      for (unsigned char b : bytes) all = all && byte_ids_[b] >= 0;
      if (all) {
        for (unsigned char b : bytes) out.push_back(remapped(byte_ids_[b]));
        continue;
      }
    }
    if (unk_id_) out.push_back(remapped(*unk_id_));
  }
}

// =============================================================================================
// Post-processors
namespace {

struct PostTemplate : PostProcessor {
  // Each item: either a run of special-token ids, or the sequence ($A) marker.
  std::vector<std::pair<bool, std::vector<int32_t>>> single;  // (is_sequence, ids)
  void apply(std::vector<int32_t>& ids, bool add_special) const override {
    if (!add_special) return;
    std::vector<int32_t> out;
    out.reserve(ids.size() + 4);
    for (auto& [is_seq, sp] : single) {
      if (is_seq) out.insert(out.end(), ids.begin(), ids.end());
      else out.insert(out.end(), sp.begin(), sp.end());
    }
    ids.swap(out);
  }
};

struct PostWrap : PostProcessor {  // Bert/Roberta: CLS $A SEP
  int32_t cls = 0, sep = 0;
  void apply(std::vector<int32_t>& ids, bool add_special) const override {
    if (!add_special) return;
    ids.insert(ids.begin(), cls);
    ids.push_back(sep);
  }
};

struct PostNoop : PostProcessor {
  void apply(std::vector<int32_t>&, bool) const override {}
};

struct PostSequence : PostProcessor {
  std::vector<std::unique_ptr<PostProcessor>> items;
  void apply(std::vector<int32_t>& ids, bool add_special) const override {
    for (auto& p : items) p->apply(ids, add_special);
  }
};

int32_t resolve_token(const std::string& tok, const StrIdMap& ids) {
  const int32_t* id = ids.get(tok);
  if (!id) fail("tokenizer.json: post_processor names unknown token \"" + tok + "\"");
  return *id;
}

}  // namespace

std::unique_ptr<PostProcessor> make_post_processor(const json& j, const StrIdMap& token_ids) {
  if (j.is_null()) return nullptr;
  std::string type = jtype(j, "post_processor");
  if (type == "TemplateProcessing") {
    auto p = std::make_unique<PostTemplate>();
    const json& specials = j.contains("special_tokens") ? j.at("special_tokens") : json::object();
    for (const auto& item : j.at("single")) {
      if (item.contains("Sequence")) {
        if (item["Sequence"].value("id", "A") != "A") fail("tokenizer.json: single template uses sequence B");
        p->single.push_back({true, {}});
      } else if (item.contains("SpecialToken")) {
        std::string name = item["SpecialToken"].at("id").get<std::string>();
        std::vector<int32_t> ids;
        if (specials.is_object() && specials.contains(name) && specials[name].contains("ids")) {
          for (const auto& id : specials[name]["ids"]) ids.push_back(token_id(id, "post_processor special token id"));
        } else {
          ids.push_back(resolve_token(name, token_ids));
        }
        p->single.push_back({false, std::move(ids)});
      } else {
        fail("tokenizer.json: malformed TemplateProcessing item " + json_brief(item));
      }
    }
    return p;
  }
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    auto p = std::make_unique<PostWrap>();
    p->cls = token_id(j.at("cls").at(1), "post_processor cls id");
    p->sep = token_id(j.at("sep").at(1), "post_processor sep id");
    return p;
  }
  if (type == "ByteLevel") return std::make_unique<PostNoop>();
  if (type == "Sequence") {
    auto p = std::make_unique<PostSequence>();
    for (const auto& q : j.at("processors"))
      if (auto r = make_post_processor(q, token_ids)) p->items.push_back(std::move(r));
    return p;
  }
  fail("tokenizer.json: unsupported post_processor type \"" + type + "\"");
}

// =============================================================================================
// Decoders
namespace {

struct DecSequence : Decoder {
  std::vector<std::unique_ptr<Decoder>> items;
  void apply(std::vector<std::string>& t) const override {
    for (auto& d : items) d->apply(t);
  }
};

struct DecByteLevel : Decoder {
  const std::unordered_set<std::string>* added = nullptr;
  void apply(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string bytes;
    auto flush = [&] {
      if (!bytes.empty()) out.push_back(utf8_lossy(bytes));
      bytes.clear();
    };
    for (const auto& t : tokens) {
      if (added && added->count(t)) {
        flush();
        out.push_back(t);
        continue;
      }
      // A token with characters outside the byte alphabet contributes its raw bytes (as HF does).
      size_t mark = bytes.size(), i = 0;
      bool ok = true;
      while (i < t.size()) {
        int b = cp_to_byte(next_cp(t, i));
        if (b < 0) { ok = false; break; }
        bytes.push_back(char(b));
      }
      if (!ok) {
        bytes.resize(mark);
        bytes += t;
      }
    }
    flush();
    tokens.swap(out);
  }
};

struct DecReplace : Decoder {
  std::unique_ptr<Regex> pattern;
  std::string content;
  void apply(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) t = pattern->replace_all(t, content);
  }
};

bool parse_byte_token(const std::string& t, uint8_t& b) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return false;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  int h = hex(t[3]), l = hex(t[4]);
  if (h < 0 || l < 0) return false;
  b = uint8_t(h * 16 + l);
  return true;
}

struct DecByteFallback : Decoder {
  void apply(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string bytes;
    size_t nbytes = 0;
    auto flush = [&] {
      if (nbytes == 0) return;
      if (find_invalid_utf8(bytes) == std::string::npos) {
        out.push_back(bytes);
      } else {
        // Invalid byte runs become one U+FFFD per byte token, as in HF tokenizers.
        std::string rep;
        for (size_t k = 0; k < nbytes; ++k) rep += "\xEF\xBF\xBD";
        out.push_back(rep);
      }
      bytes.clear();
      nbytes = 0;
    };
    for (auto& t : tokens) {
      uint8_t b;
      if (parse_byte_token(t, b)) {
        bytes.push_back(char(b));
        ++nbytes;
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens.swap(out);
  }
};

struct DecFuse : Decoder {
  void apply(std::vector<std::string>& tokens) const override {
    std::string all;
    for (auto& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

struct DecStrip : Decoder {
  uint32_t content = ' ';
  size_t start = 0, stop = 0;
  void apply(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) {
      std::vector<std::pair<uint32_t, size_t>> cps;  // (cp, byte offset)
      size_t i = 0;
      while (i < t.size()) {
        size_t o = i;
        cps.emplace_back(next_cp(t, i), o);
      }
      size_t a = 0, b = cps.size();
      for (size_t k = 0; k < start && a < b && cps[a].first == content; ++k) ++a;
      for (size_t k = 0; k < stop && b > a && cps[b - 1].first == content; ++k) --b;
      size_t bb = a < cps.size() ? cps[a].second : t.size();
      size_t be = b < cps.size() ? cps[b].second : t.size();
      t = t.substr(bb, be - bb);
    }
  }
};

struct DecMetaspace : Decoder {
  std::string replacement = "\xE2\x96\x81";
  bool strip_first = true;
  void apply(std::vector<std::string>& tokens) const override {
    for (size_t k = 0; k < tokens.size(); ++k) {
      std::string& t = tokens[k];
      std::string r;
      size_t pos = 0, f;
      while ((f = t.find(replacement, pos)) != std::string::npos) {
        r.append(t, pos, f - pos);
        r += ' ';
        pos = f + replacement.size();
      }
      r.append(t, pos, std::string::npos);
      if (k == 0 && strip_first && !r.empty() && r[0] == ' ') r.erase(0, 1);
      t.swap(r);
    }
  }
};

struct DecBpe : Decoder {
  std::string suffix;
  void apply(std::vector<std::string>& tokens) const override {
    for (size_t k = 0; k < tokens.size(); ++k) {
      std::string& t = tokens[k];
      std::string rep = k + 1 == tokens.size() ? "" : " ";
      std::string r;
      size_t pos = 0, f;
      while (!suffix.empty() && (f = t.find(suffix, pos)) != std::string::npos) {
        r.append(t, pos, f - pos);
        r += rep;
        pos = f + suffix.size();
      }
      r.append(t, pos, std::string::npos);
      t.swap(r);
    }
  }
};

}  // namespace

std::unique_ptr<Decoder> make_decoder(const json& j, const std::unordered_set<std::string>* added) {
  if (j.is_null()) return nullptr;
  std::string type = jtype(j, "decoder");
  if (type == "Sequence") {
    auto p = std::make_unique<DecSequence>();
    for (const auto& d : j.at("decoders"))
      if (auto q = make_decoder(d, added)) p->items.push_back(std::move(q));
    return p;
  }
  if (type == "ByteLevel") {
    auto p = std::make_unique<DecByteLevel>();
    p->added = added;
    return p;
  }
  if (type == "Replace") {
    auto p = std::make_unique<DecReplace>();
    p->pattern = make_pattern(j.at("pattern"));
    p->content = jstr(j, "content").value_or("");
    return p;
  }
  if (type == "ByteFallback") return std::make_unique<DecByteFallback>();
  if (type == "Fuse") return std::make_unique<DecFuse>();
  if (type == "Strip") {
    auto p = std::make_unique<DecStrip>();
    std::string c = jstr(j, "content").value_or(" ");
    size_t i = 0;
    p->content = c.empty() ? ' ' : next_cp(c, i);
    p->start = j.value("start", 0);
    p->stop = j.value("stop", 0);
    return p;
  }
  if (type == "Metaspace") {
    auto p = std::make_unique<DecMetaspace>();
    if (auto r = jstr(j, "replacement")) p->replacement = *r;
    auto scheme = jstr(j, "prepend_scheme");
    p->strip_first = scheme ? *scheme != "never" : jbool(j, "add_prefix_space", true);
    return p;
  }
  if (type == "BPEDecoder") {
    auto p = std::make_unique<DecBpe>();
    p->suffix = jstr(j, "suffix").value_or("</w>");
    return p;
  }
  fail("tokenizer.json: unsupported decoder type \"" + type + "\"");
}

}  // namespace mha2mla::tok
