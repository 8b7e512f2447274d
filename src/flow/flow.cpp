// Integrators of the particle flow dx_i/dt = f_i(X) (docs/theory.md#flow): Euler,
// Heun, classical RK4 and adaptive Dormand–Prince 5(4); frames, checkpoints and
// bit-identical resume.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <string>
#include <type_traits>

#include "common/collectives.hpp"
#include "common/dormand_prince.hpp"
#include "flow/checkpoint.hpp"
#include "flow/internal.hpp"
#include "measattn/error.hpp"
#include "measattn/io.hpp"
#include "measattn/progress.hpp"

namespace measattn {

std::string to_string(FlowScheme s) {
  switch (s) {
    case FlowScheme::euler:
      return "euler";
    case FlowScheme::heun:
      return "heun";
    case FlowScheme::rk4:
      return "rk4";
    case FlowScheme::dopri5:
      return "dopri5";
  }
  return "unknown";
}

std::string to_string(FlowField f) {
  return f == FlowField::attention ? "attention" : "unnormalized";
}

FlowScheme parse_flow_scheme(const std::string& name, const std::string& field) {
  if (name == "euler") return FlowScheme::euler;
  if (name == "heun") return FlowScheme::heun;
  if (name == "rk4") return FlowScheme::rk4;
  if (name == "dopri5") return FlowScheme::dopri5;
  throw invalid_argument(field + ": unknown scheme '" + name +
                         "' (expected euler, heun, rk4 or dopri5)");
}

void FlowOptions::validate() const {
  if (!(time > 0) || !std::isfinite(time)) throw invalid_argument("time: must be finite and > 0");
  if (steps < 1) throw invalid_argument("steps: must be >= 1");
  if (!(tolerance > 0) || !std::isfinite(tolerance)) {
    throw invalid_argument("tolerance: must be finite and > 0");
  }
  // Below ~45 ulps the error estimate of a step is rounding noise: the controller
  // would shrink the step until max_steps instead of ever meeting the tolerance.
  if (scheme == FlowScheme::dopri5 && tolerance < 1e-14) {
    throw invalid_argument(
        "tolerance: must be >= 1e-14 for dopri5 (smaller tolerances are below double's "
        "rounding of the step error estimate and cannot be met)");
  }
  if (max_steps < 1) throw invalid_argument("max_steps: must be >= 1");
  if (!(initial_step >= 0) || !std::isfinite(initial_step)) {
    throw invalid_argument("initial_step: must be finite and >= 0");
  }
  if (save_every < 0) throw invalid_argument("save_every: must be >= 0");
  if (!(cluster_tolerance >= 0) || !std::isfinite(cluster_tolerance)) {
    throw invalid_argument("cluster_tolerance: must be finite and >= 0");
  }
  if (checkpoint_every < 0) throw invalid_argument("checkpoint_every: must be >= 0");
  if ((checkpoint_every > 0 || resume) && checkpoint_path.empty()) {
    throw invalid_argument("checkpoint_path: needed for checkpoints and resume");
  }
  if (attention.residual) {
    throw invalid_argument("attention: residual is implied by the flow (x + h Gamma(x))");
  }
  if (attention.query_block < 0 || attention.key_block < 0) {
    throw invalid_argument("attention: block sizes must be >= 0");
  }
  if (norm != NormPlacement::none && norm != NormPlacement::post && norm != NormPlacement::pre) {
    throw invalid_argument("norm: expected none, post or pre");
  }
  if (sphere && norm == NormPlacement::pre) {
    throw invalid_argument("norm: pre contradicts sphere (sphere is norm post)");
  }
  if (attention.sinkhorn_iterations < 0) {
    throw invalid_argument("sinkhorn_iterations: must be >= 0");
  }
  if (attention.normalization != Normalization::softmax &&
      attention.normalization != Normalization::sinkhorn) {
    throw invalid_argument("normalization: expected softmax or sinkhorn");
  }
  if (attention.normalization == Normalization::sinkhorn) {
    if (attention.causal) {
      throw invalid_argument("normalization: sinkhorn attention does not support causal masking");
    }
    if (attention.communicator.distributed()) {
      throw invalid_argument(
          "normalization: a sinkhorn flow is not distributed (every iteration needs every "
          "token's column sums on every rank): run it on one process");
    }
  }
  if (field == FlowField::unnormalized) {
    if (placement() != NormPlacement::post) {
      throw invalid_argument(
          "field: the unnormalized field is defined on the sphere (set sphere or norm post)");
    }
    if (attention.causal || attention.normalization != Normalization::softmax) {
      throw invalid_argument(
          "field: the unnormalized field has no causal mask and no sinkhorn normalization");
    }
  }
}

namespace {

// ---- fingerprint (FNV-1a, 64 bit) ---------------------------------------------
struct Fnv {
  std::uint64_t h = 1469598103934665603ull;
  void bytes(const void* p, size_t n) {
    const auto* c = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n; ++i) {
      h ^= c[i];
      h *= 1099511628211ull;
    }
  }
  template <class T>
  void value(const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    bytes(&v, sizeof(T));
  }
  template <class Derived>
  void matrix(const Eigen::DenseBase<Derived>& m) {
    value(static_cast<std::int64_t>(m.rows()));
    value(static_cast<std::int64_t>(m.cols()));
    for (Index i = 0; i < m.rows(); ++i)
      for (Index j = 0; j < m.cols(); ++j) value(m(i, j));
  }
};

// The complete integrator state: everything the next step depends on, which is
// what a checkpoint holds (checkpoint.hpp); the frames live in the result.
template <class Scalar>
using State = detail::CheckpointState<Scalar>;

// Dormand–Prince 5(4) coefficients (common/dormand_prince.hpp).
using namespace detail::dormand_prince;

template <class Scalar>
class Integrator {
 public:
  Integrator(const Model<Scalar>& model, const Vector<Scalar>& weights, const FlowOptions& options,
             std::uint64_t fingerprint, double beta, bool canonical)
      : model_(model),
        w_(weights),
        keys_(detail::key_weights(weights)),
        o_(options),
        fingerprint_(fingerprint),
        beta_(beta),
        canonical_(canonical),
        sphere_(options.placement() == NormPlacement::post) {
    s_.fingerprint = fingerprint;
  }

