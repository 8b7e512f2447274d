// Tests of measattn/io.hpp: .npy and safetensors round trips, and every kind of
// malformed input rejected with invalid_argument naming the file.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "measattn/error.hpp"
#include "measattn/io.hpp"
#include "measattn/temporaries.hpp"

namespace fs = std::filesystem;
using measattn::DType;
using measattn::Index;
using measattn::invalid_argument;
using measattn::Matrix;
using measattn::Model;
using measattn::Vector;
using json = nlohmann::json;

namespace {

class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = fs::temp_directory_path() / ("measattn_io_test_" + std::to_string(rd()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

void write_raw(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Expects invalid_argument whose message contains `name` and `fragment`.
template <class F>
void expect_invalid(F&& f, const std::string& name, const std::string& fragment) {
  try {
    f();
    ADD_FAILURE() << "no exception; expected one mentioning '" << fragment << "'";
  } catch (const invalid_argument& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(name), std::string::npos) << what;
    EXPECT_NE(what.find(fragment), std::string::npos) << what;
    EXPECT_EQ(what.find('\n'), std::string::npos) << "message has a newline: " << what;
  }
}

std::vector<double> iota_values(std::size_t n) {
  std::vector<double> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = 0.25 * static_cast<double>(i) - 3.5;
  return v;
}

// A .npy file with an arbitrary header dict and data (version 1.0 unless given).
std::string npy_bytes(const std::string& dict, const std::string& data, int major = 1) {
  std::string header = dict;
  const std::size_t prefix = major == 1 ? 10 : 12;
  while ((prefix + header.size() + 1) % 64 != 0) header.push_back(' ');
  header.push_back('\n');
  std::string out("\x93NUMPY", 6);
  out.push_back(static_cast<char>(major));
  out.push_back(0);
  const std::size_t n = header.size();
  out.push_back(static_cast<char>(n & 0xff));
  out.push_back(static_cast<char>((n >> 8) & 0xff));
  if (major != 1) {
    out.push_back(static_cast<char>((n >> 16) & 0xff));
    out.push_back(static_cast<char>((n >> 24) & 0xff));
  }
  return out + header + data;
}

std::string f8_data(const std::vector<double>& v) {
  std::string s(v.size() * 8, '\0');
  std::memcpy(s.data(), v.data(), s.size());
  return s;
}

}  // namespace

// ---- dtype names --------------------------------------------------------------

TEST(io_test, dtype_names) {
  EXPECT_EQ(measattn::to_string(DType::f32), "f32");
  EXPECT_EQ(measattn::to_string(DType::f64), "f64");
  EXPECT_EQ(measattn::parse_dtype("f32"), DType::f32);
  EXPECT_EQ(measattn::parse_dtype("f64"), DType::f64);
  expect_invalid([] { measattn::parse_dtype("f16", "--dtype"); }, "--dtype", "f16");
}

// ---- .npy round trips -----------------------------------------------------------

TEST(io_test, npy_round_trip_shapes_and_dtypes) {
  TempDir dir;
  const std::vector<std::vector<std::int64_t>> shapes = {{7}, {3, 5}, {2, 3, 4}, {0, 3}, {}};
  for (DType t : {DType::f64, DType::f32}) {
    for (const auto& shape : shapes) {
      std::int64_t count = 1;
      for (auto d : shape) count *= d;
      const auto values = iota_values(static_cast<std::size_t>(count));
      const std::string path = dir.file("a.npy");
      measattn::write_npy(path, values, shape, t);
      const auto a = measattn::read_npy(path);
      EXPECT_EQ(a.shape, shape);
      EXPECT_EQ(a.dtype, t);
      EXPECT_EQ(a.values, values);  // exactly representable in float32 too
      // numpy's alignment: the data starts at a multiple of 64 bytes.
      const std::string bytes = measattn::read_file(path);
      EXPECT_EQ((bytes.size() - count * (t == DType::f32 ? 4 : 8)) % 64, 0u);
    }
  }
}

TEST(io_test, npy_round_trip_matrix_and_vector) {
  TempDir dir;
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal;
  Matrix<double> m(4, 3);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = normal(rng);
  measattn::write_npy(dir.file("m.npy"), m);
  EXPECT_EQ(measattn::read_npy_matrix<double>(dir.file("m.npy"), "--tokens"), m);
  const Matrix<float> mf = m.cast<float>();
  measattn::write_npy(dir.file("mf.npy"), mf);
  EXPECT_EQ(measattn::read_npy(dir.file("mf.npy")).dtype, DType::f32);
  EXPECT_EQ(measattn::read_npy_matrix<float>(dir.file("mf.npy"), "--tokens"), mf);
  const Vector<double> v = m.col(0);
  measattn::write_npy(dir.file("v.npy"), v);
  EXPECT_EQ(measattn::read_npy(dir.file("v.npy")).shape, (std::vector<std::int64_t>{4}));
  EXPECT_EQ(measattn::read_npy_vector<double>(dir.file("v.npy"), "--weights"), v);
  // A 1-D array is an n x 1 matrix; an n x 1 matrix is a vector.
  EXPECT_EQ(measattn::read_npy_matrix<double>(dir.file("v.npy"), "x").cols(), 1);
  measattn::write_npy(dir.file("c.npy"), Matrix<double>(m.col(1)));
  EXPECT_EQ(measattn::read_npy_vector<double>(dir.file("c.npy"), "w"), Vector<double>(m.col(1)));
}

TEST(io_test, npy_versions_2_and_3_and_header_variants) {
  const auto values = iota_values(6);
  for (int major : {1, 2, 3}) {
    const auto a =
        measattn::parse_npy(npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }",
                                      f8_data(values), major),
                            "v.npy");
    EXPECT_EQ(a.shape, (std::vector<std::int64_t>{2, 3}));
    EXPECT_EQ(a.values, values);
  }
  // Key order, double quotes, no trailing comma, 1-tuple, Python 2 longs.
  const auto b = measattn::parse_npy(
      npy_bytes("{\"shape\": (6L,), \"fortran_order\": False, \"descr\": \"<f8\"}",
                f8_data(values)),
      "b.npy");
  EXPECT_EQ(b.shape, (std::vector<std::int64_t>{6}));
  // A 0-d array holds one value.
  const auto c = measattn::parse_npy(
      npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (), }", f8_data({2.5})),
      "c.npy");
  EXPECT_TRUE(c.shape.empty());
  EXPECT_EQ(c.values, std::vector<double>{2.5});
}

// ---- malformed .npy -------------------------------------------------------------

