// measattn._measattn — the compiled part of the Python package `measattn`.
//
// Error policy at the boundary: measattn::invalid_argument -> ValueError (same
// message), measattn::interrupted -> KeyboardInterrupt (or the exception a
// Python signal handler raised), other std::exception -> RuntimeError
// (pybind11's defaults for the std:: ones it knows).
#include <Python.h>
#include <omp.h>

#include <string>

#include "convert.hpp"
#include "measattn/communicator.hpp"
#include "measattn/interrupt.hpp"
#include "measattn/threads.hpp"
#include "measattn/version.hpp"

namespace measattn::python {
namespace {

// The exception raised by a Python-level signal handler during a poll, kept
// until the measattn::interrupted it caused reaches the translator.
struct PendingError {
  PyObject* type = nullptr;
  PyObject* value = nullptr;
  PyObject* traceback = nullptr;
};
thread_local PendingError pending;

bool poll_python_signals() {
  if (!Py_IsInitialized()) return false;
  py::gil_scoped_acquire gil;
  if (PyErr_CheckSignals() == 0) return false;
  // Replace any stale pending error by the fresh one.
  Py_XDECREF(pending.type);
  Py_XDECREF(pending.value);
  Py_XDECREF(pending.traceback);
  PyErr_Fetch(&pending.type, &pending.value, &pending.traceback);
  return true;
}

void raise_interrupted(const char* what) {
  if (pending.type != nullptr) {
    PyErr_Restore(pending.type, pending.value, pending.traceback);
    pending = PendingError{};
  } else {
    PyErr_SetString(PyExc_KeyboardInterrupt, what);
  }
}

constexpr const char* kSetThreadsDoc = R"doc(
Sets the number of OpenMP threads measattn uses.

Parameters
----------
num_threads : int
    1 to measattn.MAX_THREADS (1024); ValueError outside.

Notes
-----
Applies to any other OpenMP code in the process too. Results do not depend on
it: every computation does the same operations in the same order whatever the
thread count.

Examples
--------
>>> before = measattn.get_num_threads()
>>> measattn.set_num_threads(1)
>>> measattn.get_num_threads()
1
>>> measattn.set_num_threads(before)
>>> measattn.set_num_threads(0)
Traceback (most recent call last):
    ...
ValueError: num_threads: must be in [1, 1024]
)doc";

constexpr const char* kGetThreadsDoc = R"doc(
The number of OpenMP threads measattn will use (see set_num_threads).

Examples
--------
>>> 1 <= measattn.get_num_threads() <= measattn.MAX_THREADS
True
)doc";

constexpr const char* kOptionFieldsDoc = R"doc(
The options of `function` as [(name, default)].

The fields of the C++ Options struct behind the function (its field table):
their names are the function's keywords, the CLI's flags (dashes for
underscores) and the JSON keys; the defaults (those of a default-constructed
Options, enumerations by name) are the keywords' defaults.

Parameters
----------
function : str
    E.g. "flow", "wasserstein", "misspec", "attend"; ValueError for a function
    without an option table.

Returns
-------
list of (str, object)

Examples
--------
>>> from measattn import _measattn
>>> dict(_measattn.option_fields("misspec"))["repeats"]
3
>>> [name for name, _ in _measattn.option_fields("flow")][:3]
['time', 'steps', 'scheme']
)doc";

constexpr const char* kMpiEnabledDoc = R"doc(
Whether this build of measattn has MPI (the CMake option MEASATTN_MPI).

With MPI, the attention functions take an mpi4py communicator
(``communicator=MPI.COMM_WORLD``) and split their work over its ranks, with
results bit-identical to one process (docs/distributed.md).

Returns
-------
bool

Examples
--------
>>> isinstance(measattn.mpi_enabled(), bool)
True
)doc";

}  // namespace
}  // namespace measattn::python

PYBIND11_MODULE(_measattn, m) {
  using namespace measattn::python;
  m.doc() =
      "Compiled core of measattn: attention as a map on probability measures.\n"
      "Import the package `measattn`, not this module.";
  m.attr("__version__") = measattn::version;

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const measattn::invalid_argument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const measattn::interrupted& e) {
      raise_interrupted(e.what());
    }
  });

  // Ctrl-C: long computations poll the interpreter's pending signals (at most
  // every 50 ms). Removed at interpreter exit, before Python is torn down.
  measattn::set_interrupt_handler(&poll_python_signals, 0.05);
  py::module_::import("atexit").attr("register")(
      py::cpp_function([]() { measattn::set_interrupt_handler({}); }));

  m.def(
      "set_num_threads",
      [](long long n) {
        if (n < 1 || n > measattn::kMaxThreads) {
          throw measattn::invalid_argument(
              "num_threads", "must be in [1, " + std::to_string(measattn::kMaxThreads) + "]");
        }
        omp_set_num_threads(static_cast<int>(n));
      },
      py::arg("num_threads"), kSetThreadsDoc);
  m.attr("MAX_THREADS") = measattn::kMaxThreads;
  m.def(
      "get_num_threads", []() { return omp_get_max_threads(); }, kGetThreadsDoc);
  m.def("mpi_enabled", &measattn::Communicator::mpi_enabled, kMpiEnabledDoc);

  bind_core(m);
#ifdef MEASATTN_PY_WASSERSTEIN
  bind_wasserstein(m);
#endif
#ifdef MEASATTN_PY_FLOW
  bind_flow(m);
#endif
#ifdef MEASATTN_PY_GAUSSIAN
  bind_gaussian(m);
#endif
#ifdef MEASATTN_PY_MAXENT
  bind_maxent(m);
#endif
#ifdef MEASATTN_PY_LIPSCHITZ
  bind_lipschitz(m);
#endif
#ifdef MEASATTN_PY_MISSPEC
  bind_misspec(m);
#endif
#ifdef MEASATTN_PY_TRANSFORMER
  bind_transformer(m);
#endif
  m.def("option_fields", &measattn::python::option_fields, py::arg("function"), kOptionFieldsDoc);
}
