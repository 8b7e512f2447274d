// Internal pieces of the gaussian module shared by its files and the tests.
#pragma once

#include <Eigen/Core>
#include <string>

#include "measattn/attention.hpp"

namespace measattn::detail {

/// Gamma(x) = linear x + offset, in double.
struct Affine {
  Eigen::MatrixXd linear;
  Eigen::VectorXd offset;
};

/// U f(Lambda) U^T for the symmetric s = U Lambda U^T.
Eigen::MatrixXd symmetric_function(const Eigen::MatrixXd& s, double (*f)(double));
/// The positive semi-definite square root (negative rounding eigenvalues -> 0).
Eigen::MatrixXd psd_sqrt(const Eigen::MatrixXd& s);

/// Validates the model for N(m, Sigma) in dimension dim (dot or l2 potential,
/// query and key dimension dim); `what` names the measure's field in messages.
void check_gaussian_model(const Model<double>& model, Index dim, const std::string& what);

/// The attention field of N(m, sigma) (no residual), checked model.
Affine affine_field(const Model<double>& model, const Eigen::VectorXd& m,
                    const Eigen::MatrixXd& sigma, Normalization normalization);

}  // namespace measattn::detail
