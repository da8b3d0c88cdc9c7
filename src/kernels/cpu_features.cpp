#include "kernels/cpu_features.h"

#include <ATen/Parallel.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <set>
#include <thread>
#include <stdexcept>

namespace mha2mla::kernels {

bool cpu_has_avx2() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool ok =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return ok;
#else
  return false;
#endif
}

bool cpu_has_avx512() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                         __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

bool cpu_has_avx512_bf16() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool ok = cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
  return ok;
#else
  return false;
#endif
}

std::string variant_name(Variant v) {
  switch (v) {
    case Variant::Auto: return "auto";
    case Variant::Reference: return "reference";
    case Variant::Generic: return "generic";
    case Variant::Avx2: return "avx2";
    case Variant::Avx512: return "avx512";
    case Variant::Avx512Bf16: return "avx512bf16";
  }
  return "?";
}

namespace {
constexpr Variant kAllVariants[] = {Variant::Auto,   Variant::Reference, Variant::Generic,
                                    Variant::Avx2,   Variant::Avx512,    Variant::Avx512Bf16};

// "unknown variant 'x' (expected auto, reference, ...)", for the flag and the variable alike.
std::string unknown_variant(const std::string& name) {
  std::string list;
  for (auto v : kAllVariants) list += (list.empty() ? "" : ", ") + variant_name(v);
  return "unknown variant '" + name + "' (expected " + list + ")";
}
}  // namespace

Variant parse_variant(const std::string& name) {
  for (auto v : kAllVariants)
    if (name == variant_name(v)) return v;
  throw std::runtime_error("kernels: " + unknown_variant(name));
}

namespace {
std::atomic<int> g_cap{static_cast<int>(Variant::Auto)};  // set_variant_cap(); Auto: none set

// The order in which variants gain instructions; Reference stands apart (libtorch's own code).
int rank(Variant v) {
  switch (v) {
    case Variant::Generic: return 1;
    case Variant::Avx2: return 2;
    case Variant::Avx512: return 3;
    case Variant::Avx512Bf16: return 4;
    default: return 0;
  }
}
}  // namespace

void set_variant_cap(Variant cap) { g_cap.store(static_cast<int>(cap)); }

Variant variant_cap() {
  const auto set = static_cast<Variant>(g_cap.load());
  if (set != Variant::Auto) return set;
  const char* env = std::getenv("MHA2MLA_KERNELS");
  if (!env || !*env) return Variant::Auto;
  for (auto v : kAllVariants)
    if (variant_name(v) == env) return v;
  throw std::runtime_error("MHA2MLA_KERNELS: " + unknown_variant(env));
}

VariantCapScope::VariantCapScope(Variant cap) : saved_(g_cap.load()) { set_variant_cap(cap); }
VariantCapScope::~VariantCapScope() { g_cap.store(saved_); }

Variant resolve_variant(Variant v) {
  if (v == Variant::Auto) {
    // Without AVX2 the libtorch reference (vectorised BLAS) beats the scalar portable kernels,
    // which remain for correctness checks (cap: generic).
    const Variant best = cpu_has_avx512_bf16() ? Variant::Avx512Bf16
                         : cpu_has_avx512()    ? Variant::Avx512
                         : cpu_has_avx2()      ? Variant::Avx2
                                               : Variant::Reference;
    const Variant cap = variant_cap();
    if (cap == Variant::Reference || cap == Variant::Generic) return cap;
    if (cap == Variant::Auto || best == Variant::Reference) return best;
    return rank(cap) < rank(best) ? cap : best;
  }
  if ((v == Variant::Avx2 && !cpu_has_avx2()) || (v == Variant::Avx512 && !cpu_has_avx512()) ||
      (v == Variant::Avx512Bf16 && !cpu_has_avx512_bf16()))
    throw std::runtime_error("kernels: this CPU cannot run the " + variant_name(v) + " variant");
  return v;
}

}  // namespace mha2mla::kernels

namespace mha2mla::kernels {

int64_t parallel_worker_threads(int64_t items) {
  std::mutex mu;
  std::set<std::thread::id> ids;
  at::parallel_for(0, items, 1, [&](int64_t, int64_t) {
    std::lock_guard<std::mutex> lock(mu);
    ids.insert(std::this_thread::get_id());
  });
  return static_cast<int64_t>(ids.size());
}

}  // namespace mha2mla::kernels