TEST(io_test, npy_malformed_inputs_name_the_file) {
  const std::string good_dict = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }";
  const std::string data = f8_data(iota_values(6));
  const std::string good = npy_bytes(good_dict, data);
  struct Case {
    std::string bytes, fragment;
  };
  std::string bad_magic = good;
  bad_magic[1] = 'X';
  std::string bad_version = good;
  bad_version[6] = 4;
  std::string bad_minor = good;
  bad_minor[7] = 1;
  std::string long_header = good;
  long_header[8] = '\xff';
  long_header[9] = '\xff';
  const std::vector<Case> cases = {
      {"", "bad magic"},
      {"\x93NUM", "bad magic"},
      {bad_magic, "bad magic"},
      {std::string("\x93NUMPY\x01", 7), "truncated"},
      {std::string("\x93NUMPY\x01\x00\x10", 9), "truncated"},
      {bad_version, "version 4.0"},
      {bad_minor, "version 1.1"},
      {long_header, "truncated .npy header"},
      {good.substr(0, good.size() - 1), "truncated"},
      {good.substr(0, good.size() - 8 * 6), "truncated"},
      {good + std::string(8, '\0'), "trailing bytes"},
      {npy_bytes("{'descr': '>f8', 'fortran_order': False, 'shape': (2, 3), }", data),
       "big-endian"},
      {npy_bytes("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", data),
       "big-endian"},
      {npy_bytes("{'descr': '<i8', 'fortran_order': False, 'shape': (2, 3), }", data), "'<i8'"},
      {npy_bytes("{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }", data), "'<i4'"},
      {npy_bytes("{'descr': '<c16', 'fortran_order': False, 'shape': (3,), }", data), "'<c16'"},
      {npy_bytes("{'descr': '|O', 'fortran_order': False, 'shape': (2, 3), }", data), "'|O'"},
      {npy_bytes("{'descr': '<f2', 'fortran_order': False, 'shape': (2, 3), }", data), "'<f2'"},
      {npy_bytes("{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (6,), }", data),
       "structured dtypes"},
      {npy_bytes("{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }", data), "Fortran"},
      {npy_bytes("{'descr': '<f8', 'fortran_order': Maybe, 'shape': (2, 3), }", data),
       "True or False"},
      {npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (3, 3), }", data), "truncated"},
      {npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (2, -3), }", data),
       "non-negative"},
      {npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3.0), }", data), "shape"},
      {npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': [2, 3], }", data), "'('"},
      {npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }",
                 data),
       "too large"},
      {npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (9223372036854775807, 2), }",
                 data),
       "too large"},
      {npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999999999999,), }",
                 data),
       "too large"},
      {npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (0, 1099511627777), }", ""),
       "too large"},
      {npy_bytes("{'descr': '<f8', 'fortran_order': False, }", data), "missing key 'shape'"},
      {npy_bytes("{'fortran_order': False, 'shape': (2, 3), }", data), "missing key 'descr'"},
      {npy_bytes("{'descr': '<f8', 'shape': (2, 3), }", data), "missing key 'fortran_order'"},
      {npy_bytes("{'descr': '<f8', 'descr': '<f8', 'fortran_order': False, 'shape': (6,)}", data),
       "duplicate"},
      {npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), 'x': 1}", data),
       "unexpected key"},
      {npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), } junk", data),
       "after the header"},
      {npy_bytes("garbage", data), "malformed"},
      {npy_bytes("{'descr: '<f8'", data), "malformed"},
      {npy_bytes("{'descr': '<f8' 'fortran_order': False}", data), "malformed"},
      {npy_bytes("", data), "malformed"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.fragment);
    expect_invalid([&] { measattn::parse_npy(c.bytes, "bad.npy"); }, "bad.npy", c.fragment);
  }
  // The same through a file path.
  TempDir dir;
  write_raw(dir.file("bad_file.npy"), bad_magic);
  expect_invalid([&] { measattn::read_npy(dir.file("bad_file.npy")); }, "bad_file.npy",
                 "bad magic");
}

TEST(io_test, npy_matrix_and_vector_checks) {
  TempDir dir;
  const std::string path = dir.file("nan.npy");
  auto values = iota_values(6);
  values[4] = std::nan("");
  measattn::write_npy(path, values, {2, 3});
  expect_invalid([&] { measattn::read_npy_matrix<double>(path, "--tokens"); }, "--tokens",
                 "value 4 (row 1, column 1) is NaN");
  values[4] = -INFINITY;
  measattn::write_npy(path, values, {6});
  expect_invalid([&] { measattn::read_npy_vector<double>(path, "--weights"); }, "nan.npy",
                 "value 4 is infinite");
  values[4] = 1e300;  // finite in double, not in float
  measattn::write_npy(path, values, {6});
  EXPECT_NO_THROW(measattn::read_npy_vector<double>(path, "--weights"));
  expect_invalid([&] { measattn::read_npy_vector<float>(path, "--weights"); }, "--weights",
                 "overflows float32");
  // Rank checks.
  measattn::write_npy(dir.file("3d.npy"), iota_values(8), {2, 2, 2});
  expect_invalid([&] { measattn::read_npy_matrix<double>(dir.file("3d.npy"), "--tokens"); },
                 "3d.npy", "expected a 1-D or 2-D array, got shape (2, 2, 2)");
  measattn::write_npy(dir.file("2d.npy"), iota_values(6), {2, 3});
  expect_invalid([&] { measattn::read_npy_vector<double>(dir.file("2d.npy"), "--weights"); },
                 "--weights", "expected a 1-D array");
  // Format errors carry the field too.
  expect_invalid([&] { measattn::read_npy_matrix<double>(dir.file("missing.npy"), "--tokens"); },
                 "--tokens", "missing.npy");
}

TEST(io_test, files_missing_directory_and_atomic_writes) {
  TempDir dir;
  expect_invalid([&] { measattn::read_file(dir.file("nope.npy")); }, "nope.npy", "cannot open");
  expect_invalid([&] { measattn::read_file(dir.path().string()); }, dir.path().string(),
                 "directory");
  expect_invalid([&] { measattn::write_file_atomic(dir.path().string(), "x"); },
                 dir.path().string(), "directory");
  expect_invalid([&] { measattn::write_file_atomic(dir.file("no/such/dir/x.npy"), "x"); }, "x.npy",
                 "temporary");
  const std::string path = dir.file("out.bin");
  measattn::write_file_atomic(path, "first");
  measattn::write_file_atomic(path, std::string("second\0", 7));
  EXPECT_EQ(measattn::read_file(path), std::string("second\0", 7));
  // Only the target remains: no temporary files left behind.
  int files = 0;
  for (const auto& entry : fs::directory_iterator(dir.path())) {
    (void)entry;
    ++files;
  }
  EXPECT_EQ(files, 1);
  EXPECT_EQ(fs::status(path).permissions() & fs::perms::owner_read, fs::perms::owner_read);
}

// ---- models -----------------------------------------------------------------------

namespace {

template <class Scalar>
void expect_same_model(const Model<Scalar>& a, const Model<Scalar>& b) {
  EXPECT_EQ(a.num_heads, b.num_heads);
  EXPECT_EQ(a.potential, b.potential);
  EXPECT_EQ(a.scale, b.scale);
  EXPECT_EQ(a.w_q, b.w_q);
  EXPECT_EQ(a.w_k, b.w_k);
  EXPECT_EQ(a.w_v, b.w_v);
  EXPECT_EQ(a.w_o, b.w_o);
  EXPECT_EQ(a.b_q, b.b_q);
  EXPECT_EQ(a.b_k, b.b_k);
  EXPECT_EQ(a.b_v, b.b_v);
  EXPECT_EQ(a.b_o, b.b_o);
}

Model<double> random_separate_model(Index e, Index dq, Index dkv, Index dout, Index heads,
                                    bool bias, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  auto fill = [&](auto& m) {
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = normal(rng);
  };
  Model<double> m;
  m.num_heads = heads;
  m.w_q.resize(e, dq);
  m.w_k.resize(e, dkv);
  m.w_v.resize(e, dkv);
  m.w_o.resize(dout, e);
  fill(m.w_q);
  fill(m.w_k);
  fill(m.w_v);
  fill(m.w_o);
  if (bias) {
    m.b_q.resize(e);
    m.b_k.resize(e);
    m.b_v.resize(e);
    m.b_o.resize(dout);
    fill(m.b_q);
    fill(m.b_k);
    fill(m.b_v);
    fill(m.b_o);
  }
  return m;
}

}  // namespace

