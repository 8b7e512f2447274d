// Whole-file reads and atomic writes (temporary file in the target's directory,
// then rename), plus the DType names.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>

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

std::string read_file(const std::string& path) {
  if (path.empty()) throw invalid_argument("input: empty file name");
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw invalid_argument(path + ": cannot open: " + errno_text(errno));
  TempFile guard(fd, "");  // closes fd; removes nothing
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw invalid_argument(path + ": cannot stat: " + errno_text(errno));
  if (S_ISDIR(st.st_mode)) throw invalid_argument(path + ": is a directory, not a file");
  std::string out;
  if (S_ISREG(st.st_mode) && st.st_size > 0) out.reserve(static_cast<std::size_t>(st.st_size));
  char buffer[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw invalid_argument(path + ": read failed: " + errno_text(errno));
    }
    if (n == 0) break;
    out.append(buffer, static_cast<std::size_t>(n));
  }
  return out;
}

}  // namespace measattn
