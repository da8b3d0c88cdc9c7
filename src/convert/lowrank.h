#pragma once
// Truncated factorisations M ≈ up · down used to initialise the latent projections.
#include <torch/torch.h>

#include <string>

namespace mha2mla::convert {

struct LowRank {
  torch::Tensor up;     // [m, k] = U_k Σ_k
  torch::Tensor down;   // [k, n] = V_kᵀ (orthonormal rows), or V_kᵀ S⁻¹ when activation-weighted
  torch::Tensor sigma;  // singular values found (descending); all of them for the exact SVD
};

enum class SvdAlgo { Exact, Randomized, Auto };
SvdAlgo parse_svd_algo(const std::string& s);

// Rank-k truncated SVD in fp32 (fp64 for small matrices). Randomized: Halko et al. with oversampling
// and power iterations, used by Auto when k is small next to the matrix.
LowRank truncated_svd(const torch::Tensor& m, int64_t k, SvdAlgo algo = SvdAlgo::Auto, uint64_t seed = 0);

// Activation-aware: minimises ||(M - M̂) S||_F where S Sᵀ = cov (+ damping), i.e. the error on inputs
// with covariance `cov` [n, n] instead of on the weights alone.
LowRank activation_svd(const torch::Tensor& m, const torch::Tensor& cov, int64_t k, SvdAlgo algo = SvdAlgo::Auto);

// ||A||_F-relative error of an approximation: ||M - M̂||_F / ||M||_F (0 for an empty M).
double relative_error(const torch::Tensor& m, const torch::Tensor& approx);

// The same, measured on inputs with covariance `cov`: sqrt(tr(E C Eᵀ) / tr(M C Mᵀ)).
double relative_error_on(const torch::Tensor& m, const torch::Tensor& approx, const torch::Tensor& cov);

// relative_error_on for the row blocks [0, split) and [split, rows) of M ≈ f.up · f.down, given mc = M·C: the
// approximation's product is f.up · (f.down · C), so the [n, n] covariance multiplies a full-height matrix
// only once however many factorisations are measured (a 7B layer: ~10× less work than forming each E·C).
std::pair<double, double> relative_errors_on(const torch::Tensor& m, const torch::Tensor& mc, const LowRank& f,
                                             int64_t split, const torch::Tensor& cov);
// M·C in the dtype relative_errors_on computes in (fp64 for small matrices, fp32 for large ones).
torch::Tensor times_cov(const torch::Tensor& m, const torch::Tensor& cov);

// The same two errors when the covariance is given by its inputs X [N, n] (C = XᵀX / N, as a calibration
// file stores it when it saw fewer than n tokens): tr(E C Eᵀ) = ‖E Xᵀ‖² / N, so the work is [rows, N]
// products instead of [rows, n] ones against an [n, n] matrix.
std::pair<double, double> relative_errors_on_rows(const torch::Tensor& m, const LowRank& f, int64_t split,
                                                  const torch::Tensor& x);
double relative_error_on_rows(const torch::Tensor& m, const torch::Tensor& approx, const torch::Tensor& x);

}  // namespace mha2mla::convert
