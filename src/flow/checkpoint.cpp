// The flow checkpoint format: see checkpoint.hpp. The integrity check is
// zlib's CRC-32 over every byte but the checksum itself, so any single flipped
// byte (indeed any burst of up to 32 bits) is detected.
#include "flow/checkpoint.hpp"

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "io/input.hpp"
#include "measattn/error.hpp"
#include "measattn/io.hpp"

namespace measattn::detail {

namespace {

constexpr char kMagic[8] = {'M', 'A', 'F', 'L', 'O', 'W', 'C', 'K'};
constexpr std::size_t kCrcAt = 12;
constexpr std::size_t kPreamble = 24;

std::uint32_t crc_of(std::string_view a, std::string_view b) {
  uLong crc = ::crc32(0L, Z_NULL, 0);
  for (std::string_view part : {a, b}) {
    while (!part.empty()) {
      const std::size_t n = std::min<std::size_t>(part.size(), 1u << 30);
      crc = ::crc32(crc, reinterpret_cast<const Bytef*>(part.data()), static_cast<uInt>(n));
      part.remove_prefix(n);
    }
  }
  return static_cast<std::uint32_t>(crc);
}

// The checksum over bytes [0, 12) and [16, end) of a buffer of >= 24 bytes.
std::uint32_t checksum(std::string_view bytes) {
  return crc_of(bytes.substr(0, kCrcAt), bytes.substr(kCrcAt + 4));
}

template <class T>
T load(std::string_view bytes, std::size_t at) {
  T v;
  std::memcpy(&v, bytes.data() + at, sizeof(T));
  return v;
}

struct Writer {
  std::string buf;
  template <class T>
  void value(const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    buf.append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  template <class Scalar>
  void matrix(const Matrix<Scalar>& m) {
    value(static_cast<std::int64_t>(m.rows()));
    value(static_cast<std::int64_t>(m.cols()));
    buf.append(reinterpret_cast<const char*>(m.data()),
               static_cast<std::size_t>(m.size()) * sizeof(Scalar));
  }
};

// Reads the body; every inconsistency is "corrupt checkpoint (<what>)". After a
// matching checksum only a crafted file gets here with bad values.
struct Reader {
  std::string_view buf;
  const std::string& name;
  std::size_t pos = 0;

