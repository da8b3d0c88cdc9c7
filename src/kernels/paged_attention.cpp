#include "kernels/paged_attention.h"

#include <algorithm>
#include <atomic>
#include <string>

#include "kernels/attention.h"
#include "kernels/attention_internal.h"
#include "kernels/quant_attention.h"
#include "kernels/scalar_convert.h"
#include "kernels/storage_dtype.h"

namespace mha2mla::kernels {
namespace {

constexpr const char* kFn = "paged_decode";

// Checks a pool buffer against its layout: [N, H, bt, W or row bytes]; returns H.
int64_t check_buffer(const char* name, const PagedBuffer& b, int64_t N, int64_t bt) {
  const std::string n(name);
  if (!b.data.defined() || b.data.dim() != 4 || b.data.size(2) != bt || b.data.stride(3) != 1)
    fail_arg(kFn, n + ": data must be [N, H, block_tokens = " + std::to_string(bt) + ", .] with rows contiguous");
  if (N >= 0 && b.data.size(0) != N) fail_arg(kFn, n + ": every buffer of the pool must hold the same blocks");
  if (b.quantized()) {
    const bool e4m3 = b.codes == Codes::E4M3;
    if (!b.scale.defined() || b.zero.defined() == e4m3 || b.group <= 0 || b.scale.stride(3) != 1 ||
        (b.zero.defined() && b.zero.strides() != b.scale.strides()))
      fail_arg(kFn, n + ": codes need their scales (and zero points, one layout) and a positive group");
    if (b.width <= 0) fail_arg(kFn, n + ": codes need the width of a row");
    if (b.per_channel && bt % b.group != 0)
      fail_arg(kFn, n + ": per-channel groups of " + std::to_string(b.group) + " tokens must divide the block of " +
                        std::to_string(bt));
  } else if (!is_float_storage(b.data)) {
    fail_arg(kFn, n + ": float data must be f32, bf16 or f16");
  }
  return b.data.size(1);
}

// A [N, H, bt, W] pool tensor as an operand whose batch row is the block.
Operand pool_operand(const torch::Tensor& t, bool shared_head) {
  Operand o = operand(t);
  if (shared_head) o.sh = 0;
  return o;
}

// A quantized pool buffer's codes as the kernels read them (MLA's latent: one head shared by all).
QuantDesc pool_codes(const PagedBuffer& b, bool shared_head) {
  QuantDesc d = code_desc(b.codes, b.bits, b.group, b.per_channel, b.data, b.scale, b.zero);
  if (shared_head) d.d_sh = d.s_sh = 0;
  return d;
}

// One paged call: the two buffers (k, v; or c, k_r), as the kernels read them, and each sequence's blocks.
struct PagedCall {
  AttnArgs base;   // shapes, dtypes, scale, window; per item the query, the block and its operands are set
  bool mla = false, quant = false;
  bool q[2] = {false, false};  // which buffers hold codes
  Operand pool[2];             // float buffers over the pool (MLA's latent: one head)
  QuantDesc codes[2];          // quantized buffers over the pool
  Operand q1, q2;              // q [B, Hq, 1, D]
  int64_t bt = 0;
  int64_t es_res = 0;          // bytes per residual value (the compute dtype)
};

// Buffer i of sequence s's block `blk` (its slots from `first`) as the quantized kernels read it: codes for the
// slots below s.quantized, the residual for the rest; a float buffer as a descriptor with every slot in the block.
QuantDesc block_desc(const PagedCall& c, int i, const PagedSeq& s, int64_t blk_first) {
  const bool shared = c.mla && i == 0;
  if (!c.q[i]) {
    QuantDesc d;
    d.data = static_cast<const uint8_t*>(c.pool[i].p);  // never read: n_quant = 0
    d.group = 1;
    d.residual = c.pool[i];
    return d;
  }
  QuantDesc d = c.codes[i];
  d.n_quant = std::clamp<int64_t>(s.quantized - blk_first, 0, c.bt);
  const auto& r = s.residual[i];
  if (r.defined() && r.size(2) > 0) {
    // Slot j of the block is residual row blk_first + j - quantized; rows below the block's first residual slot
    // are never read, so the operand starts at the block's first one.
    const int64_t row0 = std::max<int64_t>(0, blk_first - s.quantized);
    d.residual = Operand{static_cast<const char*>(r.data_ptr()) + row0 * r.stride(2) * c.es_res, 0,
                         shared ? 0 : r.stride(1), r.stride(2)};
  } else {
    d.residual = Operand{d.data, 0, 0, 0};  // no residual slot in this block: never read
  }
  return d;
}

// The first slot sequence s's query (at slot tokens - 1) sees.
int64_t first_visible(const PagedSeq& s, int64_t window) {
  return window > 0 ? std::max<int64_t>(0, s.tokens - window) : 0;
}

// The blocks of sequence s that its query sees: [first, last].
void visible_blocks(const PagedSeq& s, int64_t bt, int64_t window, int64_t* first, int64_t* last) {
  *first = first_visible(s, window) / bt, *last = (s.tokens - 1) / bt;
}

torch::Tensor run_paged(PagedCall& c, const std::vector<PagedSeq>& seqs, const AttnKernels& kern,
                        const torch::TensorOptions& opt) {
  const AttnArgs& base = c.base;
  const int64_t B = static_cast<int64_t>(seqs.size()), G = base.groups;
  const int64_t rows = base.Hq / G * base.T, part = rows * (base.Dv + 2);
  const int64_t threads = at::get_num_threads(), threads_max = threads + 1;
  // Work items: runs of consecutive blocks of one (sequence, group), enough of them to keep every thread busy.
  // Each block still gets its own partial, merged in block order, so the runs' lengths change no result.
  struct Item {
    int32_t seq, grp, blk, n;  // blocks [blk, blk + n) of the visible ones
  };
  std::vector<Item> items;
  std::vector<int64_t> first_blk(static_cast<size_t>(B)), nblk(static_cast<size_t>(B)), group_base;
  int64_t parts = 0;
  for (int64_t b = 0; b < B; ++b) {
    int64_t f, l;
    visible_blocks(seqs[b], c.bt, base.window, &f, &l);
    first_blk[b] = f, nblk[b] = l - f + 1;
  }
  const int64_t runs = std::max<int64_t>(1, (4 * threads + B * G - 1) / std::max<int64_t>(B * G, 1));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t g = 0; g < G; ++g) {
      group_base.push_back(parts);
      const int64_t per = (nblk[b] + runs - 1) / runs;
      for (int64_t i = 0; i < nblk[b]; i += per)
        items.push_back({static_cast<int32_t>(b), static_cast<int32_t>(g), static_cast<int32_t>(i),
                         static_cast<int32_t>(std::min(per, nblk[b] - i))});
      parts += nblk[b];
    }
  thread_local std::vector<float> buf;
  const size_t need = static_cast<size_t>(parts * part + threads_max * base.Dv);
  if (buf.size() < need) buf.resize(need);
  float* partials = buf.data();
  float* scratch = partials + parts * part;
  auto out = torch::empty({B, base.Hq, base.T, base.Dv}, opt);
  char* out_p = static_cast<char*>(out.data_ptr());
  const int64_t es = elem_size(base.dtype);
  std::vector<std::atomic<int64_t>> done(static_cast<size_t>(B * G));
  for (auto& d : done) d.store(0, std::memory_order_relaxed);
  run_items(static_cast<int64_t>(items.size()), [&](int64_t n) {
    const Item it = items[static_cast<size_t>(n)];
    const PagedSeq& s = seqs[it.seq];
    const int64_t pos = s.tokens - 1, bg = it.seq * G + it.grp;
    const int64_t lo = first_visible(s, base.window);
    AttnArgs a = base;
    a.q1 = c.q1, a.q1.p = static_cast<const char*>(c.q1.p) + it.seq * c.q1.sb * es, a.q1.sb = 0;
    if (base.D2) a.q2 = c.q2, a.q2.p = static_cast<const char*>(c.q2.p) + it.seq * c.q2.sb * es, a.q2.sb = 0;
    for (int64_t k = 0; k < it.n; ++k) {
      const int64_t bi = first_blk[it.seq] + it.blk + k, first = bi * c.bt;
      a.start = pos - first;  // the query's slot, counted from the block's first
      QuantDesc d0, d1;
      if (c.quant) {
        d0 = block_desc(c, 0, s, first), d1 = block_desc(c, 1, s, first);
        a.kq = &d0;
        if (c.mla) a.vq = &d0, a.k2q = &d1;
        else a.vq = &d1;
      } else {
        a.k1 = c.pool[0];
        if (c.mla) a.v = c.pool[0], a.k2 = c.pool[1];
        else a.v = c.pool[1];
      }
      const int64_t s0 = std::max<int64_t>(0, lo - first), s1 = std::min(c.bt, s.tokens - first);
      float* p = partials + (group_base[bg] + it.blk + k) * part;
      kern.decode_split(a, s.blocks[bi], it.grp, s0, s1, Partial{p, p + rows, p + 2 * rows});
    }
    if (done[bg].fetch_add(it.n, std::memory_order_acq_rel) + it.n != nblk[it.seq]) return;
    const int64_t tid = std::min<int64_t>(at::get_thread_num(), threads_max - 1);
    merge_partials(partials + group_base[bg] * part, nblk[it.seq], rows, base.Dv, base.dtype,
                   out_p + bg * rows * base.Dv * es, scratch + tid * base.Dv);
  });
  return out;
}

void check_seqs(const std::vector<PagedSeq>& seqs, int64_t bt, int64_t N, const PagedBuffer* bufs[2]) {
  for (size_t b = 0; b < seqs.size(); ++b) {
    const auto& s = seqs[b];
    const std::string at = "sequence " + std::to_string(b);
    if (s.tokens < 1 || !s.blocks) fail_arg(kFn, at + ": needs at least one token and its blocks");
    for (int64_t i = 0; i < (s.tokens + bt - 1) / bt; ++i)
      if (s.blocks[i] < 0 || s.blocks[i] >= N) fail_arg(kFn, at + ": block id " + std::to_string(s.blocks[i]) + " outside the pool");
    for (int i = 0; i < 2; ++i) {
      if (!bufs[i]->quantized()) continue;
      if (s.quantized < 0 || s.quantized > s.tokens) fail_arg(kFn, at + ": quantized slots outside [0, tokens]");
      const int64_t tail = s.tokens - s.quantized;
      const auto& r = s.residual[i];
      if (tail > 0 && (!r.defined() || r.dim() != 4 || r.size(0) != 1 || r.size(1) != bufs[i]->data.size(1) ||
                       r.size(2) < tail || r.stride(3) != 1))
        fail_arg(kFn, at + ": the residual of buffer " + std::to_string(i) + " must be [1, H, >= " +
                          std::to_string(tail) + ", W] with rows contiguous");
      if (bufs[i]->per_channel && s.quantized % bufs[i]->group != 0)
        fail_arg(kFn, at + ": per-channel codes must hold whole groups");
    }
  }
}

// The float dtype every residual and float pool buffer of a quantized call shares (the kernels read one).
DType residual_dtype(const PagedBuffer* bufs[2], const std::vector<PagedSeq>& seqs, const torch::Tensor& q) {
  torch::ScalarType t = q.scalar_type();
  bool set = false;
  auto take = [&](const torch::Tensor& x) {
    if (!x.defined()) return;
    if (set && x.scalar_type() != t)
      fail_arg(kFn, "a quantized cache reads its residuals and float buffers in one dtype; got two");
    t = x.scalar_type(), set = true;
  };
  for (int i = 0; i < 2; ++i)
    if (!bufs[i]->quantized()) take(bufs[i]->data);
  for (const auto& s : seqs)
    for (int i = 0; i < 2; ++i)
      if (bufs[i]->quantized()) take(s.residual[i]);
  return storage_dtype(t);
}

PagedCall make_call(bool mla, const torch::Tensor& q1, const torch::Tensor& q2, const PagedBuffer& b0,
                    const PagedBuffer& b1, const std::vector<PagedSeq>& seqs, int64_t bt, int64_t window, double scale) {
  if (bt <= 0) fail_arg(kFn, "block_tokens must be positive");
  const int64_t N = b0.data.defined() ? b0.data.size(0) : -1;
  const int64_t H0 = check_buffer(mla ? "c" : "k", b0, N, bt), H1 = check_buffer(mla ? "k_r" : "v", b1, N, bt);
  const PagedBuffer* bufs[2] = {&b0, &b1};
  check_seqs(seqs, bt, N, bufs);
  const int64_t B = static_cast<int64_t>(seqs.size());
  if (!q1.defined() || q1.dim() != 4 || q1.size(0) != B || q1.size(2) != 1 || q1.stride(3) != 1)
    fail_arg(kFn, "q must be [B, Hq, 1, D] with one row per sequence");
  if (!is_float_storage(q1)) fail_arg(kFn, "q must be f32, bf16 or f16");
  PagedCall c;
  c.mla = mla, c.bt = bt;
  c.q[0] = b0.quantized(), c.q[1] = b1.quantized(), c.quant = c.q[0] || c.q[1];
  AttnArgs& a = c.base;
  a.dtype = storage_dtype(q1.scalar_type());
  a.B = N, a.Hq = q1.size(1), a.T = 1, a.S = bt, a.window = window, a.scale = static_cast<float>(scale);
  if (mla) {
    if (H0 != 1) fail_arg(kFn, "c must have one head");
    if (!q2.defined() || q2.dim() != 4 || q2.size(0) != B || q2.size(1) != a.Hq || q2.size(2) != 1 ||
        q2.stride(3) != 1 || q2.scalar_type() != q1.scalar_type())
      fail_arg(kFn, "q_rope must be [B, Hq, 1, r] in q_lat's dtype");
    a.Hkv = H1, a.groups = 1, a.D1 = q1.size(3), a.D2 = q2.size(3), a.Dv = a.D1;
  } else {
    if (H0 != H1) fail_arg(kFn, "k and v must have the same heads");
    a.Hkv = H0, a.groups = H0, a.D1 = q1.size(3), a.Dv = b1.row_width();
  }
  if (a.Hkv == 0 || a.Hq % a.Hkv != 0) fail_arg(kFn, "query heads must be a multiple of the cache's heads");
  if (b0.row_width() != a.D1) fail_arg(kFn, "the cache's width does not match q's");
  if (mla && b1.row_width() != a.D2) fail_arg(kFn, "k_r's width does not match q_rope's");
  a.kv_dtype = c.quant ? residual_dtype(bufs, seqs, q1) : storage_dtype(b0.data.scalar_type());
  if (!c.quant && b1.data.scalar_type() != b0.data.scalar_type()) fail_arg(kFn, "both float buffers must share one dtype");
  c.es_res = elem_size(a.kv_dtype);
  for (int i = 0; i < 2; ++i) {
    const auto& b = *bufs[i];
    const bool shared = mla && i == 0;
    if (b.quantized()) c.codes[i] = pool_codes(b, shared);
    else c.pool[i] = pool_operand(b.data, shared);
  }
  c.q1 = operand(q1);
  if (mla) c.q2 = operand(q2);
  return c;
}

// Any tensor of the call not on the CPU sends it to the reference (it gathers on the device).
bool all_cpu(const torch::Tensor& q1, const torch::Tensor& q2, const PagedBuffer& b0, const PagedBuffer& b1,
             const std::vector<PagedSeq>& seqs) {
  const torch::Device cpu(torch::kCPU);
  bool ok = all_on(cpu, {&q1, &q2, &b0.data, &b0.scale, &b0.zero, &b1.data, &b1.scale, &b1.zero});
  for (const auto& s : seqs) ok = ok && all_on(cpu, {&s.residual[0], &s.residual[1]});
  return ok;
}

torch::Tensor paged_call(bool mla, const torch::Tensor& q1_in, const torch::Tensor& q2_in, const PagedBuffer& b0,
                         const PagedBuffer& b1, const std::vector<PagedSeq>& seqs, int64_t bt, int64_t window,
                         double scale, Variant variant) {
  const auto q1 = q1_in.defined() ? rows_contiguous(q1_in) : q1_in, q2 = q2_in.defined() ? rows_contiguous(q2_in) : q2_in;
  auto reference = [&] {
    return mla ? paged_mla_decode_reference(q1, q2, b0, b1, seqs, bt, window, scale)
               : paged_decode_reference(q1, b0, b1, seqs, bt, window, scale);
  };
  const Variant v = resolve_variant(variant);
  if (v == Variant::Reference || !all_cpu(q1, q2, b0, b1, seqs)) return run_reference_decode(reference);
  PagedCall c = make_call(mla, q1, q2, b0, b1, seqs, bt, window, scale);
  if (seqs.empty() || c.base.Dv == 0) return torch::zeros({static_cast<int64_t>(seqs.size()), c.base.Hq, 1, c.base.Dv}, q1.options());
  note_cpu_decode();
  return run_paged(c, seqs, *cpu_kernels(v).attn, q1.options());
}

}  // namespace

