#include "model/runtime_options.h"

#include "util/error.h"

namespace mha2mla::model {

CacheType parse_cache_type(const std::string& s) {
  if (const auto* f = kernels::find_cache_format(s)) return f->type;
  fail("unknown cache type \"" + s + "\" (use " + kernels::cache_format_names() + ")");
}

std::string cache_type_name(CacheType t) { return kernels::cache_format(t).name; }

QuantAxis parse_quant_axis(const std::string& s) {
  if (s == "token") return QuantAxis::Token;
  if (s == "channel") return QuantAxis::Channel;
  fail("unknown quantization axis \"" + s + "\" (use token or channel)");
}

std::string quant_axis_name(QuantAxis a) { return a == QuantAxis::Token ? "token" : "channel"; }

QuantMethod parse_quant_method(const std::string& s) {
  if (s == "minmax") return QuantMethod::MinMax;
  if (s == "hqq") return QuantMethod::Hqq;
  fail("unknown cache quantizer \"" + s + "\" (use minmax or hqq)");
}

std::string quant_method_name(QuantMethod m) { return m == QuantMethod::MinMax ? "minmax" : "hqq"; }

AttnMode parse_attn_mode(const std::string& s) {
  if (s == "auto") return AttnMode::Auto;
  if (s == "absorbed") return AttnMode::Absorbed;
  if (s == "materialize") return AttnMode::Materialize;
  fail("unknown attention implementation \"" + s + "\" (use auto, absorbed or materialize)");
}

std::string attn_mode_name(AttnMode a) {
  return a == AttnMode::Auto ? "auto" : a == AttnMode::Absorbed ? "absorbed" : "materialize";
}

torch::Device parse_device(const std::string& s) {
  if (s == "cpu") return torch::kCPU;
  if (s == "cuda" || s.rfind("cuda:", 0) == 0) {
    check(torch::cuda::is_available(), "device \"" + s + "\" asked for, but this build or machine has no CUDA device");
    int64_t index = 0;
    if (s.size() > 5) {
      try {
        size_t pos = 0;
        index = std::stoll(s.substr(5), &pos);
        check(pos == s.size() - 5, "");
      } catch (...) {
        fail("bad device \"" + s + "\" (use cpu, cuda or cuda:N)");
      }
    }
    const int64_t n = static_cast<int64_t>(torch::cuda::device_count());
    check(index >= 0 && index < n, "device \"" + s + "\" does not exist (" + std::to_string(n) + " CUDA devices)");
    return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
  fail("unknown device \"" + s + "\" (use cpu, cuda or cuda:N)");
}

torch::ScalarType parse_compute_dtype(const std::string& s) {
  if (s == "f32" || s == "fp32" || s == "float32") return torch::kFloat32;
  if (s == "bf16" || s == "bfloat16") return torch::kBFloat16;
  if (s == "f16" || s == "fp16" || s == "float16") return torch::kFloat16;
  fail("unknown dtype \"" + s + "\" (use f32, bf16 or f16)");
}

}  // namespace mha2mla::model