  // The field at y, into a work matrix of the integrator: the same arrays
  // every step (fresh ones cost a page fault per 4 KiB each step: 15 % of an
  // Euler step at n = 1000, d = 64). The inputs were checked once (flow) and
  // the weights prepared once (keys_): nothing is validated per stage.
  void f(const Matrix<Scalar>& y, Matrix<Scalar>& out) {
    ++s_.evaluations;
    detail::evaluate_flow_field<Scalar>(model_, keys_, y, o_, beta_, out);
  }

  void record_frame() {
    r_.frames.push_back(s_.y);
    r_.frame_times.push_back(s_.time);
    r_.frame_steps.push_back(s_.step);
    if (canonical_) r_.energies.push_back(sphere_energy<Scalar>(s_.y, w_, beta_));
    if (o_.cluster_tolerance > 0) {
      r_.cluster_counts.push_back(
          cluster_count(Matrix<double>(s_.y.template cast<double>()), o_.cluster_tolerance));
    }
  }

  // After an accepted step: frames, checkpoint, progress, stop request.
  bool after_step(Progress& progress) {
    if (o_.save_every > 0 && s_.step % o_.save_every == 0) record_frame();
    if (o_.checkpoint_every > 0 && s_.step % o_.checkpoint_every == 0) {
      // Several ranks hold the same state: rank 0 writes, and every rank
      // learns whether the write failed (no rank waits for one that threw).
      const Communicator& comm = o_.attention.communicator;
      std::exception_ptr error;
      try {
        if (comm.rank() == 0) detail::write_checkpoint(o_.checkpoint_path, s_, r_);
      } catch (...) {
        error = std::current_exception();
      }
      detail::agree(comm, error);
    }
    if (o_.scheme == FlowScheme::dopri5) {
      progress.update(static_cast<std::int64_t>(1000 * s_.time / o_.time),
                      "t=" + std::to_string(s_.time) + " steps=" + std::to_string(s_.step));
    } else {
      progress.update(s_.step);
    }
    if (o_.should_stop && o_.should_stop(s_.step, s_.time)) {
      r_.status = Status::interrupted;
      r_.message = "stopped on request after step " + std::to_string(s_.step);
      return false;
    }
    return true;
  }

  bool finite_or_stop(Matrix<Scalar>& y) {
    if (sphere_ && !detail::normalize_rows(y, nullptr)) {
      r_.status = Status::non_finite;
    } else if (!y.allFinite()) {
      r_.status = Status::non_finite;
    }
    if (r_.status == Status::non_finite) {
      r_.message = "the particles left the floating-point range at step " +
                   std::to_string(s_.step + 1) + " (state kept at step " + std::to_string(s_.step) +
                   ")";
      return false;
    }
    return true;
  }