TEST(io_test, model_round_trips) {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  for (bool bias : {false, true}) {
    for (Index heads : {1, 2, 4}) {
      auto m = Model<double>::random(8, heads, bias, 11 + static_cast<unsigned>(heads));
      measattn::save_model(path, m);
      expect_same_model(measattn::load_model<double>(path), m);
      // F32 file read as float: the float model exactly.
      const Model<float> mf = m.cast<float>();
      measattn::save_model(path, mf, DType::f32);
      expect_same_model(measattn::load_model<float>(path), mf);
      // F32 file read as double: exact widening.
      expect_same_model(measattn::load_model<double>(path), mf.cast<double>());
    }
  }
  auto l2 = Model<double>::random(6, 3, true, 5, measattn::Potential::l2);
  l2.scale = 0.1 + 1.0 / 3.0;
  measattn::save_model(path, l2);
  expect_same_model(measattn::load_model<double>(path), l2);
  const auto bytes = measattn::read_file(path);
  std::uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  const json header = json::parse(bytes.substr(8, n));
  EXPECT_EQ(header["__metadata__"]["num_heads"], "3");
  EXPECT_EQ(header["__metadata__"]["potential"], "l2");
  EXPECT_TRUE(header.contains("in_proj_weight"));
  // Partial biases: the missing ones are saved as zeros.
  auto partial = Model<double>::random(4, 2, false, 9);
  partial.b_k = Vector<double>::Constant(4, 0.5);
  measattn::save_model(path, partial);
  const auto back = measattn::load_model<double>(path);
  EXPECT_EQ(back.b_q, Vector<double>::Zero(4));
  EXPECT_EQ(back.b_k, partial.b_k);
}

TEST(io_test, model_round_trip_separate_projections) {
  TempDir dir;
  const std::string path = dir.file("sep.safetensors");
  for (bool bias : {false, true}) {
    const auto m = random_separate_model(6, 6, 5, 3, 2, bias, 21);
    measattn::save_model(path, m);
    const json header = [&] {
      const auto bytes = measattn::read_file(path);
      std::uint64_t n;
      std::memcpy(&n, bytes.data(), 8);
      return json::parse(bytes.substr(8, n));
    }();
    EXPECT_TRUE(header.contains("q_proj_weight"));
    EXPECT_FALSE(header.contains("in_proj_weight"));
    EXPECT_EQ(header["k_proj_weight"]["shape"], json({6, 5}));
    expect_same_model(measattn::load_model<double>(path), m);
    measattn::save_model(path, m.cast<float>(), DType::f32);
    expect_same_model(measattn::load_model<float>(path), m.cast<float>());
  }
  // A query dimension different from E also round-trips (q_proj_weight [E, d_q]).
  const auto odd = random_separate_model(4, 7, 5, 7, 2, true, 22);
  measattn::save_model(path, odd);
  expect_same_model(measattn::load_model<double>(path), odd);
  // Custom potentials cannot be saved.
  auto custom = Model<double>::random(4, 1, false, 1);
  custom.potential = measattn::Potential::custom;
  custom.custom_potential = [](const double*, const double*, Index) { return 0.0; };
  expect_invalid([&] { measattn::save_model(path, custom); }, "sep.safetensors", "custom");
}

// ---- malformed safetensors ----------------------------------------------------------

