// Whole-file reads and atomic writes (temporary file in the target's directory,
// then rename), plus the DType names.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>

#include "io/input.hpp"
#include "measattn/error.hpp"
#include "measattn/io.hpp"

namespace measattn {

std::string to_string(DType t) { return t == DType::f32 ? "f32" : "f64"; }

DType parse_dtype(const std::string& name, const std::string& field) {
  if (name == "f32" || name == "float32") return DType::f32;
  if (name == "f64" || name == "float64") return DType::f64;
  throw invalid_argument(field + ": unknown dtype '" + name + "' (expected f32 or f64)");
}

namespace {

std::string errno_text(int err) { return std::strerror(err); }

// Closes a descriptor and removes a temporary file unless released.
class TempFile {
 public:
  TempFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!path_.empty()) ::unlink(path_.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  int fd() const { return fd_; }
  const std::string& path() const { return path_; }
  int close() {
    const int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }
  void release() { path_.clear(); }

 private:
  int fd_;
  std::string path_;
};

}  // namespace

void write_file_atomic(const std::string& path, const std::string& content) {
  namespace fs = std::filesystem;
  if (path.empty()) throw invalid_argument("output: empty file name");
  struct stat target {};
  const bool exists = ::stat(path.c_str(), &target) == 0;
  if (exists && S_ISDIR(target.st_mode)) throw invalid_argument(path + ": is a directory");
  const fs::path p(path);
  fs::path dir = p.parent_path();
  if (dir.empty()) dir = ".";
  // (Built piecewise: GCC 12 warns spuriously (-Wrestrict) on "." + string.)
  std::string base(".");
  base.append(p.filename().string());
  base.append(".tmp.XXXXXX");
  std::string tmpl = (dir / base).string();
  const int fd = ::mkstemp(tmpl.data());
  if (fd < 0) {
    throw invalid_argument(path + ": cannot create a temporary file in '" + dir.string() +
                           "': " + errno_text(errno));
  }
  TempFile tmp(fd, tmpl);
  // mkstemp creates mode 0600: keep an existing target's mode, else rw-r--r--.
  const mode_t mode = exists ? (target.st_mode & 07777) : 0644;
  if (::fchmod(tmp.fd(), mode) != 0) {
    throw invalid_argument(path + ": cannot set permissions: " + errno_text(errno));
  }
  const char* data = content.data();
  std::size_t left = content.size();
  while (left > 0) {
    const ssize_t n = ::write(tmp.fd(), data, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw invalid_argument(path + ": write failed: " + errno_text(errno));
    }
    data += n;
    left -= static_cast<std::size_t>(n);
  }
  if (tmp.close() != 0) throw invalid_argument(path + ": write failed: " + errno_text(errno));
  if (::rename(tmp.path().c_str(), path.c_str()) != 0) {
    throw invalid_argument(path +
                           ": cannot rename the temporary file over it: " + errno_text(errno));
  }
  tmp.release();
}

// ---- bounded input -------------------------------------------------------------

namespace detail {

std::uint64_t input_memory_cap() {
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page = ::sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page <= 0) return std::uint64_t{1} << 40;
  return static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page);
}

void check_memory(std::uint64_t bytes, const std::string& name, const std::string& what) {
  const std::uint64_t cap = input_memory_cap();
  if (bytes > cap) {
    throw invalid_argument(name + ": " + what + " needs " + std::to_string(bytes) +
                           " bytes, more than this machine's memory (" + std::to_string(cap) +
                           " bytes)");
  }
}

InputFile::InputFile(const std::string& path) : path_(path) {
  if (path.empty()) throw invalid_argument("input: empty file name");
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw invalid_argument(path + ": cannot open: " + errno_text(errno));
  struct stat st {};
  if (::fstat(fd_, &st) != 0) {
    const int err = errno;
    ::close(fd_);
    throw invalid_argument(path + ": cannot stat: " + errno_text(err));
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd_);
    throw invalid_argument(path + ": is a directory, not a file");
  }
  // (procfs and sysfs files say 0 bytes and have more: read them as streams.)
  if (S_ISREG(st.st_mode) && st.st_size > 0) size_ = static_cast<std::uint64_t>(st.st_size);
}

InputFile::~InputFile() {
  if (fd_ >= 0) ::close(fd_);
}

std::uint64_t InputFile::read(std::string& out, std::uint64_t n) {
  std::uint64_t got = 0;
  while (got < n) {
    // Grow with the data: a regular file of known size at once, a stream in
    // doubling chunks (64 KiB first), so a short stream costs what it sent.
    std::uint64_t chunk = n - got;
    if (!size_) chunk = std::min(chunk, std::max<std::uint64_t>(got, 1 << 16));
    const std::size_t old = out.size();
    out.resize(old + static_cast<std::size_t>(chunk));
    std::uint64_t filled = 0;
    while (filled < chunk) {
      const std::size_t want =
          static_cast<std::size_t>(std::min<std::uint64_t>(chunk - filled, 1 << 30));
      const ssize_t r = ::read(fd_, out.data() + old + filled, want);
      if (r < 0) {
        if (errno == EINTR) continue;
        const int err = errno;
        out.resize(old + static_cast<std::size_t>(filled));
        throw invalid_argument(path_ + ": read failed: " + errno_text(err));
      }
      if (r == 0) break;
      filled += static_cast<std::uint64_t>(r);
    }
    out.resize(old + static_cast<std::size_t>(filled));
    got += filled;
    if (filled < chunk) break;  // end of the input
  }
  return got;
}

bool InputFile::at_end() {
  std::string one;
  return read(one, 1) == 0;
}

std::optional<std::uint64_t> InputFile::size() const { return size_; }

std::uint64_t MemorySource::read(std::string& out, std::uint64_t n) {
  const std::size_t k = static_cast<std::size_t>(std::min<std::uint64_t>(n, bytes_.size() - pos_));
  out.append(bytes_.data() + pos_, k);
  pos_ += k;
  return k;
}

}  // namespace detail

std::string read_file(const std::string& path, std::uint64_t max_bytes) {
  detail::InputFile file(path);
  if (const auto size = file.size(); size && *size > max_bytes) {
    throw invalid_argument(path + ": the file has " + std::to_string(*size) +
                           " bytes, more than the " + std::to_string(max_bytes) + " allowed");
  }
  const std::uint64_t want = file.size() ? *file.size() : max_bytes;
  detail::check_memory(std::min(want, max_bytes), path, "reading the file");
  std::string out;
  file.read(out, want);
  if (!file.at_end()) {
    throw invalid_argument(path + ": more than " + std::to_string(max_bytes) +
                           " bytes (read at most that many)");
  }
  return out;
}

}  // namespace measattn