  void run_fixed(Progress& progress) {
    const Index L = o_.steps;
    const double T = o_.time;
    const Scalar h = static_cast<Scalar>(T / static_cast<double>(L));
    const Scalar half = h / 2, sixth = h / 6;
    Matrix<Scalar>& k1 = k_[0];
    Matrix<Scalar>& k2 = k_[1];
    Matrix<Scalar>& k3 = k_[2];
    Matrix<Scalar>& k4 = k_[3];
    Matrix<Scalar>& next = next_;
    while (s_.step < L) {
      const Matrix<Scalar>& y = s_.y;
      switch (o_.scheme) {
        case FlowScheme::euler:
          f(y, k1);
          next.noalias() = y + h * k1;
          break;
        case FlowScheme::heun:
          f(y, k1);
          stage_.noalias() = y + h * k1;
          f(stage_, k2);
          next.noalias() = y + half * (k1 + k2);
          break;
        case FlowScheme::rk4:
          f(y, k1);
          stage_.noalias() = y + half * k1;
          f(stage_, k2);
          stage_.noalias() = y + half * k2;
          f(stage_, k3);
          stage_.noalias() = y + h * k3;
          f(stage_, k4);
          next.noalias() = y + sixth * (k1 + Scalar(2) * k2 + Scalar(2) * k3 + k4);
          break;
        case FlowScheme::dopri5:
          break;
      }
      if (!finite_or_stop(next)) return;
      s_.y.swap(next);
      ++s_.step;
      // Time from the step index, never accumulated: identical after a resume.
      s_.time = s_.step == L ? T : static_cast<double>(s_.step) * (T / static_cast<double>(L));
      if (!after_step(progress)) return;
    }
  }

  // RMS norm of v / (tol + tol * max(|a|, |b|)) (Hairer's dopri5 error norm).
  double scaled_rms(const Matrix<Scalar>& v, const Matrix<Scalar>& a, const Matrix<Scalar>& b) {
    const double tol = o_.tolerance;
    double sum = 0;
    const Index size = v.size();
    const Scalar* pv = v.data();
    const Scalar* pa = a.data();
    const Scalar* pb = b.data();
    for (Index i = 0; i < size; ++i) {
      const double sk = tol + tol * std::max(std::abs(double(pa[i])), std::abs(double(pb[i])));
      const double q = double(pv[i]) / sk;
      sum += q * q;
    }
    return std::sqrt(sum / static_cast<double>(size));
  }

  double initial_step(const Matrix<Scalar>& f0) {
    if (o_.initial_step > 0) return std::min(o_.initial_step, o_.time);
    const double dny = scaled_rms(s_.y, s_.y, s_.y);
    const double dnf = scaled_rms(f0, s_.y, s_.y);
    double h = (dnf <= 1e-5 || dny <= 1e-5) ? 1e-6 : 0.01 * dny / dnf;
    h = std::min(h, o_.time);
    const Matrix<Scalar> y1 = s_.y + static_cast<Scalar>(h) * f0;
    Matrix<Scalar> f1;
    f(y1, f1);
    const double der2 = scaled_rms(Matrix<Scalar>(f1 - f0), s_.y, s_.y) / h;
    const double der12 = std::max(der2, dnf);
    const double h1 = der12 <= 1e-15 ? std::max(1e-6, h * 1e-3) : std::pow(0.01 / der12, 1.0 / 5);
    return std::min({100 * h, h1, o_.time});
  }

