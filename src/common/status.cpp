// to_string of the one status vocabulary (measattn/status.hpp).
#include "measattn/status.hpp"

namespace measattn {

std::string to_string(Status s) {
  switch (s) {
    case Status::optimal:
      return "optimal";
    case Status::converged:
      return "converged";
    case Status::completed:
      return "completed";
    case Status::iteration_limit:
      return "iteration_limit";
    case Status::bounds_only:
      return "bounds_only";
    case Status::step_size_underflow:
      return "step_size_underflow";
    case Status::non_finite:
      return "non_finite";
    case Status::interrupted:
      return "interrupted";
    case Status::degenerate:
      return "degenerate";
  }
  return "unknown";
}

}  // namespace measattn
