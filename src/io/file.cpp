// Whole-file reads and atomic writes (temporary file `.<name>.tmp.XXXXXX` in the
// real target's directory, then rename; devices and FIFOs are written through),
// plus the DType names.
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
#include "measattn/temporaries.hpp"

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

namespace {

// The file a write to `path` lands in: symbolic links of the last component are
// followed (relative targets against the link's directory), so that a link
// stays a link and its target gets the content.
std::string resolve_output_link(const std::string& path) {
  std::string p = path;
  for (int depth = 0; depth < 40; ++depth) {
    struct stat st {};
    if (::lstat(p.c_str(), &st) != 0 || !S_ISLNK(st.st_mode)) return p;
    std::string target(4096, '\0');
    const ssize_t n = ::readlink(p.c_str(), target.data(), target.size());
    if (n < 0)
      throw invalid_argument(path + ": cannot read the symbolic link: " + errno_text(errno));
    target.resize(static_cast<std::size_t>(n));
    if (!target.empty() && target[0] != '/') {
      const auto slash = p.rfind('/');
      if (slash != std::string::npos) target = p.substr(0, slash + 1) + target;
    }
    p = target;
  }
  throw invalid_argument(path + ": too many levels of symbolic links");
}

void write_all(int fd, const std::string& path, const std::string& content) {
  const char* data = content.data();
  std::size_t left = content.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, data, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EPIPE) {
        throw invalid_argument(path + ": write failed: the reader closed the pipe (EPIPE)");
      }
      throw invalid_argument(path + ": write failed: " + errno_text(errno));
    }
    data += n;
    left -= static_cast<std::size_t>(n);
  }
}

// An existing character device or FIFO is written through, never replaced. A
// FIFO without a reader is refused rather than waited for.
void write_through(const std::string& path, const std::string& real, bool fifo,
                   const std::string& content) {
  const int fd = ::open(real.c_str(), O_WRONLY | O_CLOEXEC | O_NOCTTY | (fifo ? O_NONBLOCK : 0));
  if (fd < 0) {
    if (fifo && errno == ENXIO) {
      throw invalid_argument(path + ": is a FIFO that no process is reading; nothing written");
    }
    throw invalid_argument(path + ": cannot open for writing: " + errno_text(errno));
  }
  TempFile guard(fd, "");  // closes fd; removes nothing
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !(S_ISCHR(st.st_mode) || S_ISFIFO(st.st_mode))) {
    throw invalid_argument(path + ": changed while it was being opened; nothing written");
  }
  if (fifo) {
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
      throw invalid_argument(path + ": cannot set the FIFO to blocking: " + errno_text(errno));
    }
  }
  write_all(fd, path, content);
  if (guard.close() != 0) throw invalid_argument(path + ": write failed: " + errno_text(errno));
}

}  // namespace

void write_file_atomic(const std::string& path, const std::string& content) {
  if (path.empty()) throw invalid_argument("path: empty file name");
  if (path.back() == '/') throw invalid_argument(path + ": is a directory name, not a file");
  const std::string real = resolve_output_link(path);
  struct stat target {};
  const bool exists = ::stat(real.c_str(), &target) == 0;
  if (!exists && errno != ENOENT) {
    throw invalid_argument(path + ": cannot stat: " + errno_text(errno));
  }
  if (exists) {
    if (S_ISDIR(target.st_mode)) throw invalid_argument(path + ": is a directory");
    if (S_ISCHR(target.st_mode) || S_ISFIFO(target.st_mode)) {
      write_through(path, real, S_ISFIFO(target.st_mode), content);
      return;
    }
    if (!S_ISREG(target.st_mode)) {
      throw invalid_argument(path +
                             ": is neither a regular file nor a character device or FIFO; "
                             "refusing to replace it");
    }
  }
  // The temporary lives next to the real target, so that the rename is atomic
  // and a symbolic link stays a link.
  const auto slash = real.rfind('/');
  const std::string dir = slash == std::string::npos ? "."
                          : slash == 0               ? "/"
                                                     : real.substr(0, slash);
  const std::string base = slash == std::string::npos ? real : real.substr(slash + 1);
  RegisteredTemporary tmp;
  int fd = -1;
  for (int attempt = 0; attempt < 100 && fd < 0; ++attempt) {
    // Registered before it exists: a signal handler can never miss it.
    tmp = RegisteredTemporary(temporary_name(dir, base), TemporaryKind::file);
    fd = ::open(tmp.path().c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 && errno != EEXIST) {
      const int err = errno;
      tmp.release();  // nothing was created
      throw invalid_argument(path + ": cannot create a temporary file in '" + dir +
                             "': " + errno_text(err));
    }
    if (fd < 0) tmp.release();  // someone else's file: keep it
  }
  if (fd < 0) throw invalid_argument(path + ": cannot create a temporary file in '" + dir + "'");
  TempFile file(fd, "");  // closes fd; tmp removes the file unless renamed
  // A new file gets rw-r--r--; an existing target keeps its mode.
  const mode_t mode = exists ? (target.st_mode & 07777) : 0644;
  if (::fchmod(file.fd(), mode) != 0) {
    throw invalid_argument(path + ": cannot set permissions: " + errno_text(errno));
  }
  write_all(file.fd(), path, content);
  if (::fsync(file.fd()) != 0 && errno != EINVAL && errno != EROFS) {
    throw invalid_argument(path + ": write failed: " + errno_text(errno));
  }
  if (file.close() != 0) throw invalid_argument(path + ": write failed: " + errno_text(errno));
  if (::rename(tmp.path().c_str(), real.c_str()) != 0) {
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
  if (path.empty()) throw invalid_argument("path: empty file name");
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
