#include "model/paged_cache.h"

#include <cstring>
#include <string>

#include "kernels/cache_format.h"
#include "kernels/storage_dtype.h"
#include "model/quant.h"
#include "util/error.h"

namespace mha2mla::model {
BlockPool::BlockPool(const std::vector<std::vector<BufferSpec>>& layer_specs, const CacheOptions& opt,
                     torch::ScalarType compute, torch::Device device, int64_t blocks, int64_t block_tokens)
    : blocks_(blocks), block_tokens_(block_tokens), compute_(compute), device_(device) {
  check(blocks >= 1 && blocks < (int64_t{1} << 31), "the cache pool needs between 1 and 2^31 blocks");
  check(block_tokens >= 1, "--cache-block must be at least 1");
  for (const auto& specs : layer_specs) {
    layers_.emplace_back();
    for (const auto& spec : specs) {
      Buffer b{spec, resolve_storage(spec, opt, compute), {}};
      const auto& f = kernels::cache_format(b.st.type);
      auto o = torch::TensorOptions().device(device);
      if (!is_quantized(b.st.type)) {
        b.pool.data = torch::empty({blocks, spec.heads, block_tokens, spec.width}, o.dtype(kernels::torch_dtype(f.dtype)));
      } else {
        const bool per_channel = b.st.axis == QuantAxis::Channel;
        check(!per_channel || block_tokens % b.st.group == 0,
              "cache buffer \"" + spec.name + "\" is quantized per channel in groups of " + std::to_string(b.st.group) +
                  " tokens, which must divide --cache-block (" + std::to_string(block_tokens) + ")");
        const int64_t groups = per_channel ? spec.width : kernels::token_groups(spec.width, b.st.group);
        const int64_t meta = scale_rows(b.st, block_tokens);
        b.pool.data = torch::empty({blocks, spec.heads, block_tokens, kernels::row_bytes(f, spec.width)}, o.dtype(torch::kUInt8));
        const bool e4m3 = f.codes == kernels::Codes::E4M3;
        b.pool.scale = torch::empty({blocks, spec.heads, meta, groups}, o.dtype(e4m3 ? torch::kFloat32 : torch::kFloat16));
        if (!e4m3) b.pool.zero = torch::empty({blocks, spec.heads, meta, groups}, o.dtype(torch::kFloat16));
        b.pool.codes = f.codes;
        b.pool.bits = f.bits;
        b.pool.group = b.st.group;
        b.pool.per_channel = per_channel;
        b.pool.width = spec.width;
      }
      bytes_ += tensor_bytes(b.pool.data) + tensor_bytes(b.pool.scale) + tensor_bytes(b.pool.zero);
      layers_.back().push_back(std::move(b));
    }
  }
  free_.reserve(static_cast<size_t>(blocks));
  for (int64_t i = blocks - 1; i >= 0; --i) free_.push_back(static_cast<int32_t>(i));  // block 0 on top
}

std::vector<int32_t> BlockPool::take(int64_t n) {
  check(n >= 0 && n <= free_blocks(), "the cache pool has " + std::to_string(free_blocks()) + " free blocks, " +
                                          std::to_string(n) + " asked");
  std::vector<int32_t> ids(free_.end() - n, free_.end());
  free_.resize(free_.size() - static_cast<size_t>(n));
  return ids;
}

void BlockPool::give_back(std::vector<int32_t>& ids) {
  free_.insert(free_.end(), ids.rbegin(), ids.rend());
  ids.clear();
}

PagedSequence::PagedSequence(BlockPool& pool, int64_t blocks) : pool_(pool), blocks_(pool.take(blocks)) {
  res_.resize(static_cast<size_t>(pool.num_layers()));
  for (int64_t l = 0; l < pool.num_layers(); ++l)
    for (size_t i = 0; i < pool.buffers(l); ++i) {
      Residual r;
      const auto& st = pool.storage(l, i);
      const auto& spec = pool.spec(l, i);
      if (is_quantized(st.type) && st.residual > 0)
        r.values = torch::empty({1, spec.heads, st.residual, spec.width},
                                torch::TensorOptions().dtype(pool.compute_dtype()).device(pool.device()));
      res_[static_cast<size_t>(l)].push_back(std::move(r));
    }
}

PagedSequence::~PagedSequence() { pool_.give_back(blocks_); }

void PagedSequence::write_rows(const torch::Tensor& t, const torch::Tensor& src_in, int64_t at,
                               int64_t rows_per_block) const {
  const int64_t n = src_in.size(2), H = src_in.size(1);
  check((at + n + rows_per_block - 1) / rows_per_block <= static_cast<int64_t>(blocks_.size()),
        "paged cache: a sequence outgrew the blocks it reserved");
  const auto src = src_in.to(t.scalar_type());
  const bool host = t.device().is_cpu() && src.device().is_cpu() && t.is_contiguous() && src.stride(3) == 1;
  const size_t row = static_cast<size_t>(t.size(3) * t.element_size());
  for (int64_t j = 0; j < n;) {
    const int64_t slot = at + j, blk = blocks_[static_cast<size_t>(slot / rows_per_block)], r = slot % rows_per_block;
    const int64_t len = std::min(n - j, rows_per_block - r);
    if (host) {
      char* dst = static_cast<char*>(t.data_ptr());
      const char* s = static_cast<const char*>(src.data_ptr());
      const int64_t es = static_cast<int64_t>(src.element_size());
      for (int64_t h = 0; h < H; ++h)
        for (int64_t k = 0; k < len; ++k)
          std::memcpy(dst + (((blk * H + h) * rows_per_block) + r + k) * static_cast<int64_t>(row),
                      s + (h * src.stride(1) + (j + k) * src.stride(2)) * es, row);
    } else {
      t.select(0, blk).narrow(1, r, len).copy_(src.select(0, 0).narrow(1, j, len));
    }
    j += len;
  }
}

void PagedSequence::store_codes(int64_t layer, size_t i, const torch::Tensor& x) {
  const auto& st = pool_.storage(layer, i);
  const auto& buf = pool_.buffer(layer, i);
  auto& r = res_[static_cast<size_t>(layer)][i];
  auto q = quantize(x, st.type, st.group, st.axis, st.quant);
  const int64_t bt = pool_.block_tokens(), per_block = scale_rows(st, bt);
  const int64_t meta_at = scale_rows(st, r.quantized);
  write_rows(buf.data, q.data, r.quantized, bt);
  write_rows(buf.scale, q.scale, meta_at, per_block);
  if (q.zero.defined()) write_rows(buf.zero, q.zero, meta_at, per_block);
  r.quantized += x.size(2);
}

void PagedSequence::append(int64_t layer, size_t i, const torch::Tensor& x) {
  const auto& st = pool_.storage(layer, i);
  if (!is_quantized(st.type)) return write_rows(pool_.buffer(layer, i).data, x, tokens_, pool_.block_tokens());
  auto& r = res_[static_cast<size_t>(layer)][i];
  if (st.residual == 0) return store_codes(layer, i, x);
  // As SlotBuffer: the newest tokens wait in the residual until they fill a whole quantization block.
  r.values.narrow(2, r.n, 1).copy_(x);
  if (++r.n == st.residual) {
    store_codes(layer, i, r.values);
    r.n = 0;
  }
}

void PagedSequence::load(const KVCache& c) {
  check(tokens_ == 0, "paged cache: load() into a sequence that holds tokens");
  check(c.batch() == 1 && c.all_valid(), "paged cache: load() takes a one-row cache without padding");
  check(c.num_layers() == pool_.num_layers(), "paged cache: the cache has another number of layers");
  const int64_t bt = pool_.block_tokens();
  for (int64_t l = 0; l < c.num_layers(); ++l)
    for (size_t i = 0; i < pool_.buffers(l); ++i) {
      const auto& b = c.layer(l).at(i);
      const auto& st = pool_.storage(l, i);
      check(b.storage().type == st.type && b.storage().axis == st.axis && b.storage().residual == st.residual,
            "paged cache: the cache to load is stored otherwise than the pool");
      const auto& buf = pool_.buffer(l, i);
      if (!is_quantized(st.type)) {
        if (b.tokens() > 0) write_rows(buf.data, b.full().narrow(2, 0, b.tokens()), 0, bt);
        continue;
      }
      auto& r = res_[static_cast<size_t>(l)][i];
      const int64_t nq = b.quantized_tokens();
      if (nq > 0) {
        auto q = b.quantized_view();
        write_rows(buf.data, q.data, 0, bt);
        write_rows(buf.scale, q.scale, 0, scale_rows(st, bt));
        if (q.zero.defined()) write_rows(buf.zero, q.zero, 0, scale_rows(st, bt));
      }
      r.quantized = nq;
      r.n = b.residual_tokens();
      if (r.n > 0) r.values.narrow(2, 0, r.n).copy_(b.residual_view());
    }
  tokens_ = c.filled();
}

kernels::PagedSeq PagedSequence::view(int64_t layer) const {
  kernels::PagedSeq s;
  s.blocks = blocks_.data();
  s.tokens = tokens_ + 1;
  s.quantized = -1;
  for (size_t i = 0; i < 2 && i < pool_.buffers(layer); ++i) {
    if (!is_quantized(pool_.storage(layer, i).type)) continue;
    const auto& r = res_[static_cast<size_t>(layer)][i];
    check(s.quantized < 0 || s.quantized == r.quantized, "paged cache: the two buffers of a layer quantize at different slots");
    s.quantized = r.quantized;
    if (r.n > 0) s.residual[i] = r.values.narrow(2, 0, r.n);
  }
  if (s.quantized < 0) s.quantized = 0;
  return s;
}

int64_t PagedSequence::residual_bytes() const {
  int64_t n = 0;
  for (const auto& l : res_)
    for (const auto& r : l) n += tensor_bytes(r.values);
  return n;
}

int64_t PagedSequence::bytes() const {
  return static_cast<int64_t>(blocks_.size()) * pool_.block_bytes() + residual_bytes();
}

void PagedBatch::append(int64_t layer, size_t i, const torch::Tensor& x) const {
  for (size_t b = 0; b < seqs.size(); ++b) seqs[b]->append(layer, i, x.narrow(0, static_cast<int64_t>(b), 1));
}

std::vector<kernels::PagedSeq> PagedBatch::views(int64_t layer) const {
  std::vector<kernels::PagedSeq> v;
  for (auto* s : seqs) v.push_back(s->view(layer));
  return v;
}

torch::Tensor PagedBatch::attend(int64_t layer, const torch::Tensor& q, int64_t window, double scale) const {
  return kernels::paged_decode_attention(q, pool->buffer(layer, 0), pool->buffer(layer, 1), views(layer),
                                         pool->block_tokens(), window, scale);
}

torch::Tensor PagedBatch::attend_mla(int64_t layer, const torch::Tensor& q_lat, const torch::Tensor& q_rope,
                                     int64_t window, double scale) const {
  return kernels::paged_mla_decode_attention(q_lat, q_rope, pool->buffer(layer, 0), pool->buffer(layer, 1),
                                             views(layer), pool->block_tokens(), window, scale);
}

}  // namespace mha2mla::model
