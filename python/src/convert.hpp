// Conversions between NumPy arrays and the library's Eigen types, dtype
// dispatch and the shared pieces of the Python bindings. No algorithm here:
// only checking, viewing and copying data across the boundary.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "measattn/attention.hpp"
#include "measattn/communicator.hpp"
#include "measattn/error.hpp"
#include "measattn/measure.hpp"
#include "measattn/options.hpp"
#include "measattn/types.hpp"

namespace measattn::python {

namespace py = pybind11;

enum class DT { f32, f64 };

inline const char* dtype_name(DT t) { return t == DT::f32 ? "float32" : "float64"; }

inline py::dtype numpy_dtype(DT t) {
  return t == DT::f32 ? py::dtype::of<float>() : py::dtype::of<double>();
}

template <class Scalar>
constexpr DT dt_of() {
  return std::is_same_v<Scalar, float> ? DT::f32 : DT::f64;
}

/// Parses a dtype argument: None -> fallback; "float32"/"f32"/np.float32/np.dtype
/// -> f32; "float64"/"f64"/float/np.float64 -> f64; anything else is a ValueError.
DT parse_dtype_arg(const py::handle& dtype, DT fallback, const char* field = "dtype");

/// The dtype an array-like argument asks for: float32 arrays -> f32, anything else f64.
DT dtype_of_input(const py::handle& obj);

/// The dtype for a call: `dtype` if given, else that of `obj` (see dtype_of_input).
inline DT choose_dtype(const py::handle& obj, const py::handle& dtype) {
  if (!dtype.is_none()) return parse_dtype_arg(dtype, DT::f64);
  return dtype_of_input(obj);
}

/// Turns obj into a C-contiguous array of Scalar with the given ndim (`ndim` 1
/// or 2; with allow_1d_as_column a 1-D input of length n becomes n x 1).
/// Float, integer and boolean inputs of any layout are converted (one copy);
/// a float array of the right dtype in C order is used as is (no copy).
/// Complex, object, string inputs and wrong ndim raise ValueError naming `field`.
template <class Scalar>
using CArray = py::array_t<Scalar, py::array::c_style | py::array::forcecast>;

template <class Scalar>
CArray<Scalar> as_array(const py::handle& obj, int ndim, const char* field,
                        bool allow_1d_as_column = false);

template <class Scalar>
using ConstMap = Eigen::Map<const Matrix<Scalar>>;
template <class Scalar>
using ConstVecMap = Eigen::Map<const Vector<Scalar>>;

/// An mpi4py communicator (anything with py2f(), the Fortran handle), or None
/// for the calling process alone (the `communicator=` keyword).
inline Communicator communicator_arg(const py::object& comm) {
  if (comm.is_none()) return Communicator();
  if (!py::hasattr(comm, "py2f")) {
    throw invalid_argument(
        "communicator: expected an mpi4py communicator (e.g. MPI.COMM_WORLD) or None");
  }
  return Communicator::from_fortran(comm.attr("py2f")().cast<std::int64_t>());
}

/// A read-only Eigen view of a checked 2-D array (keeps the array alive).
template <class Scalar>
struct MatrixArg {
  CArray<Scalar> array;
  ConstMap<Scalar> map;
  explicit MatrixArg(CArray<Scalar> a)
      : array(std::move(a)), map(array.data(), array.shape(0), array.shape(1)) {}
};

template <class Scalar>
MatrixArg<Scalar> matrix_arg(const py::handle& obj, const char* field,
                             bool allow_1d_as_column = false) {
  return MatrixArg<Scalar>(as_array<Scalar>(obj, 2, field, allow_1d_as_column));
}

template <class Scalar>
Vector<Scalar> vector_copy(const py::handle& obj, const char* field) {
  auto a = as_array<Scalar>(obj, 1, field);
  return ConstVecMap<Scalar>(a.data(), a.shape(0));
}

template <class Scalar>
Matrix<Scalar> matrix_copy(const py::handle& obj, const char* field,
                           bool allow_1d_as_column = false) {
  auto a = matrix_arg<Scalar>(obj, field, allow_1d_as_column);
  return a.map;
}

/// Moves a matrix into a NumPy array without copying its data.
template <class Scalar>
py::array_t<Scalar> to_numpy(Matrix<Scalar>&& m) {
  auto* heap = new Matrix<Scalar>(std::move(m));
  py::capsule owner(heap, [](void* p) { delete static_cast<Matrix<Scalar>*>(p); });
  const std::vector<py::ssize_t> shape{static_cast<py::ssize_t>(heap->rows()),
                                       static_cast<py::ssize_t>(heap->cols())};
  const std::vector<py::ssize_t> strides{
      static_cast<py::ssize_t>(sizeof(Scalar) * static_cast<size_t>(heap->cols())),
      static_cast<py::ssize_t>(sizeof(Scalar))};
  return py::array_t<Scalar>(shape, strides, heap->data(), owner);
}

template <class Scalar>
py::array_t<Scalar> to_numpy(Vector<Scalar>&& v) {
  auto* heap = new Vector<Scalar>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<Vector<Scalar>*>(p); });
  return py::array_t<Scalar>({static_cast<py::ssize_t>(heap->size())}, {sizeof(Scalar)},
                             heap->data(), owner);
}