  void run_dopri5(Progress& progress) {
    const double T = o_.time;
    constexpr double safe = 0.9, beta_pi = 0.04, expo1 = 0.2 - beta_pi * 0.75;
    constexpr double facc1 = 1.0 / 0.2, facc2 = 1.0 / 10.0;
    if (s_.fsal.size() == 0) f(s_.y, s_.fsal);
    if (s_.h == 0) s_.h = initial_step(s_.fsal);
    while (s_.time < T) {
      if (s_.attempts >= o_.max_steps) {
        r_.status = Status::iteration_limit;
        r_.message = "stopped after " + std::to_string(s_.attempts) +
                     " attempted steps at t = " + std::to_string(s_.time);
        return;
      }
      if (s_.h < 1e-14 * T) {
        r_.status = Status::step_size_underflow;
        r_.message = "step size underflow at t = " + std::to_string(s_.time);
        return;
      }
      bool last = false;
      double h = s_.h;
      if (s_.time + 1.01 * h >= T) {
        h = T - s_.time;
        last = true;
      }
      ++s_.attempts;
      auto c = [&](double a) { return static_cast<Scalar>(a * h); };
      const Matrix<Scalar>& y = s_.y;
      const Matrix<Scalar>& k1 = s_.fsal;
      Matrix<Scalar>& k2 = k_[0];
      Matrix<Scalar>& k3 = k_[1];
      Matrix<Scalar>& k4 = k_[2];
      Matrix<Scalar>& k5 = k_[3];
      Matrix<Scalar>& k6 = k_[4];
      Matrix<Scalar>& k7 = k_[5];
      Matrix<Scalar>& err_vec = k_[6];
      Matrix<Scalar>& y5 = next_;
      stage_.noalias() = y + c(a21) * k1;
      f(stage_, k2);
      stage_.noalias() = y + c(a31) * k1 + c(a32) * k2;
      f(stage_, k3);
      stage_.noalias() = y + c(a41) * k1 + c(a42) * k2 + c(a43) * k3;
      f(stage_, k4);
      stage_.noalias() = y + c(a51) * k1 + c(a52) * k2 + c(a53) * k3 + c(a54) * k4;
      f(stage_, k5);
      stage_.noalias() = y + c(a61) * k1 + c(a62) * k2 + c(a63) * k3 + c(a64) * k4 + c(a65) * k5;
      f(stage_, k6);
      y5.noalias() = y + c(a71) * k1 + c(a73) * k3 + c(a74) * k4 + c(a75) * k5 + c(a76) * k6;
      f(y5, k7);
      err_vec.noalias() =
          c(e1) * k1 + c(e3) * k3 + c(e4) * k4 + c(e5) * k5 + c(e6) * k6 + c(e7) * k7;
      double err = scaled_rms(err_vec, y, y5);
      if (!std::isfinite(err)) err = 1e10;
      const double fac11 = std::pow(err, expo1);
      double fac = fac11 / std::pow(s_.err_old, beta_pi);
      fac = std::max(facc2, std::min(facc1, fac / safe));
      double h_new = h / fac;
      if (err <= 1) {
        if (!finite_or_stop(y5)) return;
        s_.err_old = std::max(err, 1e-4);
        s_.y.swap(y5);
        ++s_.step;
        s_.time = last ? T : s_.time + h;
        if (sphere_) {
          f(s_.y, s_.fsal);  // the renormalized point has its own derivative
        } else {
          s_.fsal.swap(k7);
        }
        if (s_.last_rejected) h_new = std::min(h_new, h);
        s_.last_rejected = false;
        s_.h = h_new;
        if (!after_step(progress)) return;
      } else {
        s_.h = h / std::min(facc1, fac11 / safe);
        s_.last_rejected = true;
        ++s_.rejected;
      }
    }
  }

  FlowResult<Scalar> run(Matrix<Scalar> start) {
    r_.weights = w_;
    if (o_.resume) {
      detail::read_checkpoint(o_.checkpoint_path, fingerprint_, start.rows(), start.cols(), s_, r_);
      r_.resumed = true;
      r_.resumed_from_step = s_.step;
    } else {
      s_.y = std::move(start);
      if (o_.save_every > 0) record_frame();
    }
    {
      const std::int64_t total = o_.scheme == FlowScheme::dopri5 ? 1000 : o_.steps;
      Progress progress(std::string("flow ") + to_string(o_.scheme),
                        o_.progress || o_.progress_callback ? total : 0, o_.progress_callback,
                        o_.progress);
      if (o_.scheme == FlowScheme::dopri5) {
        run_dopri5(progress);
      } else {
        run_fixed(progress);
      }
    }
    if (r_.status == Status::completed) r_.message = "reached t = " + std::to_string(s_.time);
    if (o_.save_every > 0 && (r_.frame_steps.empty() || r_.frame_steps.back() != s_.step)) {
      record_frame();
    }
    r_.particles = std::move(s_.y);
    r_.time = s_.time;
    r_.steps = s_.step;
    r_.rejected = s_.rejected;
    r_.evaluations = s_.evaluations;
    return std::move(r_);
  }