torch::Tensor paged_decode_attention(const torch::Tensor& q, const PagedBuffer& k, const PagedBuffer& v,
                                     const std::vector<PagedSeq>& seqs, int64_t block_tokens, int64_t window,
                                     double scale, Variant variant) {
  return paged_call(false, q, {}, k, v, seqs, block_tokens, window, scale, variant);
}

torch::Tensor paged_mla_decode_attention(const torch::Tensor& q_lat, const torch::Tensor& q_rope,
                                         const PagedBuffer& c, const PagedBuffer& k_r,
                                         const std::vector<PagedSeq>& seqs, int64_t block_tokens, int64_t window,
                                         double scale, Variant variant) {
  return paged_call(true, q_lat, q_rope, c, k_r, seqs, block_tokens, window, scale, variant);
}

torch::Tensor paged_gather(const PagedBuffer& buf, const PagedSeq& seq, int i, int64_t bt) {
  const int64_t nb = (seq.tokens + bt - 1) / bt;
  auto ids = torch::from_blob(const_cast<int32_t*>(seq.blocks), {nb}, torch::kInt32).to(torch::kInt64).to(buf.data.device());
  // [nb, H, bt, X] -> [1, H, nb·bt, X]: the sequence's slots in order.
  auto flat = [&](const torch::Tensor& t) {
    auto g = t.index_select(0, ids);
    return g.permute({1, 0, 2, 3}).reshape({1, g.size(1), g.size(0) * g.size(2), g.size(3)});
  };
  if (!buf.quantized()) return flat(buf.data).narrow(2, 0, seq.tokens).to(torch::kFloat32);
  QuantizedKV kv;
  kv.codes = buf.codes, kv.bits = buf.bits, kv.group = buf.group, kv.per_channel = buf.per_channel;
  kv.n_quant = seq.quantized;
  kv.data = flat(buf.data);
  kv.scale = flat(buf.scale);
  if (buf.zero.defined()) kv.zero = flat(buf.zero);
  const int64_t tail = seq.tokens - seq.quantized;
  const auto& r = seq.residual[i];
  if (tail > 0) {
    kv.residual = r.narrow(2, 0, tail);
  } else {
    kv.residual = torch::zeros({1, buf.data.size(1), 0, buf.row_width()},
                               buf.data.options().dtype(r.defined() ? r.scalar_type() : torch::kFloat32));
  }
  return dequantize_reference(kv).to(torch::kFloat32);
}

