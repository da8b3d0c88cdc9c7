// Portable attention: one query row at a time, exact softmax over a scratch row of scores.
// Runs on any CPU; the SIMD variants are tested against the same reference.
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/attention_args.h"
#include "kernels/scalar_convert.h"

namespace mha2mla::kernels::generic {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Scores (log2 domain), max m, sum l and unnormalised acc[Dv] of one query row over keys [s0, s1).
void row_partial(const AttnArgs& a, int64_t b, int64_t h, int64_t t, int64_t s0, int64_t s1,
                 std::vector<float>& sc, float* m_out, float* l_out, float* acc) {
  const int64_t kvh = h / (a.Hq / a.Hkv), pos = a.start + t;
  int64_t lo, hi;
  visible_range(a, pos, &lo, &hi);
  lo = lo > s0 ? lo : s0;
  hi = hi < s1 ? hi : s1;
  const void* q1 = row_ptr(a.q1, a.dtype, b, h, t);
  const void* q2 = a.D2 ? row_ptr(a.q2, a.dtype, b, h, t) : nullptr;
  const float c = a.scale * kLog2e;
  float m = kNegInf;
  sc.assign(hi > lo ? hi - lo : 0, kNegInf);
  for (int64_t s = lo; s < hi; ++s) {
    if (a.valid && !a.valid[b * a.S + s]) continue;
    float dot = 0.f;
    if (a.kq) {
      for (int64_t d = 0; d < a.D1; ++d) dot += load_elem(q1, d, a.dtype) * quant_elem(*a.kq, a.kv_dtype, b, kvh, s, d);
    } else {
      const void* k1 = row_ptr(a.k1, a.kv_dtype, b, kvh, s);
      for (int64_t d = 0; d < a.D1; ++d) dot += load_elem(q1, d, a.dtype) * load_elem(k1, d, a.kv_dtype);
    }
    if (q2 && a.k2q) {
      for (int64_t d = 0; d < a.D2; ++d) dot += load_elem(q2, d, a.dtype) * quant_elem(*a.k2q, a.kv_dtype, b, kvh, s, d);
    } else if (q2) {
      const void* k2 = row_ptr(a.k2, a.kv_dtype, b, kvh, s);
      for (int64_t d = 0; d < a.D2; ++d) dot += load_elem(q2, d, a.dtype) * load_elem(k2, d, a.kv_dtype);
    }
    sc[s - lo] = dot * c;
    m = std::max(m, sc[s - lo]);
  }
  for (int64_t d = 0; d < a.Dv; ++d) acc[d] = 0.f;
  float l = 0.f;
  if (m != kNegInf) {
    for (int64_t s = lo; s < hi; ++s) {
      if (sc[s - lo] == kNegInf) continue;
      const float p = std::exp2(sc[s - lo] - m);
      l += p;
      if (a.vq) {
        for (int64_t d = 0; d < a.Dv; ++d) acc[d] += p * quant_elem(*a.vq, a.kv_dtype, b, kvh, s, d);
      } else {
        const void* v = row_ptr(a.v, a.kv_dtype, b, kvh, s);
        for (int64_t d = 0; d < a.Dv; ++d) acc[d] += p * load_elem(v, d, a.kv_dtype);
      }
    }
  }
  *m_out = m;
  *l_out = l;
}

void prefill_tile(const AttnArgs& a, int64_t b, int64_t kvh, int64_t t0, int64_t tq) {
  const int64_t g = a.Hq / a.Hkv;
  std::vector<float> sc, acc(a.Dv);
  for (int64_t h = kvh * g; h < (kvh + 1) * g; ++h) {
    for (int64_t t = t0; t < t0 + tq; ++t) {
      float m, l;
      row_partial(a, b, h, t, 0, a.S, sc, &m, &l, acc.data());
      const float inv = l > 0.f ? 1.f / l : 0.f;
      const int64_t o = ((b * a.Hq + h) * a.T + t) * a.Dv;
      for (int64_t d = 0; d < a.Dv; ++d) store_elem(a.out, o + d, a.dtype, acc[d] * inv);
    }
  }
}

void decode_split(const AttnArgs& a, int64_t b, int64_t grp, int64_t s0, int64_t s1, const Partial& p) {
  const int64_t g = a.Hq / a.groups;
  std::vector<float> sc;
  for (int64_t hi = 0; hi < g; ++hi) {
    for (int64_t t = 0; t < a.T; ++t) {
      const int64_t r = hi * a.T + t;
      row_partial(a, b, grp * g + hi, t, s0, s1, sc, p.m + r, p.l + r, p.acc + r * a.Dv);
    }
  }
}

}  // namespace

const AttnKernels kAttn{prefill_tile, decode_split};

}  // namespace mha2mla::kernels::generic