namespace {

struct StTensor {
  std::string name, dtype;
  std::vector<std::int64_t> shape;
  std::vector<double> values;  // written in dtype (F32/F64), or raw bytes count for others
};

// Builds a safetensors file; `edit` may modify the header JSON before writing.
std::string st_bytes(const std::vector<StTensor>& tensors, const json& metadata,
                     const std::function<void(json&)>& edit = {}) {
  json header = json::object();
  if (!metadata.is_null()) header["__metadata__"] = metadata;
  std::string data;
  for (const auto& t : tensors) {
    const std::size_t begin = data.size();
    for (double v : t.values) {
      if (t.dtype == "F32") {
        const float f = static_cast<float>(v);
        data.append(reinterpret_cast<const char*>(&f), 4);
      } else if (t.dtype == "F64") {
        data.append(reinterpret_cast<const char*>(&v), 8);
      } else {
        data.push_back(static_cast<char>(v));  // 1-byte types
      }
    }
    header[t.name] = {
        {"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {begin, data.size()}}};
  }
  if (edit) edit(header);
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  const std::uint64_t n = text.size();
  std::memcpy(out.data(), &n, 8);
  return out + text + data;
}

std::vector<double> ones(std::size_t n, double scale = 0.01) {
  std::vector<double> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = scale * static_cast<double>(i % 17) - 0.05;
  return v;
}

// A valid 32-dimensional, 4-head model in PyTorch's in_proj layout.
std::vector<StTensor> mha_tensors(Index e = 32, bool bias = true) {
  const auto E = static_cast<std::int64_t>(e);
  std::vector<StTensor> t = {
      {"in_proj_weight", "F32", {3 * E, E}, ones(static_cast<std::size_t>(3 * E * E))},
      {"out_proj.weight", "F32", {E, E}, ones(static_cast<std::size_t>(E * E))}};
  if (bias) {
    t.push_back({"in_proj_bias", "F32", {3 * E}, ones(static_cast<std::size_t>(3 * E))});
    t.push_back({"out_proj.bias", "F32", {E}, ones(static_cast<std::size_t>(E))});
  }
  return t;
}

const json kMeta = {{"num_heads", "4"}};

StTensor* find(std::vector<StTensor>& ts, const std::string& name) {
  for (auto& t : ts) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

}  // namespace

TEST(io_test, safetensors_valid_variants) {
  const auto m = measattn::parse_model<double>(st_bytes(mha_tensors(), kMeta), "ok.safetensors");
  EXPECT_EQ(m.embed_dim(), 32);
  EXPECT_EQ(m.num_heads, 4);
  EXPECT_EQ(m.potential, measattn::Potential::dot);
  EXPECT_EQ(m.scale, 0.0);
  EXPECT_EQ(m.w_k(0, 0), static_cast<double>(static_cast<float>(ones(32 * 96)[32 * 32])));
  const auto nb = measattn::parse_model<float>(
      st_bytes(mha_tensors(32, false),
               {{"num_heads", "2"}, {"potential", "l2"}, {"scale", "2.5"}, {"format", "pt"}}),
      "nb.safetensors");
  EXPECT_EQ(nb.potential, measattn::Potential::l2);
  EXPECT_EQ(nb.scale, 2.5f);
  EXPECT_EQ(nb.b_q.size(), 0);
  EXPECT_EQ(nb.b_o.size(), 0);
  // PyTorch's kdim/vdim layout: q [E, E], k [E, kdim], v [E, vdim], in_proj_bias [3E].
  const std::vector<StTensor> sep = {{"q_proj_weight", "F64", {8, 8}, ones(64)},
                                     {"k_proj_weight", "F64", {8, 5}, ones(40)},
                                     {"v_proj_weight", "F64", {8, 5}, ones(40)},
                                     {"in_proj_bias", "F64", {24}, ones(24)},
                                     {"out_proj.weight", "F64", {8, 8}, ones(64)}};
  const auto ms = measattn::parse_model<double>(st_bytes(sep, kMeta), "sep.safetensors");
  EXPECT_EQ(ms.key_dim(), 5);
  EXPECT_EQ(ms.query_dim(), 8);
}

TEST(io_test, safetensors_malformed_inputs_name_the_file) {
  const std::string name = "model.safetensors";
  auto expect_bad = [&](const std::string& bytes, const std::string& fragment) {
    SCOPED_TRACE(fragment);
    expect_invalid([&] { measattn::parse_model<double>(bytes, name); }, name, fragment);
    expect_invalid([&] { measattn::parse_model<float>(bytes, name); }, name, fragment);
  };
  const std::string good = st_bytes(mha_tensors(), kMeta);
  // Header length.
  expect_bad("", "shorter than");
  expect_bad(good.substr(0, 7), "shorter than");
  {
    std::string b = good;
    const std::uint64_t n = good.size();
    std::memcpy(b.data(), &n, 8);
    expect_bad(b, "exceeds the file size");
    const std::uint64_t huge = ~std::uint64_t{0};
    std::memcpy(b.data(), &huge, 8);
    expect_bad(b, "exceeds the file size");
    const std::uint64_t zero = 0;
    std::memcpy(b.data(), &zero, 8);
    expect_bad(b, "too small");
  }
  expect_bad(good.substr(0, 40), "exceeds the file size");
  // JSON.
  {
    std::string b = good;
    b[8] = '[';
    expect_bad(b, "not valid JSON");
    std::string text = "{\"a\": 1,,}";
    std::string c(8, '\0');
    const std::uint64_t n = text.size();
    std::memcpy(c.data(), &n, 8);
    expect_bad(c + text, "not valid JSON");
    text = "[1, 2, 3]   ";
    const std::uint64_t n2 = text.size();
    std::memcpy(c.data(), &n2, 8);
    expect_bad(c + text, "not a JSON object");
    text = "{\"x\":" + std::string(100000, '[') + std::string(100000, ']') + "}";
    const std::uint64_t n3 = text.size();
    std::memcpy(c.data(), &n3, 8);
    expect_bad(c + text, "nested too deeply");
  }
  // Metadata.
  expect_bad(st_bytes(mha_tensors(), nullptr), "missing num_heads");
  expect_bad(st_bytes(mha_tensors(), json::object()), "missing num_heads");
  expect_bad(st_bytes(mha_tensors(), {{"num_heads", 4}}), "not a string");
  expect_bad(st_bytes(mha_tensors(), {{"num_heads", "0"}}), "positive integer");
  expect_bad(st_bytes(mha_tensors(), {{"num_heads", "-4"}}), "positive integer");
  expect_bad(st_bytes(mha_tensors(), {{"num_heads", "4.0"}}), "positive integer");
  expect_bad(st_bytes(mha_tensors(), {{"num_heads", "99999999999999999999"}}), "positive integer");
  expect_bad(st_bytes(mha_tensors(), {{"num_heads", "5"}}), "does not divide");
  expect_bad(st_bytes(mha_tensors(), {{"num_heads", "64"}}), "does not divide");
  expect_bad(st_bytes(mha_tensors(), {{"num_heads", "4"}, {"potential", "cosh"}}),
             "expected 'dot', 'l2' or 'cosine'");
  expect_bad(st_bytes(mha_tensors(), {{"num_heads", "4"}, {"scale", "-1"}}), "scale");
  expect_bad(st_bytes(mha_tensors(), {{"num_heads", "4"}, {"scale", "nan"}}), "scale");
  expect_bad(st_bytes(mha_tensors(), {{"num_heads", "4"}, {"scale", "1e999"}}), "scale");
  expect_bad(st_bytes(mha_tensors(), {{"num_heads", "4"}, {"scale", "1.5x"}}), "scale");
  expect_bad(st_bytes(mha_tensors(), {{"num_heads", "4"}, {"scale", ""}}), "scale");
  expect_bad(st_bytes(mha_tensors(), json::array()), "__metadata__ is not an object");
  // Shapes.
  {
    auto t = mha_tensors();
    find(t, "in_proj_weight")->shape = {96, 31};
    find(t, "in_proj_weight")->values.resize(96 * 31);
    expect_bad(st_bytes(t, kMeta),
               "in_proj_weight: expected shape [3E, E] = [96, 32], got [96, 31]");
  }
  {
    auto t = mha_tensors();
    find(t, "in_proj_weight")->shape = {95, 32};
    find(t, "in_proj_weight")->values.resize(95 * 32);
    expect_bad(st_bytes(t, kMeta),
               "in_proj_weight: expected shape [3E, E] = [96, 32], got [95, 32]");
  }
  {
    auto t = mha_tensors();
    find(t, "in_proj_weight")->shape = {3072};
    expect_bad(st_bytes(t, kMeta), "in_proj_weight: expected shape [3E, E], got [3072]");
  }
  {
    auto t = mha_tensors();
    find(t, "in_proj_bias")->shape = {95};
    find(t, "in_proj_bias")->values.resize(95);
    expect_bad(st_bytes(t, kMeta), "in_proj_bias: expected shape [3E] = [96], got [95]");
  }
  {
    auto t = mha_tensors();
    find(t, "out_proj.weight")->shape = {32, 16};
    find(t, "out_proj.weight")->values.resize(32 * 16);
    expect_bad(st_bytes(t, kMeta), "out_proj.weight: expected shape [E_out, E] = [E_out, 32]");
  }
  {
    auto t = mha_tensors();
    find(t, "out_proj.bias")->shape = {31};
    find(t, "out_proj.bias")->values.resize(31);
    expect_bad(st_bytes(t, kMeta), "out_proj.bias: expected shape [E_out] = [32], got [31]");
  }
  // Missing, extra and conflicting tensors.
  {
    auto t = mha_tensors();
    t.erase(t.begin());
    expect_bad(st_bytes(t, kMeta), "missing tensor in_proj_weight");
  }
  {
    auto t = mha_tensors();
    t.erase(t.begin() + 1);
    expect_bad(st_bytes(t, kMeta), "missing tensor out_proj.weight");
  }
  {
    auto t = mha_tensors();
    t.push_back({"bias_k", "F32", {1, 1, 32}, ones(32)});
    expect_bad(st_bytes(t, kMeta), "unexpected tensor 'bias_k'");
  }
  {
    auto t = mha_tensors();
    t.push_back({"q_proj_weight", "F32", {32, 32}, ones(32 * 32)});
    expect_bad(st_bytes(t, kMeta), "both present");
  }
  {
    const std::vector<StTensor> sep = {{"q_proj_weight", "F64", {8, 8}, ones(64)},
                                       {"k_proj_weight", "F64", {8, 5}, ones(40)},
                                       {"v_proj_weight", "F64", {8, 6}, ones(48)},
                                       {"out_proj.weight", "F64", {8, 8}, ones(64)}};
    expect_bad(st_bytes(sep, kMeta), "vdim 6 differs from kdim 5");
    auto missing = sep;
    missing.erase(missing.begin() + 1);
    expect_bad(st_bytes(missing, kMeta), "missing tensor k_proj_weight");
    auto wrong_rows = sep;
    wrong_rows[1].shape = {5, 8};
    expect_bad(st_bytes(wrong_rows, kMeta), "k_proj_weight: expected shape [E, kdim] = [8, kdim]");
  }
  // Dtypes and data.
  {
    auto t = mha_tensors();
    find(t, "out_proj.bias")->dtype = "I8";
    find(t, "out_proj.bias")->values.resize(32);
    expect_bad(st_bytes(t, kMeta), "out_proj.bias: dtype I8 is not supported");
  }
  for (const char* dtype : {"F16", "BF16", "I64", "BOOL", "U8"}) {
    auto t = mha_tensors();
    expect_bad(st_bytes(t, kMeta, [&](json& h) { h["out_proj.bias"]["dtype"] = dtype; }),
               std::string("dtype ") + dtype + " is not supported");
  }
  {
    auto t = mha_tensors();
    find(t, "out_proj.bias")->values[3] = NAN;
    expect_bad(st_bytes(t, kMeta), "out_proj.bias: entry 3 is NaN");
    find(t, "out_proj.bias")->values[3] = INFINITY;
    expect_bad(st_bytes(t, kMeta), "out_proj.bias: entry 3 is infinite");
  }
  {
    auto t = mha_tensors();
    for (auto& x : t) x.dtype = "F64";
    find(t, "out_proj.bias")->values[3] = 1e300;
    const std::string b = st_bytes(t, kMeta);
    EXPECT_NO_THROW(measattn::parse_model<double>(b, name));
    expect_invalid([&] { measattn::parse_model<float>(b, name); }, name, "overflows float32");
  }
  const auto edit = [&](const std::function<void(json&)>& f) {
    return st_bytes(mha_tensors(), kMeta, f);
  };
  expect_bad(edit([](json& h) {
               h["out_proj.bias"]["data_offsets"] = {0, 1u << 30};
             }),
             "exceed the data buffer");
  expect_bad(edit([](json& h) {
               h["out_proj.bias"]["data_offsets"] = {128, 0};
             }),
             "begin after they end");
  expect_bad(edit([](json& h) { h["out_proj.bias"]["data_offsets"] = {0, 64}; }), "does not match");
  expect_bad(edit([](json& h) {
               h["out_proj.bias"]["data_offsets"] = {-1, 64};
             }),
             "data_offsets must be");
  expect_bad(edit([](json& h) { h["out_proj.bias"]["data_offsets"] = {0}; }),
             "data_offsets must be");
  expect_bad(edit([](json& h) { h["out_proj.bias"].erase("data_offsets"); }),
             "data_offsets must be");
  expect_bad(edit([](json& h) { h["out_proj.bias"]["shape"] = {16}; }), "does not match");
  expect_bad(edit([](json& h) { h["out_proj.bias"]["shape"] = {-32}; }), "non-negative");
  expect_bad(edit([](json& h) { h["out_proj.bias"]["shape"] = "32"; }), "shape");
  expect_bad(edit([](json& h) { h["out_proj.bias"]["shape"] = {std::uint64_t{1} << 41}; }),
             "too large");
  expect_bad(edit([](json& h) {
               h["out_proj.bias"]["shape"] = {std::uint64_t{1} << 32, std::uint64_t{1} << 32};
             }),
             "does not match");
  expect_bad(edit([](json& h) { h["out_proj.bias"].erase("dtype"); }), "dtype");
  expect_bad(edit([](json& h) { h["out_proj.bias"] = 3; }), "not an object");
}

TEST(io_test, load_model_from_files) {
  TempDir dir;
  expect_invalid([&] { measattn::load_model<double>(dir.file("absent.safetensors")); },
                 "absent.safetensors", "cannot open");
  expect_invalid([&] { measattn::load_model<double>(dir.path().string()); }, dir.path().string(),
                 "directory");
  write_raw(dir.file("m.safetensors"), st_bytes(mha_tensors(), {{"num_heads", "3"}}));
  expect_invalid([&] { measattn::load_model<double>(dir.file("m.safetensors")); }, "m.safetensors",
                 "num_heads: 3 does not divide");
}

// ---- bounded reads: devices, FIFOs, huge declared sizes -----------------------------

namespace {

// A FIFO in `dir` fed `bytes` by a thread (then closed). The writer ignores a
// reader that stops early (SIGPIPE is ignored for the whole test program).
class Fifo {
 public:
  Fifo(const std::string& path, std::string bytes, std::size_t repeat_zeros = 0)
      : path_(path), bytes_(std::move(bytes)), zeros_(repeat_zeros) {
    std::signal(SIGPIPE, SIG_IGN);
    if (::mkfifo(path.c_str(), 0600) != 0) throw std::runtime_error("mkfifo failed");
    writer_ = std::thread([this] {
      const int fd = ::open(path_.c_str(), O_WRONLY);
      if (fd < 0) return;
      if (write_all(fd, bytes_.data(), bytes_.size())) {
        const std::string zeros(1 << 16, '\0');
        for (std::size_t sent = 0; sent < zeros_; sent += zeros.size()) {
          if (!write_all(fd, zeros.data(), zeros.size())) break;
        }
      }
      ::close(fd);
    });
  }
  ~Fifo() {
    writer_.join();
    ::unlink(path_.c_str());
  }
  const std::string& path() const { return path_; }

 private:
  static bool write_all(int fd, const char* p, std::size_t n) {
    while (n > 0) {
      const ssize_t w = ::write(fd, p, n);
      if (w <= 0) return false;
      p += w;
      n -= static_cast<std::size_t>(w);
    }
    return true;
  }
  std::string path_, bytes_;
  std::size_t zeros_;
  std::thread writer_;
};

}  // namespace

TEST(io_test, npy_from_devices_and_fifos_is_bounded) {
  TempDir dir;
  // /dev/zero and /dev/urandom fail at the magic, /dev/null is empty.
  expect_invalid([] { measattn::read_npy("/dev/zero"); }, "/dev/zero", "bad magic");
  expect_invalid([] { measattn::read_npy("/dev/urandom"); }, "/dev/urandom", "bad magic");
  expect_invalid([] { measattn::read_npy("/dev/null"); }, "/dev/null", "bad magic");
  const std::string good = npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }",
                                     f8_data(iota_values(6)));
  {
    Fifo fifo(dir.file("ok.fifo"), good);
    const auto a = measattn::read_npy(fifo.path());
    EXPECT_EQ(a.values, iota_values(6));
  }
  {
    // A valid header followed by an endless stream: refused after one byte more.
    Fifo fifo(dir.file("endless.fifo"), good, std::size_t{1} << 34);
    expect_invalid([&] { measattn::read_npy(fifo.path()); }, "endless.fifo", "trailing bytes");
  }
  {
    Fifo fifo(dir.file("short.fifo"), good.substr(0, good.size() - 3));
    expect_invalid([&] { measattn::read_npy(fifo.path()); }, "short.fifo", "truncated");
  }
  {
    Fifo fifo(dir.file("header.fifo"), good.substr(0, 40));
    expect_invalid([&] { measattn::read_npy(fifo.path()); }, "header.fifo",
                   "truncated .npy header");
  }
  {
    // A version 2.0 header length of 4 GiB - 1 is refused before reading it.
    std::string big("\x93NUMPY\x02\x00\xff\xff\xff\xff", 12);
    Fifo fifo(dir.file("big.fifo"), big, std::size_t{1} << 34);
    expect_invalid([&] { measattn::read_npy(fifo.path()); }, "big.fifo", "exceeds 65536 bytes");
  }
  {
    // A stream declaring 2^43 bytes of data: refused before any is read.
    Fifo fifo(
        dir.file("huge.fifo"),
        npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (1099511627776,), }", ""),
        std::size_t{1} << 34);
    expect_invalid([&] { measattn::read_npy(fifo.path()); }, "huge.fifo",
                   "more than this machine's memory");
  }
}

