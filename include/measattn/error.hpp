// measattn/error.hpp — the library's one error policy.
//
// Bad input (a malformed file, a negative weight, mismatched dimensions) throws
// measattn::invalid_argument whose message is "field: reason": the field is the
// C++/Python name of the offending option or argument (`radius`, `atoms`,
// `tokens`), never a CLI flag (the CLI maps fields to its flags), and the
// reason states the cause (and the file, where there is one). Numerical
// outcomes such as "iteration cap reached" are never thrown: they are a status
// in the Result of the solver.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

namespace measattn {

/// Thrown on invalid input. The CLI maps it to exit code 2, Python to ValueError.
class invalid_argument : public std::runtime_error {
 public:
  /// what() = "field: reason".
  invalid_argument(const std::string& field, const std::string& reason)
      : std::runtime_error(field.empty() ? reason : field + ": " + reason),
        field_(field),
        reason_(reason) {}

  /// A whole message. field() is the text before the first ": " when it is a
  /// plain identifier (letters, digits and '_', not starting with a digit),
  /// else empty; reason() is the rest (the whole message without a field).
  explicit invalid_argument(const std::string& message) : std::runtime_error(message) {
    split(message);
  }
  explicit invalid_argument(const char* message) : invalid_argument(std::string(message)) {}

  /// The C++/Python field the error is about ("" when unknown).
  const std::string& field() const noexcept { return field_; }
  /// The message without its field prefix.
  const std::string& reason() const noexcept { return reason_; }

 private:
  void split(const std::string& message) {
    const size_t colon = message.find(": ");
    if (colon != std::string::npos && colon > 0 && is_identifier(message, colon)) {
      field_ = message.substr(0, colon);
      reason_ = message.substr(colon + 2);
    } else {
      reason_ = message;
    }
  }
  static bool is_identifier(const std::string& s, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      const char c = s[i];
      const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
      const bool digit = c >= '0' && c <= '9';
      if (!(alpha || (digit && i > 0))) return false;
    }
    return true;
  }

  std::string field_;
  std::string reason_;
};

/// Thrown when a long computation is interrupted on request (Ctrl-C).
class interrupted : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace measattn