 private:
  const Model<Scalar>& model_;
  const Vector<Scalar>& w_;
  const detail::KeyWeights<Scalar> keys_;  // w_ prepared for the kernels, once per flow
  const FlowOptions& o_;
  std::uint64_t fingerprint_;
  double beta_;
  bool canonical_;
  bool sphere_;  // norm post: every accepted step renormalizes
  State<Scalar> s_;
  FlowResult<Scalar> r_;
  // Work matrices of the steps (stage derivatives, stage points, the next
  // state), kept from step to step.
  std::array<Matrix<Scalar>, 7> k_;
  Matrix<Scalar> stage_, next_;
};

}  // namespace

template <class Scalar>
std::uint64_t flow_fingerprint(const Model<Scalar>& model, const Measure<Scalar>& mu0,
                               const FlowOptions& options) {
  Fnv f;
  f.bytes("measattn-flow-1", 15);
  f.value(static_cast<std::uint32_t>(sizeof(Scalar)));
  f.value(static_cast<std::int64_t>(model.num_heads));
  f.value(static_cast<int>(model.potential));
  f.value(model.scale);
  f.matrix(model.w_q);
  f.matrix(model.w_k);
  f.matrix(model.w_v);
  f.matrix(model.w_o);
  f.matrix(model.b_q);
  f.matrix(model.b_k);
  f.matrix(model.b_v);
  f.matrix(model.b_o);
  f.matrix(mu0.atoms());
  f.matrix(mu0.weights());
  f.value(options.time);
  f.value(static_cast<std::int64_t>(options.steps));
  f.value(static_cast<int>(options.scheme));
  f.value(options.tolerance);
  f.value(static_cast<std::int64_t>(options.max_steps));
  f.value(options.initial_step);
  const NormPlacement norm = options.placement();
  f.value(static_cast<std::uint8_t>(norm == NormPlacement::post));
  f.value(static_cast<int>(options.field));
  f.value(static_cast<std::int64_t>(options.save_every));
  f.value(options.cluster_tolerance);
  f.value(static_cast<std::int64_t>(options.attention.query_block));
  f.value(static_cast<std::int64_t>(options.attention.key_block));
  // Added only when used, so that the fingerprints (and checkpoints) of the
  // flows that existed before them are unchanged.
  if (norm == NormPlacement::pre) f.bytes("norm=pre", 8);
  if (options.attention.causal) f.bytes("causal", 6);
  if (options.attention.normalization == Normalization::sinkhorn) {
    f.bytes("sinkhorn", 8);
    f.value(static_cast<std::int64_t>(options.attention.sinkhorn_iterations));
  }
  return f.h;
}

template <class Scalar>
FlowResult<Scalar> flow(const Model<Scalar>& model, const Measure<Scalar>& mu0,
                        const FlowOptions& options) {
  options.validate();
  model.validate();
  const Index d = mu0.dim();
  if (model.query_dim() != d || model.key_dim() != d || model.out_dim() != d) {
    throw invalid_argument(
        "model: a flow needs output, query and key dimensions equal to the token dimension " +
        std::to_string(d) + " (model: d_out " + std::to_string(model.out_dim()) + ", d_q " +
        std::to_string(model.query_dim()) + ", d_kv " + std::to_string(model.key_dim()) + ")");
  }
  double beta = 0;
  const bool canonical = is_canonical(model, &beta);
  if (options.field == FlowField::unnormalized) {
    if (!canonical) {
      throw invalid_argument(
          "field: the unnormalized field is defined for the canonical model only");
    }
    if (beta > 700) {
      throw invalid_argument("beta: the unnormalized field overflows (exp(beta)) for beta > 700");
    }
  }
  Matrix<Scalar> start = mu0.atoms();
  if (options.placement() == NormPlacement::post) detail::normalize_rows(start, "tokens");
  Integrator<Scalar> integrator(model, mu0.weights(), options,
                                flow_fingerprint(model, mu0, options), beta, canonical);
  return integrator.run(std::move(start));
}

#define MEASATTN_INSTANTIATE(S)                                                        \
  template FlowResult<S> flow(const Model<S>&, const Measure<S>&, const FlowOptions&); \
  template std::uint64_t flow_fingerprint(const Model<S>&, const Measure<S>&, const FlowOptions&);

MEASATTN_INSTANTIATE(float)
MEASATTN_INSTANTIATE(double)
#undef MEASATTN_INSTANTIATE

}  // namespace measattn
