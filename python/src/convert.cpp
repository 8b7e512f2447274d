// Array conversion and argument checking for the Python bindings.
#include "convert.hpp"

#include <map>

#include <algorithm>
#include <sstream>

namespace measattn::python {

namespace {

std::string shape_text(const py::array& a) {
  std::ostringstream s;
  s << "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    if (i) s << ", ";
    s << a.shape(i);
  }
  if (a.ndim() == 1) s << ",";
  s << ")";
  return s.str();
}

std::string str_of(const py::handle& obj) {
  try {
    return py::str(obj).cast<std::string>();
  } catch (const py::error_already_set&) {
    return "<object>";
  }
}

}  // namespace

DT parse_dtype_arg(const py::handle& dtype, DT fallback, const char* field) {
  if (dtype.is_none()) return fallback;
  if (py::isinstance<py::str>(dtype)) {
    const std::string s = dtype.cast<std::string>();
    if (s == "f32" || s == "float32") return DT::f32;
    if (s == "f64" || s == "float64" || s == "double") return DT::f64;
  }
  py::dtype dt;
  try {
    dt = py::dtype::from_args(py::reinterpret_borrow<py::object>(dtype));
  } catch (const py::error_already_set&) {
    throw invalid_argument(std::string(field) + ": expected float32 or float64, got " +
                           str_of(dtype));
  }
  if (dt.kind() == 'f' && dt.itemsize() == 4) return DT::f32;
  if (dt.kind() == 'f' && dt.itemsize() == 8) return DT::f64;
  throw invalid_argument(std::string(field) + ": expected float32 or float64, got " + str_of(dt));
}

DT dtype_of_input(const py::handle& obj) {
  if (py::isinstance<PyMeasure>(obj)) return obj.cast<const PyMeasure&>().dtype();
  if (py::isinstance<py::array>(obj)) {
    const py::dtype dt = py::reinterpret_borrow<py::array>(obj).dtype();
    if (dt.kind() == 'f' && dt.itemsize() == 4) return DT::f32;
  }
  return DT::f64;
}

DT call_dtype(const py::handle& tokens, const py::handle& dtype) {
  return choose_dtype(tokens, dtype);
}

template <class Scalar>
CArray<Scalar> as_array(const py::handle& obj, int ndim, const char* field,
                        bool allow_1d_as_column) {
  if (obj.is_none()) throw invalid_argument(std::string(field) + ": expected an array, got None");
  py::array arr;
  if (py::isinstance<py::array>(obj)) {
    arr = py::reinterpret_borrow<py::array>(obj);
  } else {
    try {
      arr = py::module_::import("numpy").attr("asarray")(obj);
    } catch (const py::error_already_set& e) {
      throw invalid_argument(std::string(field) + ": cannot convert to a NumPy array: " + e.what());
    }
  }
  const char kind = arr.dtype().kind();
  if (kind != 'f' && kind != 'i' && kind != 'u' && kind != 'b') {
    throw invalid_argument(std::string(field) + ": expected a real array (float, integer or " +
                           "bool), got dtype " + str_of(arr.dtype()));
  }
  if (ndim == 2 && arr.ndim() == 1 && allow_1d_as_column) {
    arr = arr.reshape({arr.shape(0), py::ssize_t{1}});
  }
  if (arr.ndim() != ndim) {
    throw invalid_argument(std::string(field) + ": expected a " + std::to_string(ndim) +
                           "-D array" + (ndim == 2 ? " of shape (n, d)" : " of shape (n,)") +
                           ", got shape " + shape_text(arr));
  }
  // No copy when arr already is C-contiguous with dtype Scalar; else one conversion.
  auto out = CArray<Scalar>::ensure(arr);
  if (!out) {
    PyErr_Clear();
    throw invalid_argument(std::string(field) + ": cannot convert dtype " + str_of(arr.dtype()) +
                           " to " + dtype_name(dt_of<Scalar>()));
  }
  return out;
}

template CArray<float> as_array<float>(const py::handle&, int, const char*, bool);
template CArray<double> as_array<double>(const py::handle&, int, const char*, bool);

template <class Scalar>
MeasureArg<Scalar>::MeasureArg(const py::handle& tokens, const py::handle& weights,
                               const char* field) {
  if (py::isinstance<PyMeasure>(tokens)) {
    if (!weights.is_none()) {
      throw invalid_argument("weights: must be None when " + std::string(field) +
                             " is a Measure (it carries its own weights)");
    }
    const PyMeasure& pm = tokens.cast<const PyMeasure&>();
    if (const auto* p = std::get_if<Measure<Scalar>>(&pm.m)) {
      ptr_ = p;
    } else {
      owned_.emplace(pm.as<Scalar>());
      ptr_ = &*owned_;
    }
    return;
  }
  Matrix<Scalar> atoms = matrix_copy<Scalar>(tokens, field);
  if (weights.is_none()) {
    owned_.emplace(Measure<Scalar>::empirical(std::move(atoms)));
  } else {
    Vector<Scalar> w = vector_copy<Scalar>(weights, "weights");
    owned_.emplace(std::move(atoms), std::move(w));
  }
  ptr_ = &*owned_;
}

template class MeasureArg<float>;
template class MeasureArg<double>;

void reject_unknown(const py::dict& kwargs, const std::vector<std::string>& known,
                    const char* function) {
  for (const auto& item : kwargs) {
    const std::string key = py::str(item.first).cast<std::string>();
    if (std::find(known.begin(), known.end(), key) == known.end()) {
      std::string list;
      for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
      throw invalid_argument(std::string(function) + ": unknown option '" + key +
                             "' (known: " + list + ")");
    }
  }
}

namespace {
std::map<std::string, std::function<py::list()>>& option_tables() {
  static std::map<std::string, std::function<py::list()>> tables;
  return tables;
}
}  // namespace

void register_option_fields(const std::string& function, std::function<py::list()> fields) {
  option_tables()[function] = std::move(fields);
}

py::list option_fields(const std::string& function) {
  const auto it = option_tables().find(function);
  if (it == option_tables().end()) {
    std::string list;
    for (const auto& [name, fields] : option_tables()) list += (list.empty() ? "" : ", ") + name;
    throw invalid_argument("function",
                           "no option table for '" + function + "' (known: " + list + ")");
  }
  return it->second();
}

}  // namespace measattn::python
