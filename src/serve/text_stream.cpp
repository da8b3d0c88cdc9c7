#include "serve/text_stream.h"

#include <algorithm>

#include "util/text.h"

namespace mha2mla::serve {

TextStream::TextStream(const tok::Tokenizer& tok, std::vector<std::string> stop, std::vector<int64_t> skip)
    : tok_(tok), stop_(std::move(stop)), skip_(std::move(skip)) {
  stop_.erase(std::remove(stop_.begin(), stop_.end(), std::string()), stop_.end());
}

std::string TextStream::emit_up_to(const std::string& full, size_t end) {
  if (end <= sent_.size()) return "";
  std::string delta = full.substr(sent_.size(), end - sent_.size());
  sent_ += delta;
  return delta;
}

std::string TextStream::push(int64_t id) {
  if (stopped_ || std::find(skip_.begin(), skip_.end(), id) != skip_.end()) return "";
  ids_.push_back(static_cast<int32_t>(id));
  const std::string full = tok_.decode(ids_, /*skip_special_tokens=*/true);
  // Text already sent stays as sent; a decoder that rewrites its past (none of ours does) is followed at the end.
  if (full.compare(0, sent_.size(), sent_) != 0) return "";
  // The earliest stop string that the new text completes (it may start in text held back before).
  size_t longest = 0;
  for (const auto& s : stop_) longest = std::max(longest, s.size());
  const size_t from = sent_.size() > longest ? sent_.size() - longest : 0;
  size_t hit = std::string::npos;
  for (const auto& s : stop_) hit = std::min(hit, full.find(s, from));
  if (hit != std::string::npos) {
    stopped_ = true;
    return emit_up_to(full, hit);
  }
  // Hold back an incomplete character, and any tail that is the start of a stop string.
  size_t end = stable_utf8_prefix(full);
  size_t hold = 0;
  for (const auto& s : stop_)
    for (size_t k = std::min(s.size() - 1, end); k > hold; --k)
      if (full.compare(end - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
  return emit_up_to(full, end - hold);
}

std::string TextStream::finish() {
  if (stopped_) return "";
  const std::string full = tok_.decode(ids_, true);
  if (full.compare(0, sent_.size(), sent_) != 0) return "";
  return emit_up_to(full, full.size());
}

}  // namespace mha2mla::serve
