// Internals of the flow module shared by its translation units.
#pragma once

#include "attention/kernels.hpp"
#include "measattn/flow.hpp"

namespace measattn::detail {

/// The right-hand side f(X) of flow_field for inputs checked by the caller (as
/// flow() checks them once per flow; beta = 1 / tau of the canonical model for
/// the unnormalized field) and weights prepared once (key_weights): the attention field through the
/// kernel layer's entry point, or the unnormalized field, projected on the tangent space with
/// norm post; with norm pre the attention field of the unit directions
/// (unit_directions). Written into out (resized; its storage reused when the size
/// matches); out must not alias particles.
template <class Scalar>
void evaluate_flow_field(const Model<Scalar>& model, const KeyWeights<Scalar>& weights,
                         const MatrixRef<Scalar>& particles, const FlowOptions& options,
                         double beta, Matrix<Scalar>& out);

/// y_i <- y_i - <x_i, y_i> x_i for each row.
template <class Scalar>
void project_tangent(const MatrixRef<Scalar>& x, Matrix<Scalar>& y);

/// x_i <- x_i / ||x_i|| for each row (throws invalid_argument on a zero row when
/// `what` is non-empty; returns false on a zero or non-finite row otherwise).
template <class Scalar>
bool normalize_rows(Matrix<Scalar>& x, const char* what);

/// u_i = x_i / ||x_i|| for each row, u_i = 0 for a zero row (the pre-LN
/// flow's reading of the tokens). Rows must be finite.
template <class Scalar>
Matrix<Scalar> unit_directions(const MatrixRef<Scalar>& x);

}  // namespace measattn::detail