TEST(io_test, npy_sparse_file_larger_than_memory_is_refused_before_reading) {
  TempDir dir;
  const std::string path = dir.file("sparse.npy");
  const std::string header = npy_bytes(
      "{'descr': '<f8', 'fortran_order': False, 'shape': (137438953472,), }", "");  // 2^40 bytes
  write_raw(path, header);
  fs::resize_file(path, header.size() + (std::uintmax_t{1} << 40));
  expect_invalid([&] { measattn::read_npy(path); }, "sparse.npy",
                 "more than this machine's memory");
}

TEST(io_test, read_file_is_bounded) {
  TempDir dir;
  expect_invalid([] { measattn::read_file("/dev/zero", 1000); }, "/dev/zero", "more than 1000");
  EXPECT_EQ(measattn::read_file("/dev/null"), "");
  write_raw(dir.file("f.bin"), std::string(2000, 'x'));
  EXPECT_EQ(measattn::read_file(dir.file("f.bin"), 2000).size(), 2000u);
  expect_invalid([&] { measattn::read_file(dir.file("f.bin"), 1999); }, "f.bin",
                 "more than the 1999 allowed");
  Fifo fifo(dir.file("f.fifo"), std::string(5000, 'y'));
  EXPECT_EQ(measattn::read_file(fifo.path()), std::string(5000, 'y'));
  // procfs files claim 0 bytes and have more: read as streams.
  EXPECT_NE(measattn::read_file("/proc/self/status").find("Name:"), std::string::npos);
  expect_invalid([] { measattn::read_npy("/proc/self/status"); }, "/proc/self/status", "bad magic");
  expect_invalid([] { measattn::load_model<double>("/proc/self/status"); }, "/proc/self/status",
                 "exceeds 100 MB");
}

