#include "convert/lowrank.h"

#include "util/error.h"

namespace mha2mla::convert {

SvdAlgo parse_svd_algo(const std::string& s) {
  if (s == "exact") return SvdAlgo::Exact;
  if (s == "randomized") return SvdAlgo::Randomized;
  if (s == "auto") return SvdAlgo::Auto;
  fail("unknown SVD algorithm \"" + s + "\" (exact, randomized, auto)");
}

namespace {

LowRank exact_svd(const torch::Tensor& m, int64_t k) {
  auto [u, s, vh] = torch::linalg::svd(m, /*full_matrices=*/false, c10::nullopt);
  LowRank r;
  r.sigma = s;
  r.up = u.narrow(1, 0, k) * s.narrow(0, 0, k).unsqueeze(0);
  r.down = vh.narrow(0, 0, k);
  return r;
}

// Orthonormal basis of y's columns. CholeskyQR2 does the work as two GEMMs and small factorisations,
// several times faster than Householder QR on tall matrices; it falls back to QR if y is ill-conditioned.
torch::Tensor orthonormal(const torch::Tensor& y) {
  auto q = y;
  for (int pass = 0; pass < 2; ++pass) {
    auto g = torch::matmul(q.t(), q).to(torch::kFloat64);
    auto [l, info] = torch::linalg_cholesky_ex(g, /*upper=*/false, /*check_errors=*/false);
    if (info.item<int64_t>() != 0) return std::get<0>(torch::linalg::qr(y, "reduced"));
    // q = q L⁻ᵀ, solved as L qᵀ = ... on the small side.
    auto qt = torch::linalg::solve_triangular(l, q.t().to(torch::kFloat64), /*upper=*/false, /*left=*/true,
                                              /*unitriangular=*/false);
    q = qt.t().to(y.scalar_type()).contiguous();
  }
  return q;
}

LowRank randomized_svd(const torch::Tensor& m, int64_t k, uint64_t seed) {
  const int64_t n = m.size(1);
  const int64_t p = std::min<int64_t>(std::max<int64_t>(k / 4, 16), std::min(m.size(0), n) - k);
  const int64_t l = k + std::max<int64_t>(p, 0);
  auto gen = at::detail::createCPUGenerator(seed);
  auto omega = at::normal(0.0, 1.0, {n, l}, gen, m.options()).to(m.device());
  auto q = orthonormal(torch::matmul(m, omega));
  // Power iterations sharpen the spectrum so the sketch captures the top-k subspace of slowly decaying spectra.
  for (int it = 0; it < 2; ++it) {
    auto z = orthonormal(torch::matmul(m.t(), q));
    q = orthonormal(torch::matmul(m, z));
  }
  auto b = torch::matmul(q.t(), m);  // [l, n]
  auto [ub, s, vh] = torch::linalg::svd(b, false, c10::nullopt);
  LowRank r;
  r.sigma = s;
  auto u = torch::matmul(q, ub.narrow(1, 0, k));
  r.up = u * s.narrow(0, 0, k).unsqueeze(0);
  r.down = vh.narrow(0, 0, k);
  return r;
}

}  // namespace

LowRank truncated_svd(const torch::Tensor& m_in, int64_t k, SvdAlgo algo, uint64_t seed) {
  const int64_t rows = m_in.size(0), cols = m_in.size(1);
  const int64_t full = std::min(rows, cols);
  check(k >= 0 && k <= full, "rank " + std::to_string(k) + " exceeds the matrix rank bound " + std::to_string(full));
  const bool small = rows * cols <= 1 << 20;
  auto m = m_in.to(small ? torch::kFloat64 : torch::kFloat32);
  if (rows == 0 || cols == 0 || k == 0) {
    LowRank r;
    r.up = torch::zeros({rows, k}, m.options());
    r.down = torch::zeros({k, cols}, m.options());
    r.sigma = torch::zeros({0}, m.options());
    if (rows && cols) r.sigma = torch::linalg::svdvals(m, c10::nullopt);
    return r;
  }
  if (algo == SvdAlgo::Auto) algo = (full >= 1024 && k * 4 <= full) ? SvdAlgo::Randomized : SvdAlgo::Exact;
  LowRank r = algo == SvdAlgo::Randomized ? randomized_svd(m, k, seed) : exact_svd(m, k);
  r.up = r.up.to(torch::kFloat32);
  r.down = r.down.to(torch::kFloat32);
  r.sigma = r.sigma.to(torch::kFloat32);
  return r;
}

LowRank activation_svd(const torch::Tensor& m, const torch::Tensor& cov, int64_t k, SvdAlgo algo) {
  const int64_t n = m.size(1);
  check(cov.dim() == 2 && cov.size(0) == n && cov.size(1) == n, "activation covariance has the wrong shape");
  auto c = cov.to(torch::kFloat64);
  // Damping keeps the Cholesky factor well conditioned when some input directions are never excited.
  const double damp = 1e-5 * c.diagonal().mean().item<double>() + 1e-12;
  auto s = torch::linalg::cholesky(c + damp * torch::eye(n, c.options()));  // lower, C = S Sᵀ
  auto a = torch::matmul(m.to(torch::kFloat64), s);
  LowRank r = truncated_svd(a, k, algo);
  // down = V_kᵀ S⁻¹, solved as Sᵀ downᵀ = V_k.
  auto down_t = torch::linalg::solve_triangular(s.t(), r.down.to(torch::kFloat64).t(), /*upper=*/true, /*left=*/true,
                                                /*unitriangular=*/false);
  r.down = down_t.t().contiguous().to(torch::kFloat32);
  return r;
}

double relative_error(const torch::Tensor& m, const torch::Tensor& approx) {
  // fp64 for small matrices (exactness tests); fp32 is plenty, and much cheaper, for large ones.
  auto type = m.numel() <= (1 << 20) ? torch::kFloat64 : torch::kFloat32;
  auto md = m.to(type);
  double den = md.norm().item<double>();
  if (den == 0.0) return 0.0;
  return (md - approx.to(type)).norm().item<double>() / den;
}

namespace {
// fp64 where it is cheap (exactness tests); the sums below accumulate in fp64 either way.
torch::ScalarType error_type(const torch::Tensor& m) { return m.numel() <= (1 << 20) ? torch::kFloat64 : torch::kFloat32; }

double ratio(double num, double den) { return den <= 0.0 ? 0.0 : std::sqrt(std::max(num, 0.0) / den); }
}  // namespace

double relative_error_on(const torch::Tensor& m, const torch::Tensor& approx, const torch::Tensor& cov) {
  const auto type = error_type(m);
  auto md = m.to(type);
  auto c = cov.to(type);
  auto e = md - approx.to(type);
  const double den = (torch::matmul(md, c) * md).sum(torch::kFloat64).item<double>();
  if (den <= 0.0) return 0.0;
  return ratio((torch::matmul(e, c) * e).sum(torch::kFloat64).item<double>(), den);
}

torch::Tensor times_cov(const torch::Tensor& m, const torch::Tensor& cov) {
  const auto type = error_type(m);
  return torch::matmul(m.to(type), cov.to(type));
}

std::pair<double, double> relative_errors_on(const torch::Tensor& m, const torch::Tensor& mc, const LowRank& f,
                                             int64_t split, const torch::Tensor& cov) {
  const auto type = mc.scalar_type();
  auto md = m.to(type), up = f.up.to(type), down = f.down.to(type);
  auto e = md - torch::matmul(up, down);                                      // [rows, n]
  auto ec = mc - torch::matmul(up, torch::matmul(down, cov.to(type)));        // E·C
  auto den = (mc * md).sum(1, false, torch::kFloat64);                         // per row
  auto num = (ec * e).sum(1, false, torch::kFloat64);
  const int64_t rows = m.size(0);
  auto part = [&](int64_t a, int64_t b) {
    if (b <= a) return 0.0;
    return ratio(num.narrow(0, a, b - a).sum().item<double>(), den.narrow(0, a, b - a).sum().item<double>());
  };
  return {part(0, split), part(split, rows)};
}

std::pair<double, double> relative_errors_on_rows(const torch::Tensor& m, const LowRank& f, int64_t split,
                                                  const torch::Tensor& x) {
  const auto type = error_type(m);
  auto xt = x.to(type).t();                                                          // [n, N]
  auto mx = torch::matmul(m.to(type), xt);                                           // M·Xᵀ [rows, N]
  auto ex = mx - torch::matmul(f.up.to(type), torch::matmul(f.down.to(type), xt));  // E·Xᵀ
  auto den = mx.pow(2).sum(1, false, torch::kFloat64);
  auto num = ex.pow(2).sum(1, false, torch::kFloat64);
  const int64_t rows = m.size(0);
  auto part = [&](int64_t a, int64_t b) {
    if (b <= a) return 0.0;
    return ratio(num.narrow(0, a, b - a).sum().item<double>(), den.narrow(0, a, b - a).sum().item<double>());
  };
  return {part(0, split), part(split, rows)};
}

double relative_error_on_rows(const torch::Tensor& m, const torch::Tensor& approx, const torch::Tensor& x) {
  const auto type = error_type(m);
  auto xt = x.to(type).t();
  auto mx = torch::matmul(m.to(type), xt);
  auto ex = mx - torch::matmul(approx.to(type), xt);
  return ratio(ex.pow(2).sum(torch::kFloat64).item<double>(), mx.pow(2).sum(torch::kFloat64).item<double>());
}

}  // namespace mha2mla::convert
