// measattn/types.hpp — matrix and vector aliases shared by every module.
//
// Point clouds are stored row-major (one atom per row), the layout of a C-order
// .npy file and of a NumPy array, so that a token is a contiguous vector.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <type_traits>

namespace measattn {

using Index = Eigen::Index;

template <class Scalar>
using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <class Scalar>
using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

/// Read-only view of a row-major matrix argument. Its scalar is deduced from
/// the other arguments (a non-deduced context), so a Matrix, a block of one or
/// a Map can be passed directly to function templates.
template <class Scalar>
using MatrixRef = Eigen::Ref<const Matrix<std::type_identity_t<Scalar>>>;

using MatrixD = Matrix<double>;
using MatrixF = Matrix<float>;
using VectorD = Vector<double>;
using VectorF = Vector<float>;

}  // namespace measattn
