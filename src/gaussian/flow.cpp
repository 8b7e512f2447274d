// The self-attention flow of a Gaussian: m' = L m + c, P' = L P with
// Sigma = P Sigma_0 P^T (docs/theory.md#gaussian), integrated by the adaptive
// Dormand–Prince 5(4) pair (Hairer, Norsett, Wanner, "Solving ODEs I", II.4–II.5)
// with the RMS error norm, atol = rtol = tolerance.
#include <algorithm>
#include <array>
#include <cmath>
#include <string>

#include "common/dormand_prince.hpp"
#include "gaussian/internal.hpp"
#include "measattn/error.hpp"
#include "measattn/gaussian.hpp"

namespace measattn {

void GaussianFlowOptions::validate() const {
  if (!(time >= 0) || !std::isfinite(time)) throw invalid_argument("time: must be finite and >= 0");
  if (!(tolerance > 0) || !std::isfinite(tolerance)) {
    throw invalid_argument("tolerance: must be finite and > 0");
  }
  if (tolerance < 1e-14) {
    throw invalid_argument(
        "tolerance: must be >= 1e-14 (smaller tolerances are below double's "
        "rounding of the step error estimate)");
  }
  if (max_steps < 1) throw invalid_argument("max_steps: must be >= 1");
}

namespace {

// State y = [m; P (column-major)], size d + d^2.
struct GaussianRhs {
  const Model<double>& model;
  const Eigen::MatrixXd& sigma0;
  Normalization normalization;
  Index d;

  Eigen::MatrixXd cov(const Eigen::VectorXd& y) const {
    const Eigen::Map<const Eigen::MatrixXd> p(y.data() + d, d, d);
    Eigen::MatrixXd s = p * sigma0 * p.transpose();
    return (s + s.transpose()) / 2;
  }

  Eigen::VectorXd operator()(const Eigen::VectorXd& y) const {
    const Eigen::VectorXd m = y.head(d);
    const Eigen::Map<const Eigen::MatrixXd> p(y.data() + d, d, d);
    const detail::Affine a = detail::affine_field(model, m, cov(y), normalization);
    Eigen::VectorXd out(d + d * d);
    out.head(d) = a.linear * m + a.offset;
    Eigen::Map<Eigen::MatrixXd>(out.data() + d, d, d) = a.linear * p;
    return out;
  }
};

}  // namespace

template <class Scalar>
GaussianFlowResult<Scalar> gaussian_flow(const Model<Scalar>& model,
                                         const GaussianMeasure<Scalar>& g,
                                         const GaussianFlowOptions& options) {
  options.validate();
  const Model<double> md = model.template cast<double>();
  const Index d = g.dim();
  detail::check_gaussian_model(md, d, "mean");
  if (md.out_dim() != d) {
    throw invalid_argument("w_o: the model's output dimension " + std::to_string(md.out_dim()) +
                           " differs from the dimension " + std::to_string(d) +
                           " (a flow needs d_out = d)");
  }
  const Eigen::MatrixXd sigma0 = g.cov().template cast<double>();
  const GaussianRhs rhs{md, sigma0, options.normalization, d};

  Eigen::VectorXd y(d + d * d);
  y.head(d) = g.mean().template cast<double>();
  Eigen::Map<Eigen::MatrixXd>(y.data() + d, d, d).setIdentity();

  GaussianFlowResult<Scalar> r{g, 0, 0, 0, 0, 0, Status::completed, std::string()};
  const double T = options.time;
  double t = 0;
  if (T == 0) {
    r.message = "time 0: the start";
    return r;
  }
  using namespace detail::dormand_prince;  // the tableau (common/dormand_prince.hpp)
  const double tol = options.tolerance;

  Eigen::VectorXd k1 = rhs(y);
  r.evaluations = 1;
  auto status_message = [&](Status s, const std::string& text) {
    r.status = s;
    r.message = text;
  };
  if (!k1.allFinite()) {
    status_message(Status::non_finite, "the field is not finite at the start");
    return r;
  }
  double h = std::min(
      T, 0.01 * (1 + y.cwiseAbs().maxCoeff()) / std::max(k1.cwiseAbs().maxCoeff(), 1e-300));
  h = std::max(h, 1e-6 * T);
  Index attempts = 0;
  while (t < T) {
    if (attempts >= options.max_steps) {
      status_message(Status::iteration_limit,
                     "max_steps (" + std::to_string(options.max_steps) + ") attempted steps");
      break;
    }
    if (h < 1e-14 * T) {
      status_message(
          Status::step_size_underflow,
          "the step fell below 1e-14 T at t = " + std::to_string(t) + " (the covariance blows up)");
      break;
    }
    const bool last = t + h >= T;
    const double step = last ? T - t : h;
    ++attempts;
    const Eigen::VectorXd k2 = rhs(y + step * (a21 * k1));
    const Eigen::VectorXd k3 = rhs(y + step * (a31 * k1 + a32 * k2));
    const Eigen::VectorXd k4 = rhs(y + step * (a41 * k1 + a42 * k2 + a43 * k3));
    const Eigen::VectorXd k5 = rhs(y + step * (a51 * k1 + a52 * k2 + a53 * k3 + a54 * k4));
    const Eigen::VectorXd k6 =
        rhs(y + step * (a61 * k1 + a62 * k2 + a63 * k3 + a64 * k4 + a65 * k5));
    const Eigen::VectorXd ynew = y + step * (a71 * k1 + a73 * k3 + a74 * k4 + a75 * k5 + a76 * k6);
    const Eigen::VectorXd k7 = rhs(ynew);
    r.evaluations += 6;
    const Eigen::VectorXd err = step * (e1 * k1 + e3 * k3 + e4 * k4 + e5 * k5 + e6 * k6 + e7 * k7);
    double norm = 0;
    bool finite = ynew.allFinite() && k7.allFinite() && err.allFinite();
    if (finite) {
      for (Index i = 0; i < y.size(); ++i) {
        const double sc = tol + tol * std::max(std::abs(y[i]), std::abs(ynew[i]));
        norm += (err[i] / sc) * (err[i] / sc);
      }
      norm = std::sqrt(norm / static_cast<double>(y.size()));
    }
    if (!finite || !std::isfinite(norm)) {
      ++r.rejected;
      h = step / 4;
      continue;
    }
    if (norm <= 1) {
      t = last ? T : t + step;
      y = ynew;
      k1 = k7;
      ++r.steps;
      r.error_estimate += err.cwiseAbs().maxCoeff();
    } else {
      ++r.rejected;
    }
    const double factor = norm == 0 ? 5.0 : std::clamp(0.9 * std::pow(norm, -0.2), 0.2, 5.0);
    h = step * (norm <= 1 ? factor : std::min(factor, 1.0));
  }
  r.time = t;
  const Eigen::MatrixXd s = rhs.cov(y);
  if (!y.allFinite() || !s.allFinite()) {
    status_message(Status::non_finite, "the state left the floating-point range");
    return r;
  }
  r.measure = GaussianMeasure<Scalar>(y.head(d).cast<Scalar>(), Matrix<Scalar>(s.cast<Scalar>()));
  if (r.status == Status::completed) {
    r.message = std::to_string(r.steps) + " steps, " + std::to_string(r.rejected) + " rejected";
  }
  return r;
}

template GaussianFlowResult<float> gaussian_flow(const Model<float>&, const GaussianMeasure<float>&,
                                                 const GaussianFlowOptions&);
template GaussianFlowResult<double> gaussian_flow(const Model<double>&,
                                                  const GaussianMeasure<double>&,
                                                  const GaussianFlowOptions&);

}  // namespace measattn
