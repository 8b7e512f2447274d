// Dormand–Prince 5(4) coefficients (Hairer, Norsett, Wanner, "Solving Ordinary
// Differential Equations I", Table II.5.2), shared by the integrators of the
// particle flow (src/flow/flow.cpp) and of the Gaussian flow (src/gaussian/flow.cpp).
#pragma once

namespace measattn::detail::dormand_prince {

// The nodes c_i are listed for reference only: both fields are autonomous, so
// no stage evaluates at t + c_i h.
[[maybe_unused]] constexpr double c2 = 1.0 / 5, c3 = 3.0 / 10, c4 = 4.0 / 5, c5 = 8.0 / 9;
constexpr double a21 = 1.0 / 5;
constexpr double a31 = 3.0 / 40, a32 = 9.0 / 40;
constexpr double a41 = 44.0 / 45, a42 = -56.0 / 15, a43 = 32.0 / 9;
constexpr double a51 = 19372.0 / 6561, a52 = -25360.0 / 2187, a53 = 64448.0 / 6561,
                 a54 = -212.0 / 729;
constexpr double a61 = 9017.0 / 3168, a62 = -355.0 / 33, a63 = 46732.0 / 5247, a64 = 49.0 / 176,
                 a65 = -5103.0 / 18656;
// The fifth-order weights b_i (= a7i: the last stage is the new point, FSAL).
constexpr double a71 = 35.0 / 384, a73 = 500.0 / 1113, a74 = 125.0 / 192, a75 = -2187.0 / 6784,
                 a76 = 11.0 / 84;
// Error coefficients b - b_hat.
constexpr double e1 = 71.0 / 57600, e3 = -71.0 / 16695, e4 = 71.0 / 1920, e5 = -17253.0 / 339200,
                 e6 = 22.0 / 525, e7 = -1.0 / 40;

}  // namespace measattn::detail::dormand_prince