torch::Tensor paged_decode_reference(const torch::Tensor& q, const PagedBuffer& k, const PagedBuffer& v,
                                     const std::vector<PagedSeq>& seqs, int64_t bt, int64_t window, double scale) {
  std::vector<torch::Tensor> out;
  for (size_t b = 0; b < seqs.size(); ++b) {
    const auto& s = seqs[b];
    auto qb = q.narrow(0, static_cast<int64_t>(b), 1).to(torch::kFloat32);
    out.push_back(attention_reference(qb, paged_gather(k, s, 0, bt), paged_gather(v, s, 1, bt), s.tokens - 1, {},
                                      window, scale));
  }
  return torch::cat(out, 0).to(q.scalar_type());
}

torch::Tensor paged_mla_decode_reference(const torch::Tensor& q_lat, const torch::Tensor& q_rope,
                                         const PagedBuffer& c, const PagedBuffer& k_r,
                                         const std::vector<PagedSeq>& seqs, int64_t bt, int64_t window, double scale) {
  std::vector<torch::Tensor> out;
  for (size_t b = 0; b < seqs.size(); ++b) {
    const auto& s = seqs[b];
    const auto r = static_cast<int64_t>(b);
    auto ql = q_lat.narrow(0, r, 1).to(torch::kFloat32), qr = q_rope.narrow(0, r, 1).to(torch::kFloat32);
    out.push_back(mla_decode_reference(ql, qr, paged_gather(c, s, 0, bt).select(1, 0), paged_gather(k_r, s, 1, bt),
                                       s.tokens - 1, {}, window, scale));
  }
  return torch::cat(out, 0).to(q_lat.scalar_type());
}

}  // namespace mha2mla::kernels
