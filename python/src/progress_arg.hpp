// The `progress=` keyword of long calls (flow, misspec, the Lipschitz
// searches): None or False (nothing),
// True (a tqdm bar when tqdm imports, else a plain line on sys.stderr) or a
// callable taking (done, total). It becomes the ProgressCallback of the call's
// Options (measattn/progress.hpp): the library calls it on the computing thread
// with the GIL released; it takes the GIL and calls Python. An exception raised
// in Python propagates out of the library (py::error_already_set) and stops the
// computation; the binding's pybind11 dispatcher raises it again in Python.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <utility>

#include "measattn/error.hpp"
#include "measattn/progress.hpp"

namespace measattn::python {

namespace py = pybind11;

class ProgressArg {
 public:
  /// Construct and destroy with the GIL held, in the binding, around the call.
  ProgressArg(const py::object& progress, std::string label) : label_(std::move(label)) {
    if (progress.is_none()) return;
    if (py::isinstance<py::bool_>(progress)) {
      if (!progress.cast<bool>()) return;
      try {
        tqdm_ = py::module_::import("tqdm.auto").attr("tqdm");
      } catch (const py::error_already_set&) {
        tqdm_ = py::none();  // no tqdm: the plain line
      }
      builtin_ = true;
    } else if (PyCallable_Check(progress.ptr())) {
      fn_ = progress;
    } else {
      throw invalid_argument("progress",
                             "expected None, a bool or a callable taking (done, total)");
    }
  }
  ~ProgressArg() {
    try {
      if (!bar_.is_none()) bar_.attr("close")();
      if (line_open_) write_line("\n");
    } catch (const py::error_already_set&) {
      // A failing close must not replace the call's own result or error.
    }
  }
  ProgressArg(const ProgressArg&) = delete;
  ProgressArg& operator=(const ProgressArg&) = delete;

  /// The callback for the Options (empty when nothing is asked). It holds a
  /// pointer to this object, never a Python object: the library may copy it
  /// without the GIL.
  ProgressCallback callback() {
    if (!builtin_ && fn_.is_none()) return {};
    return [this](std::int64_t done, std::int64_t total) {
      py::gil_scoped_acquire gil;
      report(done, total);
    };
  }

 private:
  void report(std::int64_t done, std::int64_t total) {
    if (!fn_.is_none()) {
      fn_(done, total);
    } else if (!tqdm_.is_none()) {
      if (bar_.is_none()) bar_ = tqdm_(py::arg("total") = total, py::arg("desc") = label_);
      bar_.attr("update")(done - bar_.attr("n").cast<std::int64_t>());
    } else {
      // One line, rewritten when the percentage changes; ended at done == total.
      const std::int64_t pct = total > 0 ? 100 * done / total : -1;
      if (pct == last_pct_ && done != total) return;
      last_pct_ = pct;
      std::string text = "\r" + label_ + ": " + std::to_string(done);
      if (total > 0) text += "/" + std::to_string(total) + " (" + std::to_string(pct) + "%)";
      line_open_ = done != total;
      write_line(text + (line_open_ ? "" : "\n"));
    }
  }
  static void write_line(const std::string& text) {
    py::object err = py::module_::import("sys").attr("stderr");
    if (err.is_none()) return;
    err.attr("write")(text);
    err.attr("flush")();
  }

  std::string label_;
  py::object fn_ = py::none(), tqdm_ = py::none(), bar_ = py::none();
  bool builtin_ = false, line_open_ = false;
  std::int64_t last_pct_ = -2;
};

}  // namespace measattn::python