namespace {

// The offsets of every tensor as written by st_bytes (in the order given).
std::vector<std::pair<std::uint64_t, std::uint64_t>> st_offsets(const std::vector<StTensor>& ts) {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> out;
  std::uint64_t at = 0;
  for (const auto& t : ts) {
    const std::uint64_t bytes = t.values.size() * (t.dtype == "F64" ? 8 : 4);
    out.emplace_back(at, at + bytes);
    at += bytes;
  }
  return out;
}

// A safetensors file with a raw header text and data.
std::string st_raw(const std::string& text, const std::string& data = "") {
  std::string out(8, '\0');
  const std::uint64_t n = text.size();
  std::memcpy(out.data(), &n, 8);
  return out + text + data;
}

}  // namespace

TEST(io_test, safetensors_offsets_must_tile_the_data_buffer) {
  const std::string name = "tile.safetensors";
  auto expect_bad = [&](const std::string& bytes, const std::string& fragment) {
    SCOPED_TRACE(fragment);
    expect_invalid([&] { measattn::parse_model<double>(bytes, name); }, name, fragment);
  };
  // Tensors: in_proj_weight [0, 12288), out_proj.weight [12288, 16384),
  // in_proj_bias [16384, 16768), out_proj.bias [16768, 16896).
  const auto t = mha_tensors();
  const auto off = st_offsets(t);
  ASSERT_EQ(off.back().second, 16896u);
  // In another order than in the file's data, but tiling: accepted (the format
  // allows any order).
  {
    std::vector<StTensor> swapped = {t[1], t[0], t[2], t[3]};
    const std::string b = st_bytes(swapped, kMeta, [&](json& h) {
      h["out_proj.weight"]["data_offsets"] = {0, 4096};
      h["in_proj_weight"]["data_offsets"] = {4096, 16384};
    });
    EXPECT_NO_THROW(measattn::parse_model<double>(b, name));
  }
  // Overlap: out_proj.bias moved into the range of in_proj_bias (same size as
  // the gap would be, so the total still matches).
  expect_bad(st_bytes(t, kMeta,
                      [](json& h) {
                        h["out_proj.bias"]["data_offsets"] = {16384 + 64, 16384 + 64 + 128};
                      }),
             "out_proj.bias: data_offsets [16448, 16576] overlap those of in_proj_bias");
  // Two tensors on the same bytes.
  expect_bad(st_bytes(t, kMeta,
                      [](json& h) {
                        h["out_proj.weight"]["data_offsets"] = {0, 4096};
                      }),
             "overlap those of");
  // A gap (and then the total would not match either).
  expect_bad(
      st_bytes(t, kMeta,
               [](json& h) {
                 h["out_proj.bias"]["data_offsets"] = {16768 + 8, 16896 + 8};
               }) +
          std::string(8, '\0'),
      "out_proj.bias: data_offsets [16776, 16904] leave a gap of 8 bytes after in_proj_bias");
  expect_bad(st_bytes(t, kMeta,
                      [](json& h) {
                        h["in_proj_weight"]["data_offsets"] = {16, 12288 + 16};
                        h["out_proj.weight"]["data_offsets"] = {12288 + 16, 16384 + 16};
                        h["in_proj_bias"]["data_offsets"] = {16384 + 16, 16768 + 16};
                        h["out_proj.bias"]["data_offsets"] = {16768 + 16, 16896 + 16};
                      }) +
                 std::string(16, '\0'),
             "in_proj_weight: data_offsets [16, 12304] leave a gap of 16 bytes after the start");
  // Trailing bytes after the last tensor.
  expect_bad(st_bytes(t, kMeta) + std::string(1, '\0'),
             "the data buffer has 16897 bytes, the tensors' data_offsets cover 16896 (trailing "
             "bytes)");
  // Zero-sized tensors anywhere in the tiling are fine: an empty extra tensor is
  // then refused only as unexpected.
  expect_bad(
      st_bytes(t, kMeta,
               [](json& h) {
                 h["bias_k"] = {{"dtype", "F32"}, {"shape", {0}}, {"data_offsets", {16384, 16384}}};
               }),
      "unexpected tensor 'bias_k'");
}