template <class Scalar>
py::array_t<Scalar> to_numpy(const std::vector<Scalar>& v) {
  py::array_t<Scalar> out(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

/// A read-only NumPy view of data owned by `owner` (a Python object kept alive).
template <class Scalar>
py::array_t<Scalar> readonly_view(const Matrix<Scalar>& m, const py::handle& owner) {
  py::array_t<Scalar> a({static_cast<py::ssize_t>(m.rows()), static_cast<py::ssize_t>(m.cols())},
                        {static_cast<py::ssize_t>(sizeof(Scalar) * static_cast<size_t>(m.cols())),
                         static_cast<py::ssize_t>(sizeof(Scalar))},
                        m.data(), owner);
  py::detail::array_proxy(a.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  return a;
}

template <class Scalar>
py::array_t<Scalar> readonly_view(const Vector<Scalar>& v, const py::handle& owner) {
  py::array_t<Scalar> a({static_cast<py::ssize_t>(v.size())}, {sizeof(Scalar)}, v.data(), owner);
  py::detail::array_proxy(a.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  return a;
}

/// Calls f(float{}) or f(double{}).
template <class F>
decltype(auto) dispatch(DT t, F&& f) {
  if (t == DT::f32) return f(float{});
  return f(double{});
}

// ---- The Python-facing value types -------------------------------------------

/// measattn.Measure: a Measure<float> or a Measure<double>.
struct PyMeasure {
  std::variant<Measure<double>, Measure<float>> m;
  DT dtype() const { return m.index() == 0 ? DT::f64 : DT::f32; }
  template <class Scalar>
  Measure<Scalar> as() const {
    if (const auto* p = std::get_if<Measure<Scalar>>(&m)) return *p;
    return std::visit([](const auto& x) { return x.template cast<Scalar>(); }, m);
  }
};

/// measattn.Model: a Model<float> or a Model<double>.
struct PyModel {
  std::variant<Model<double>, Model<float>> m;
  DT dtype() const { return m.index() == 0 ? DT::f64 : DT::f32; }
  template <class Scalar>
  Model<Scalar> as() const {
    if (const auto* p = std::get_if<Model<Scalar>>(&m)) return *p;
    return std::visit([](const auto& x) { return x.template cast<Scalar>(); }, m);
  }
};

/// The measure of a call: `tokens` (array-like n x d, or a measattn.Measure)
/// with optional `weights` (length n; None = uniform), in precision Scalar.
/// An array is copied once into the measure; a Measure of the same precision is
/// used in place (then `weights` must be None). Not copyable or movable: it
/// may point into itself.
template <class Scalar>
class MeasureArg {
 public:
  MeasureArg(const py::handle& tokens, const py::handle& weights, const char* field = "tokens");
  MeasureArg(const MeasureArg&) = delete;
  MeasureArg& operator=(const MeasureArg&) = delete;
  const Measure<Scalar>& get() const { return *ptr_; }

 private:
  std::optional<Measure<Scalar>> owned_;
  const Measure<Scalar>* ptr_ = nullptr;
};

/// The model of a call in precision Scalar (in place when it already is).
template <class Scalar>
class ModelArg {
 public:
  explicit ModelArg(const PyModel& model) {
    if (const auto* p = std::get_if<Model<Scalar>>(&model.m)) {
      ptr_ = p;
    } else {
      owned_.emplace(model.as<Scalar>());
      ptr_ = &*owned_;
    }
  }
  ModelArg(const ModelArg&) = delete;
  ModelArg& operator=(const ModelArg&) = delete;
  const Model<Scalar>& get() const { return *ptr_; }

 private:
  std::optional<Model<Scalar>> owned_;
  const Model<Scalar>* ptr_ = nullptr;
};

/// The dtype of a call taking `tokens` (array or Measure) and a dtype= argument.
DT call_dtype(const py::handle& tokens, const py::handle& dtype);

/// Reads an integer option from **kwargs-like dicts etc.: helpers to apply
/// keyword options to an Options struct. Unknown keys raise ValueError (TypeError
/// would be Python's habit, but one error policy: bad input is ValueError).
void reject_unknown(const py::dict& kwargs, const std::vector<std::string>& known,
                    const char* function);

// ---- Options through their field tables (measattn/options.hpp) ---------------

/// The default of a field as Python sees it (enumerations by name).
template <class T>
py::object field_default(const T& value) {
  return py::cast(value);
}
template <class E>
py::object field_default(const E& value, const EnumSpelling<E>& spelling) {
  return py::str(spelling.to_string(value));
}

/// [(name, default)] of the table of Options, defaults from Options{}.
template <class Options>
py::list option_fields_of() {
  Options defaults{};
  py::list out;
  for_each_field(defaults, [&](const char* name, auto& value, const char*, auto&&... spelling) {
    out.append(py::make_tuple(name, field_default(value, spelling...)));
  });
  return out;
}

/// Registers the table of Options under `function` for measattn._measattn.option_fields.
void register_option_fields(const std::string& function, std::function<py::list()> fields);

/// The registered table of `function` (ValueError for an unknown name).
py::list option_fields(const std::string& function);

/// Sets the fields of `o` named by keywords of `kw` (names = field names),
/// skipping those in `skip` (bound as explicit arguments elsewhere); enumerations
/// are parsed from their names. Returns the names it knows, for reject_unknown.
template <class Options>
std::vector<std::string> apply_fields(Options& o, const py::dict& kw,
                                      const std::vector<std::string>& skip = {}) {
  std::vector<std::string> known;
  for_each_field(o, [&](const char* name, auto& value, const char*, auto&&... spelling) {
    if (std::find(skip.begin(), skip.end(), name) != skip.end()) return;
    known.emplace_back(name);
    if (!kw.contains(name)) return;
    using T = std::decay_t<decltype(value)>;
    if constexpr (sizeof...(spelling) == 0) {
      value = kw[name].template cast<T>();
    } else {
      value = (spelling.parse(kw[name].template cast<std::string>(), name), ...);
    }
  });
  return known;
}

// ---- Module pieces (one file each) ---------------------------------------------
void bind_core(py::module_& m);
#ifdef MEASATTN_PY_WASSERSTEIN
void bind_wasserstein(py::module_& m);
#endif
#ifdef MEASATTN_PY_FLOW
void bind_flow(py::module_& m);
#endif
#ifdef MEASATTN_PY_GAUSSIAN
void bind_gaussian(py::module_& m);
#endif
#ifdef MEASATTN_PY_MAXENT
void bind_maxent(py::module_& m);
#endif
#ifdef MEASATTN_PY_LIPSCHITZ
void bind_lipschitz(py::module_& m);
#endif
#ifdef MEASATTN_PY_MISSPEC
void bind_misspec(py::module_& m);
#endif
#ifdef MEASATTN_PY_TRANSFORMER
void bind_transformer(py::module_& m);
#endif

}  // namespace measattn::python
