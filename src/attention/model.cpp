// Model<Scalar>: parameters of one multi-head attention layer, validation,
// per-head views and the canonical / random constructors.
#include <cmath>
#include <random>
#include <string>

#include "attention/potential.hpp"
#include "measattn/attention.hpp"
#include "measattn/error.hpp"

namespace measattn {

std::string to_string(Potential p) {
  return detail::with_potential(p, [](auto pot) { return std::string(decltype(pot)::name); });
}

Potential parse_potential(const std::string& name, const std::string& field) {
  for (Potential p : {Potential::dot, Potential::l2, Potential::cosine})
    if (name == to_string(p)) return p;
  throw invalid_argument(field + ": unknown potential '" + name + "' (expected dot, l2 or cosine)");
}

std::string to_string(Normalization n) {
  return n == Normalization::softmax ? "softmax" : "sinkhorn";
}

Normalization parse_normalization(const std::string& name, const std::string& field) {
  if (name == "softmax") return Normalization::softmax;
  if (name == "sinkhorn") return Normalization::sinkhorn;
  throw invalid_argument(field + ": unknown normalization '" + name +
                         "' (expected softmax or sinkhorn)");
}

std::string to_string(NormPlacement p) {
  switch (p) {
    case NormPlacement::post:
      return "post";
    case NormPlacement::pre:
      return "pre";
    case NormPlacement::none:
      return "none";
  }
  return "unknown";
}

NormPlacement parse_norm_placement(const std::string& name, const std::string& field) {
  for (NormPlacement p : {NormPlacement::post, NormPlacement::pre, NormPlacement::none})
    if (name == to_string(p)) return p;
  throw invalid_argument(field + ": unknown normalization placement '" + name +
                         "' (expected post, pre or none)");
}

template <class Scalar>
Scalar Model<Scalar>::tau() const {
  return scale > 0 ? scale : std::sqrt(static_cast<Scalar>(head_dim()));
}

template <class Scalar>
bool Model<Scalar>::has_bias() const {
  auto nonzero = [](const Vector<Scalar>& b) { return b.size() > 0 && !b.isZero(0); };
  return nonzero(b_q) || nonzero(b_k) || nonzero(b_v) || nonzero(b_o);
}

namespace {

std::string shape(Index r, Index c) {
  return "[" + std::to_string(r) + ", " + std::to_string(c) + "]";
}

template <class Derived>
void check_finite(const Eigen::MatrixBase<Derived>& m, const std::string& name) {
  if (!m.allFinite()) throw invalid_argument(name + ": contains a NaN or infinite entry");
}

}  // namespace

template <class Scalar>
void Model<Scalar>::validate() const {
  if (num_heads < 1) throw invalid_argument("num_heads: must be a positive integer");
  const Index e = w_q.rows();
  if (e == 0 || w_q.cols() == 0) throw invalid_argument("w_q: empty query projection");
  if (e % num_heads != 0) {
    throw invalid_argument("num_heads: " + std::to_string(num_heads) +
                           " does not divide the embedding size " + std::to_string(e));
  }
  if (w_k.rows() != e || w_k.cols() == 0) {
    throw invalid_argument("w_k: expected shape " + shape(e, w_k.cols()) + ", got " +
                           shape(w_k.rows(), w_k.cols()));
  }
  if (w_v.rows() != e || w_v.cols() != w_k.cols()) {
    throw invalid_argument("w_v: expected shape " + shape(e, w_k.cols()) + ", got " +
                           shape(w_v.rows(), w_v.cols()));
  }
  if (w_o.cols() != e || w_o.rows() == 0) {
    throw invalid_argument("w_o: expected shape [d_out, " + std::to_string(e) + "], got " +
                           shape(w_o.rows(), w_o.cols()));
  }
  auto check_bias = [](const Vector<Scalar>& b, Index n, const char* name) {
    if (b.size() != 0 && b.size() != n) {
      throw invalid_argument(std::string(name) + ": expected length " + std::to_string(n) +
                             ", got " + std::to_string(b.size()));
    }
    check_finite(b, name);
  };
  check_bias(b_q, e, "b_q");
  check_bias(b_k, e, "b_k");
  check_bias(b_v, e, "b_v");
  check_bias(b_o, w_o.rows(), "b_o");
  check_finite(w_q, "w_q");
  check_finite(w_k, "w_k");
  check_finite(w_v, "w_v");
  check_finite(w_o, "w_o");
  if (!std::isfinite(scale) || scale < 0) throw invalid_argument("scale: must be finite and >= 0");
  if (potential == Potential::custom && !custom_potential) {
    throw invalid_argument("potential: custom potential without a function");
  }
}

template <class Scalar>
Head<Scalar> Model<Scalar>::head(Index h) const {
  if (h < 0 || h >= num_heads) throw invalid_argument("head: index out of range");
  const Index k = head_dim();
  auto bias = [&](const Vector<Scalar>& b) -> Vector<Scalar> {
    return b.size() ? Vector<Scalar>(b.segment(h * k, k)) : Vector<Scalar>::Zero(k);
  };
  return Head<Scalar>{w_q.middleRows(h * k, k),
                      w_k.middleRows(h * k, k),
                      w_v.middleRows(h * k, k),
                      bias(b_q),
                      bias(b_k),
                      bias(b_v),
                      tau(),
                      potential};
}

template <class Scalar>
Model<Scalar> Model<Scalar>::canonical(Index dim, Scalar beta) {
  if (dim < 1) throw invalid_argument("dim: must be positive");
  if (!(beta > 0) || !std::isfinite(beta)) throw invalid_argument("beta: must be positive");
  Model m;
  m.num_heads = 1;
  m.potential = Potential::dot;
  m.scale = Scalar(1) / beta;
  m.w_q = Matrix<Scalar>::Identity(dim, dim);
  m.w_k = Matrix<Scalar>::Identity(dim, dim);
  m.w_v = Matrix<Scalar>::Identity(dim, dim);
  m.w_o = Matrix<Scalar>::Identity(dim, dim);
  return m;
}

template <class Scalar>
Model<Scalar> Model<Scalar>::random(Index dim, Index heads, bool bias, unsigned long long seed,
                                    Potential potential) {
  if (dim < 1 || heads < 1 || dim % heads != 0) {
    throw invalid_argument("num_heads: must divide a positive dimension");
  }
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0 / std::sqrt(static_cast<double>(dim)));
  auto fill = [&](Index r, Index c) {
    Matrix<Scalar> m(r, c);
    for (Index i = 0; i < r; ++i)
      for (Index j = 0; j < c; ++j) m(i, j) = static_cast<Scalar>(normal(rng));
    return m;
  };
  Model m;
  m.num_heads = heads;
  m.potential = potential;
  m.w_q = fill(dim, dim);
  m.w_k = fill(dim, dim);
  m.w_v = fill(dim, dim);
  m.w_o = fill(dim, dim);
  if (bias) {
    m.b_q = fill(dim, 1).col(0);
    m.b_k = fill(dim, 1).col(0);
    m.b_v = fill(dim, 1).col(0);
    m.b_o = fill(dim, 1).col(0);
  }
  return m;
}

template <class Scalar>
template <class Other>
Model<Other> Model<Scalar>::cast() const {
  Model<Other> m;
  m.num_heads = num_heads;
  m.potential = potential;
  m.scale = static_cast<Other>(scale);
  m.w_q = w_q.template cast<Other>();
  m.w_k = w_k.template cast<Other>();
  m.w_v = w_v.template cast<Other>();
  m.w_o = w_o.template cast<Other>();
  m.b_q = b_q.template cast<Other>();
  m.b_k = b_k.template cast<Other>();
  m.b_v = b_v.template cast<Other>();
  m.b_o = b_o.template cast<Other>();
  if (potential == Potential::custom) {
    throw invalid_argument("potential: a custom potential cannot change precision");
  }
  return m;
}

template struct Model<float>;
template struct Model<double>;
template Model<float> Model<double>::cast<float>() const;
template Model<double> Model<float>::cast<double>() const;
template Model<double> Model<double>::cast<double>() const;
template Model<float> Model<float>::cast<float>() const;

}  // namespace measattn