TEST(io_test, safetensors_hostile_json_headers) {
  const std::string name = "json.safetensors";
  auto expect_bad = [&](const std::string& bytes, const std::string& fragment) {
    SCOPED_TRACE(fragment);
    expect_invalid([&] { measattn::parse_model<double>(bytes, name); }, name, fragment);
    expect_invalid([&] { measattn::parse_model<float>(bytes, name); }, name, fragment);
  };
  expect_bad(st_raw("{\"__metadata__\": {\"num_heads\": \"2\", \"num_heads\": \"4\"}}"),
             "duplicate key 'num_heads'");
  {
    // The same tensor twice (a parser keeping the last one would see a gap).
    const auto t = mha_tensors();
    const std::string whole = st_bytes(t, kMeta);
    std::uint64_t n;
    std::memcpy(&n, whole.data(), 8);
    std::string text = whole.substr(8, n);
    ASSERT_NE(text.find("\"out_proj.bias\""), std::string::npos);
    text.insert(1, "\"out_proj.bias\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},");
    expect_bad(st_raw(text, whole.substr(8 + n)), "duplicate key 'out_proj.bias'");
  }
  expect_bad(st_raw("{\"a\": {\"dtype\": \"F32\", \"dtype\": \"F64\"}}"), "duplicate key 'dtype'");
  expect_bad(st_raw("{\"x\": " + std::string(5, '[') + std::string(5, ']') + "}"),
             "nested too deeply");
  expect_bad(st_raw([] {
               std::string s;
               for (int i = 0; i < (1 << 20); ++i) s += "{\"a\":";
               return s + "1" + std::string(1 << 20, '}');
             }()),
             "nested too deeply");
  expect_bad(st_raw("{\"x\": [" +
                    [] {
                      std::string s = "0";
                      for (int i = 0; i < (1 << 20) + 8; ++i) s += ",0";
                      return s;
                    }() +
                    "]}"),
             "more than 1048576 JSON values");
  expect_bad(st_raw("{\"__metadata__\": {\"num_heads\": 1e999999}}"), "not valid JSON");
  expect_bad(st_raw("{\"__metadata__\": {\"num_heads\": 123456789012345678901234567890}}"),
             "not a string");
  expect_bad(st_raw("{\"__metadata__\": {\"num_heads\": null}}"), "not a string");
  expect_bad(st_raw("{\"__metadata__\": {\"num_heads\": {\"a\": 1}}}"), "not a string");
  expect_bad(st_raw("{\"__metadata__\": {\"num_heads\": [\"4\"]}}"), "not a string");
  expect_bad(st_raw("{\"a\": {\"dtype\": \"F32\", \"shape\": [1e300], \"data_offsets\": [0, 4]}}"),
             "non-negative integers");
  expect_bad(st_raw("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": "
                    "[0, 184467440737095516150]}}"),
             "data_offsets must be");
  expect_bad(st_raw("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": "
                    "[18446744073709551615, 18446744073709551615]}}"),
             "exceed the data buffer");
  expect_bad(st_raw(std::string("{\"\xff\xfe\": 1}")), "not valid JSON");
  expect_bad(st_raw(std::string("{\"a\n\": 1}")), "not valid JSON");
  expect_bad(st_raw(std::string("{\"a\": 1}\0\0\0", 11)), "not valid JSON");
}

TEST(io_test, safetensors_from_devices_and_fifos_is_bounded) {
  TempDir dir;
  expect_invalid([] { measattn::load_model<double>("/dev/zero"); }, "/dev/zero", "too small");
  expect_invalid([] { measattn::load_model<double>("/dev/null"); }, "/dev/null", "shorter than");
  const std::string good = st_bytes(mha_tensors(), kMeta);
  {
    Fifo fifo(dir.file("ok.fifo"), good);
    EXPECT_EQ(measattn::load_model<double>(fifo.path()).embed_dim(), 32);
  }
  {
    Fifo fifo(dir.file("endless.fifo"), good, std::size_t{1} << 34);
    expect_invalid([&] { measattn::load_model<double>(fifo.path()); }, "endless.fifo",
                   "trailing bytes");
  }
  {
    Fifo fifo(dir.file("short.fifo"), good.substr(0, good.size() - 1));
    expect_invalid([&] { measattn::load_model<double>(fifo.path()); }, "short.fifo", "truncated");
  }
  {
    Fifo fifo(dir.file("header.fifo"), good.substr(0, 100));
    expect_invalid([&] { measattn::load_model<double>(fifo.path()); }, "header.fifo",
                   "exceeds the input");
  }
  {
    std::string big(8, '\0');
    const std::uint64_t n = 100'000'001;
    std::memcpy(big.data(), &n, 8);
    Fifo fifo(dir.file("big.fifo"), big, std::size_t{1} << 34);
    expect_invalid([&] { measattn::load_model<double>(fifo.path()); }, "big.fifo",
                   "exceeds 100 MB");
  }
  {
    // Offsets declaring 2^43 bytes of data: refused before any is read.
    const std::string text =
        "{\"a\": {\"dtype\": \"F64\", \"shape\": [1099511627776], \"data_offsets\": [0, "
        "8796093022208]}}";
    Fifo fifo(dir.file("huge.fifo"), st_raw(text), std::size_t{1} << 34);
    expect_invalid([&] { measattn::load_model<double>(fifo.path()); }, "huge.fifo",
                   "more than this machine's memory");
  }
}

// ---- write_file_atomic: special targets, links, failed writes, temporaries ---------

