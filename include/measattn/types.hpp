// measattn/types.hpp — matrix and vector aliases shared by every module.
//
// Point clouds are stored row-major (one atom per row), the layout of a C-order
// .npy file and of a NumPy array, so that a token is a contiguous vector.
#pragma once

#include <Eigen/Core>
#include <cstdint>

namespace measattn {

using Index = Eigen::Index;

template <class Scalar>
using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <class Scalar>
using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

using MatrixD = Matrix<double>;
using MatrixF = Matrix<float>;
using VectorD = Vector<double>;
using VectorF = Vector<float>;

}  // namespace measattn