  [[noreturn]] void corrupt(const std::string& what) const {
    throw invalid_argument(name + ": corrupt checkpoint (" + what + ")");
  }
  void need(std::size_t n, const char* what) const {
    if (buf.size() - pos < n) corrupt(std::string(what) + " beyond the end");
  }
  template <class T>
  T value(const char* what) {
    need(sizeof(T), what);
    const T v = load<T>(buf, pos);
    pos += sizeof(T);
    return v;
  }
  Index count(const char* what) {
    const auto v = value<std::int64_t>(what);
    if (v < 0) corrupt(std::string(what) + " is negative");
    return static_cast<Index>(v);
  }
  double finite(const char* what) {
    const auto v = value<double>(what);
    if (!std::isfinite(v)) corrupt(std::string(what) + " is not finite");
    return v;
  }
  template <class Scalar>
  Matrix<Scalar> matrix(const char* what) {
    const auto r = value<std::int64_t>(what);
    const auto c = value<std::int64_t>(what);
    const std::size_t left = (buf.size() - pos) / sizeof(Scalar);
    // (An empty matrix too gets bounded dimensions: Eigen visits every row of a
    // row-major n x 0 matrix.)
    constexpr std::int64_t kEmptyMax = 1 << 20;
    if (r < 0 || c < 0 || (c > 0 && static_cast<std::uint64_t>(r) > left / c) ||
        (r * c == 0 && (r > kEmptyMax || c > kEmptyMax))) {
      corrupt(std::string(what) + " shape");
    }
    const std::size_t bytes = static_cast<std::size_t>(r * c) * sizeof(Scalar);
    Matrix<Scalar> m(r, c);
    if (bytes > 0) std::memcpy(m.data(), buf.data() + pos, bytes);  // (no pointer when empty)
    pos += bytes;
    if (!m.allFinite()) corrupt(std::string(what) + " not finite");
    return m;
  }
};

}  // namespace

template <class Scalar>
std::string format_checkpoint(const CheckpointState<Scalar>& s, const FlowResult<Scalar>& r) {
  Writer w;
  w.buf.append(kMagic, sizeof(kMagic));
  w.value(kCheckpointVersion);
  w.value(std::uint32_t{0});  // the checksum, below
  w.value(std::uint64_t{0});  // the body length, below
  w.value(static_cast<std::uint32_t>(sizeof(Scalar)));
  w.value(s.fingerprint);
  w.value(s.time);
  w.value(static_cast<std::int64_t>(s.step));
  w.value(static_cast<std::int64_t>(s.rejected));
  w.value(static_cast<std::int64_t>(s.evaluations));
  w.value(static_cast<std::int64_t>(s.attempts));
  w.value(s.h);
  w.value(s.err_old);
  w.value(static_cast<std::uint8_t>(s.last_rejected));
  w.matrix(s.y);
  w.matrix(s.fsal);
  w.value(static_cast<std::int64_t>(r.frames.size()));
  for (std::size_t f = 0; f < r.frames.size(); ++f) {
    w.value(r.frame_times[f]);
    w.value(static_cast<std::int64_t>(r.frame_steps[f]));
    w.matrix(r.frames[f]);
  }
  w.value(static_cast<std::int64_t>(r.energies.size()));
  for (double e : r.energies) w.value(e);
  w.value(static_cast<std::int64_t>(r.cluster_counts.size()));
  for (Index c : r.cluster_counts) w.value(static_cast<std::int64_t>(c));
  const std::uint64_t length = w.buf.size() - kPreamble;
  std::memcpy(w.buf.data() + 16, &length, sizeof(length));
  const std::uint32_t crc = checksum(w.buf);
  std::memcpy(w.buf.data() + kCrcAt, &crc, sizeof(crc));
  return w.buf;
}

template <class Scalar>
void parse_checkpoint(std::string_view bytes, const std::string& name, CheckpointState<Scalar>& s,
                      FlowResult<Scalar>& r) {
  if (bytes.size() < sizeof(kMagic) || std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    throw invalid_argument(name + ": not a measattn flow checkpoint");
  }
  if (bytes.size() < kPreamble) {
    throw invalid_argument(name + ": truncated checkpoint (" + std::to_string(bytes.size()) +
                           " bytes)");
  }
  const auto version = load<std::uint32_t>(bytes, 8);
  if (version != kCheckpointVersion) {
    throw invalid_argument(
        name + ": checkpoint format version " + std::to_string(version) +
        " is not supported (this measattn reads version " + std::to_string(kCheckpointVersion) +
        (version < kCheckpointVersion ? ", with a checksum); start the run again without resume"
                                      : ")"));
  }
  const auto stored = load<std::uint32_t>(bytes, kCrcAt);
  const auto length = load<std::uint64_t>(bytes, 16);
  const std::uint64_t body = bytes.size() - kPreamble;
  if (checksum(bytes) != stored) {
    std::string sizes;
    if (length != body) {
      sizes = " (the file has " + std::to_string(bytes.size()) + " bytes, its header says " +
              (length > std::numeric_limits<std::uint64_t>::max() - kPreamble
                   ? std::string("more")
                   : std::to_string(length + kPreamble)) +
              ")";
    }
    throw invalid_argument(name + ": checksum mismatch: the checkpoint is corrupt" + sizes);
  }
  Reader rd{bytes, name, kPreamble};
  if (length != body) rd.corrupt("length");
  if (rd.value<std::uint32_t>("precision") != sizeof(Scalar)) {
    throw invalid_argument(name + ": checkpoint was written in another precision (float" +
                           std::to_string(8 * (sizeof(Scalar) == 4 ? 8 : 4)) + ")");
  }
  s.fingerprint = rd.value<std::uint64_t>("fingerprint");
  s.time = rd.finite("time");
  s.step = rd.count("step");
  s.rejected = rd.count("rejected");
  s.evaluations = rd.count("evaluations");
  s.attempts = rd.count("attempts");
  s.h = rd.finite("step size");
  s.err_old = rd.finite("error memory");
  const auto flag = rd.value<std::uint8_t>("flag");
  if (flag > 1) rd.corrupt("flag");
  s.last_rejected = flag != 0;
  if (s.time < 0 || s.h < 0 || !(s.err_old > 0)) rd.corrupt("time or step size");
  s.y = rd.matrix<Scalar>("particles");
  s.fsal = rd.matrix<Scalar>("derivative");
  if (s.fsal.size() != 0 && (s.fsal.rows() != s.y.rows() || s.fsal.cols() != s.y.cols())) {
    rd.corrupt("derivative shape");
  }
  const Index frames = rd.count("frame count");
  // Each frame takes at least 32 bytes.
  if (static_cast<std::uint64_t>(frames) > body / 32) rd.corrupt("frame count");
  for (Index f = 0; f < frames; ++f) {
    r.frame_times.push_back(rd.finite("frame time"));
    r.frame_steps.push_back(rd.count("frame step"));
    r.frames.push_back(rd.matrix<Scalar>("frame"));
    if (r.frames.back().rows() != s.y.rows() || r.frames.back().cols() != s.y.cols()) {
      rd.corrupt("frame shape");
    }
  }
  const Index energies = rd.count("energy count");
  if (energies != 0 && energies != frames) rd.corrupt("energy count");
  for (Index f = 0; f < energies; ++f) {
    const double e = rd.value<double>("energy");
    if (std::isnan(e)) rd.corrupt("energy");
    r.energies.push_back(e);
  }
  const Index clusters = rd.count("cluster count");
  if (clusters != 0 && clusters != frames) rd.corrupt("cluster count");
  for (Index f = 0; f < clusters; ++f) r.cluster_counts.push_back(rd.count("cluster count"));
  if (rd.pos != bytes.size()) rd.corrupt("trailing bytes");
}

template <class Scalar>
void write_checkpoint(const std::string& path, const CheckpointState<Scalar>& s,
                      const FlowResult<Scalar>& r) {
  write_file_atomic(path, format_checkpoint(s, r));
}

template <class Scalar>
void read_checkpoint(const std::string& path, std::uint64_t fingerprint, Index n, Index d,
                     CheckpointState<Scalar>& s, FlowResult<Scalar>& r) {
  InputFile file(path);
  std::string bytes;
  // The preamble first: a file of another kind (or a device) is refused at once.
  file.read(bytes, kPreamble);
  if (bytes.size() < sizeof(kMagic) || std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0 ||
      bytes.size() < kPreamble) {
    parse_checkpoint(bytes, path, s, r);  // throws the message
    throw invalid_argument(path + ": truncated checkpoint");
  }
  const auto length = load<std::uint64_t>(bytes, 16);
  if (load<std::uint32_t>(bytes, 8) == kCheckpointVersion) {
    // At most one byte more than the header declares (a longer file is refused).
    std::uint64_t want = length;
    if (const auto size = file.size()) {
      want = std::min<std::uint64_t>(want, *size > kPreamble ? *size - kPreamble : 0);
    }
    check_memory(want, path, "the checkpoint");
    file.read(bytes, want);
    if (bytes.size() - kPreamble == length) file.read(bytes, 1);
  }
  parse_checkpoint(bytes, path, s, r);
  if (s.fingerprint != fingerprint) {
    throw invalid_argument(path +
                           ": checkpoint does not match the arguments (model, tokens, weights or "
                           "flow options differ from the run that wrote it)");
  }
  if (s.y.rows() != n || s.y.cols() != d) {
    throw invalid_argument(path + ": checkpoint holds " + std::to_string(s.y.rows()) + " x " +
                           std::to_string(s.y.cols()) + " particles, the run has " +
                           std::to_string(n) + " x " + std::to_string(d));
  }
}

#define MEASATTN_INSTANTIATE(S)                                                             \
  template std::string format_checkpoint(const CheckpointState<S>&, const FlowResult<S>&);  \
  template void parse_checkpoint(std::string_view, const std::string&, CheckpointState<S>&, \
                                 FlowResult<S>&);                                           \
  template void write_checkpoint(const std::string&, const CheckpointState<S>&,             \
                                 const FlowResult<S>&);                                     \
  template void read_checkpoint(const std::string&, std::uint64_t, Index, Index,            \
                                CheckpointState<S>&, FlowResult<S>&);

MEASATTN_INSTANTIATE(float)
MEASATTN_INSTANTIATE(double)
#undef MEASATTN_INSTANTIATE

}  // namespace measattn::detail