namespace {

std::vector<std::string> names_in(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

TEST(io_test, write_file_atomic_follows_symlinks) {
  TempDir dir;
  fs::create_directory(dir.path() / "real");
  write_raw(dir.file("real/y.bin"), "old");
  fs::create_symlink("real/y.bin", dir.path() / "link.bin");  // relative to the link's dir
  measattn::write_file_atomic(dir.file("link.bin"), "new");
  EXPECT_TRUE(fs::is_symlink(dir.path() / "link.bin"));
  EXPECT_EQ(fs::read_symlink(dir.path() / "link.bin"), fs::path("real/y.bin"));
  EXPECT_EQ(measattn::read_file(dir.file("real/y.bin")), "new");
  // A dangling link: the file appears where it points.
  fs::create_symlink("real/z.bin", dir.path() / "dangling.bin");
  measattn::write_file_atomic(dir.file("dangling.bin"), "z");
  EXPECT_TRUE(fs::is_symlink(dir.path() / "dangling.bin"));
  EXPECT_EQ(measattn::read_file(dir.file("real/z.bin")), "z");
  // No temporary anywhere.
  EXPECT_EQ(names_in(dir.path()), (std::vector<std::string>{"dangling.bin", "link.bin", "real"}));
  EXPECT_EQ(names_in(dir.path() / "real"), (std::vector<std::string>{"y.bin", "z.bin"}));
}

TEST(io_test, write_file_atomic_writes_through_devices_and_fifos) {
  TempDir dir;
  measattn::write_file_atomic("/dev/null", "discarded");
  struct stat st {};
  ASSERT_EQ(::stat("/dev/null", &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode));
  if (::access("/dev/full", W_OK) == 0) {
    expect_invalid([] { measattn::write_file_atomic("/dev/full", "x"); }, "/dev/full",
                   "No space left");
    ASSERT_EQ(::stat("/dev/full", &st), 0);
    EXPECT_TRUE(S_ISCHR(st.st_mode));
  }
  const std::string fifo = dir.file("pipe");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  // No reader: refused at once, never replaced, never waited for.
  expect_invalid([&] { measattn::write_file_atomic(fifo, "x"); }, "pipe", "no process is reading");
  ASSERT_EQ(::lstat(fifo.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  // With a reader: written through.
  const int fd = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK);
  ASSERT_GE(fd, 0);
  measattn::write_file_atomic(fifo, "through the pipe");
  char buffer[64] = {};
  EXPECT_EQ(::read(fd, buffer, sizeof buffer), 16);
  EXPECT_EQ(std::string(buffer), "through the pipe");
  // The reader goes away mid-write: EPIPE is an error, not a signal death.
  const auto old_pipe = ::signal(SIGPIPE, SIG_IGN);
  std::thread reader([fd] {
    char c;
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    while (::read(fd, &c, 1) != 1) {
    }
    ::close(fd);
  });
  expect_invalid([&] { measattn::write_file_atomic(fifo, std::string(1 << 20, 'p')); }, "pipe",
                 "EPIPE");
  reader.join();
  ::signal(SIGPIPE, old_pipe);
  ASSERT_EQ(::lstat(fifo.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  EXPECT_EQ(names_in(dir.path()), std::vector<std::string>{"pipe"});
}

TEST(io_test, write_file_atomic_failed_write_keeps_the_old_file) {
  TempDir dir;
  const std::string path = dir.file("keep.bin");
  measattn::write_file_atomic(path, "precious");
  // A file-size limit makes the write fail (EFBIG) part way.
  const auto old_xfsz = ::signal(SIGXFSZ, SIG_IGN);
  rlimit old{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  rlimit small = old;
  small.rlim_cur = 4096;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  bool threw = false;
  try {
    measattn::write_file_atomic(path, std::string(1 << 16, 'x'));
  } catch (const invalid_argument& e) {
    threw = true;
    EXPECT_NE(std::string(e.what()).find("write failed"), std::string::npos) << e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &old);
  ::signal(SIGXFSZ, old_xfsz);
  EXPECT_TRUE(threw);
  EXPECT_EQ(measattn::read_file(path), "precious");
  EXPECT_EQ(names_in(dir.path()), std::vector<std::string>{"keep.bin"});
  // Sockets and the like are refused, never replaced.
  const std::string sock = dir.file("s.sock");
  const int s = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, sock.c_str(), sizeof addr.sun_path - 1);
  if (s >= 0 && sock.size() < sizeof addr.sun_path &&
      ::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    expect_invalid([&] { measattn::write_file_atomic(sock, "x"); }, "s.sock", "refusing");
    EXPECT_TRUE(fs::is_socket(sock));
  }
  if (s >= 0) ::close(s);
}

TEST(io_test, temporaries_registry_removes_what_is_registered) {
  using measattn::TemporaryKind;
  TempDir dir;
  write_raw(dir.file("tmpfile"), "t");
  fs::create_directory(dir.path() / "tree");
  write_raw(dir.file("tree/a"), "a");
  fs::create_directory(dir.path() / "tree/sub");
  fs::create_directory(dir.path() / "own");
  write_raw(dir.file("own/.measattn-output"), "measattn flow output\n");
  fs::create_directory(dir.path() / "busy");
  write_raw(dir.file("busy/.measattn-output"), "measattn flow output\n");
  write_raw(dir.file("busy/checkpoint.bin"), "c");
  fs::create_directory(dir.path() / "users");
  write_raw(dir.file("users/.measattn-output"), "measattn flow output\n");
  const int slots[] = {measattn::register_temporary(dir.file("tmpfile"), TemporaryKind::file),
                       measattn::register_temporary(dir.file("tree"), TemporaryKind::tree),
                       measattn::register_temporary(dir.file("own"), TemporaryKind::created_dir),
                       measattn::register_temporary(dir.file("busy"), TemporaryKind::created_dir),
                       measattn::register_temporary(dir.file("users"), TemporaryKind::marked_dir)};
  for (int s : slots) EXPECT_GE(s, 0);
  measattn::remove_registered_temporaries();  // what a signal handler does
  for (int s : slots) measattn::unregister_temporary(s);
  EXPECT_EQ(names_in(dir.path()), (std::vector<std::string>{"busy", "users"}));
  EXPECT_EQ(names_in(dir.path() / "busy"),
            (std::vector<std::string>{".measattn-output", "checkpoint.bin"}));
  EXPECT_TRUE(names_in(dir.path() / "users").empty());
  // Names are hidden and recognisable.
  const std::string name = measattn::temporary_name(dir.path().string(), "x.npy");
  EXPECT_EQ(fs::path(name).filename().string().rfind(".x.npy.tmp.", 0), 0u);
  EXPECT_EQ(fs::path(name).filename().string().size(), std::string(".x.npy.tmp.XXXXXX").size());
}

TEST(io_test, npy_token_ids_from_integer_and_integral_float_arrays) {
  auto dict = [](const std::string& descr, const std::string& shape) {
    return "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  };
  auto bytes_of = [](const auto& values) {
    return std::string(reinterpret_cast<const char*>(values.data()),
                       values.size() * sizeof(values[0]));
  };
  const std::vector<std::int64_t> i8 = {101, 0, -3, 30521};
  EXPECT_EQ(measattn::parse_npy_ids(npy_bytes(dict("<i8", "(4,)"), bytes_of(i8)), "a.npy", "ids"),
            i8);
  const std::vector<std::int32_t> i4 = {7, -1};
  EXPECT_EQ(measattn::parse_npy_ids(npy_bytes(dict("<i4", "(1, 2)"), bytes_of(i4)), "a.npy", "ids"),
            (std::vector<std::int64_t>{7, -1}));
  const std::vector<std::uint16_t> u2 = {65535, 2};
  EXPECT_EQ(measattn::parse_npy_ids(npy_bytes(dict("<u2", "(2,)"), bytes_of(u2)), "a.npy", "ids"),
            (std::vector<std::int64_t>{65535, 2}));
  const std::vector<std::int8_t> i1 = {-128, 5};
  EXPECT_EQ(measattn::parse_npy_ids(npy_bytes(dict("|i1", "(2,)"), bytes_of(i1)), "a.npy", "ids"),
            (std::vector<std::int64_t>{-128, 5}));
  const std::vector<double> f8 = {3.0, 4.0};
  EXPECT_EQ(measattn::parse_npy_ids(npy_bytes(dict("<f8", "(2,)"), bytes_of(f8)), "a.npy", "ids"),
            (std::vector<std::int64_t>{3, 4}));
  const std::vector<double> half = {3.0, 4.5};
  expect_invalid(
      [&] {
        measattn::parse_npy_ids(npy_bytes(dict("<f8", "(2,)"), bytes_of(half)), "a.npy", "ids");
      },
      "ids: a.npy", "entry 1 is 4.5");
  const std::vector<std::uint64_t> big = {1, std::uint64_t{1} << 63};
  expect_invalid(
      [&] {
        measattn::parse_npy_ids(npy_bytes(dict("<u8", "(2,)"), bytes_of(big)), "a.npy", "ids");
      },
      "ids: a.npy", "entry 1 is 9223372036854775808, out of range");
  expect_invalid(
      [&] {
        measattn::parse_npy_ids(npy_bytes(dict("<i8", "(2, 2)"), bytes_of(i8)), "a.npy", "ids");
      },
      "a.npy", "expected a 1-D array of token ids");
  expect_invalid(
      [&] {
        measattn::parse_npy_ids(npy_bytes(dict(">i8", "(4,)"), bytes_of(i8)), "a.npy", "ids");
      },
      "a.npy", "not supported");
  // The float readers still refuse integer arrays.
  expect_invalid(
      [&] { measattn::parse_npy(npy_bytes(dict("<i8", "(4,)"), bytes_of(i8)), "a.npy"); }, "a.npy",
      "not supported");
}
