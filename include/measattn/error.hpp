// measattn/error.hpp — the library's one error policy.
//
// Bad input (a malformed file, a negative weight, mismatched dimensions) throws
// measattn::invalid_argument whose message names the field (and file, where
// there is one) and the reason. Numerical outcomes such as "iteration cap
// reached" are never thrown: they are a status in the Result of the solver.
#pragma once

#include <stdexcept>
#include <string>

namespace measattn {

/// Thrown on invalid input. The CLI maps it to exit code 2.
class invalid_argument : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Thrown when a long computation is interrupted on request (Ctrl-C in Python).
class interrupted : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace measattn
