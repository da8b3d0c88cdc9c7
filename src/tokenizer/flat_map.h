#pragma once
// Open-addressing string-keyed hash map with keys copied into one arena. Vocabulary and pre-token
// cache lookups dominate encoding time; a flat table costs ~1-2 cache misses per lookup where
// std::unordered_map costs 3+ (bucket, node, key).
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace mha2mla::tok {

inline uint64_t hash_bytes(const char* p, size_t n) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xFF51AFD7ED558CCDull);
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
    h ^= h >> 31;
    p += 8;
    n -= 8;
  }
  uint64_t w = 0;
  std::memcpy(&w, p, n);
  h = (h ^ w) * 0x94D049BB133111EBull;
  h ^= h >> 29;
  h *= 0xBF58476D1CE4E5B9ull;
  h ^= h >> 32;
  return h | 1;  // 0 marks an empty slot
}

template <class V>
class FlatStrMap {
 public:
  size_t size() const { return count_; }
  size_t arena_bytes() const { return arena_.size(); }

  void clear() {
    slots_.clear();
    arena_.clear();
    count_ = 0;
    mask_ = 0;
  }

  void reserve(size_t n) {
    if (n * 2 > slots_.size()) rehash(n * 2);
  }

  const V* get(std::string_view k) const {
    if (slots_.empty()) return nullptr;
    uint64_t h = hash_bytes(k.data(), k.size());
    for (size_t i = size_t(h) & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.h == 0) return nullptr;
      if (s.h == h && s.len == k.size() && std::memcmp(arena_.data() + s.off, k.data(), k.size()) == 0) return &s.v;
    }
  }

  // Inserts or overwrites.
  void set(std::string_view k, V v) {
    if ((count_ + 1) * 2 > slots_.size()) rehash(slots_.empty() ? 16 : slots_.size() * 2);
    uint64_t h = hash_bytes(k.data(), k.size());
    size_t i = size_t(h) & mask_;
    for (;; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.h == 0) break;
      if (s.h == h && s.len == k.size() && std::memcmp(arena_.data() + s.off, k.data(), k.size()) == 0) {
        s.v = v;
        return;
      }
    }
    slots_[i] = Slot{h, uint32_t(arena_.size()), uint32_t(k.size()), v};
    arena_.append(k);
    ++count_;
  }

 private:
  struct Slot {
    uint64_t h = 0;
    uint32_t off = 0, len = 0;
    V v{};
  };
  void rehash(size_t want) {
    size_t cap = 16;
    while (cap < want) cap <<= 1;
    std::vector<Slot> old;
    old.swap(slots_);
    slots_.assign(cap, Slot{});
    mask_ = cap - 1;
    for (const Slot& s : old) {
      if (s.h == 0) continue;
      size_t i = size_t(s.h) & mask_;
      while (slots_[i].h != 0) i = (i + 1) & mask_;
      slots_[i] = s;
    }
  }
  std::vector<Slot> slots_;
  std::string arena_;
  size_t count_ = 0;
  size_t mask_ = 0;
};

}  // namespace mha2mla::tok
