// The registry of live temporaries (see common/temporaries.hpp).
#include "measattn/temporaries.hpp"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <utility>

namespace measattn {
namespace {

constexpr int kSlots = 64;
constexpr std::size_t kPathMax = 4096;

// state: 0 free, -1 being written, 1 live.
struct Slot {
  std::atomic<int> state{0};
  int kind = 0;
  char path[kPathMax] = {};
};

Slot g_slots[kSlots];

bool is_dot(const char* name) {
  return name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'));
}

// Calls fn(dir_fd, name) for each entry of the open directory (but . and ..).
// Uses the raw getdents64 system call: opendir/readdir may allocate.
template <class Fn>
void for_each_entry(int fd, Fn&& fn) {
  alignas(8) char buffer[4096];
  ::lseek(fd, 0, SEEK_SET);
  for (;;) {
    const long n = ::syscall(SYS_getdents64, fd, buffer, sizeof buffer);
    if (n <= 0) return;
    for (long off = 0; off < n;) {
      // struct linux_dirent64: u64 ino, s64 off, u16 reclen, u8 type, char name[].
      unsigned short reclen = 0;
      std::memcpy(&reclen, buffer + off + 16, sizeof reclen);
      const char* name = buffer + off + 19;
      if (!is_dot(name)) fn(fd, name);
      if (reclen == 0) return;
      off += reclen;
    }
  }
}

// True when the directory holds exactly the marker file.
bool holds_only_marker(int fd) {
  int count = 0;
  bool marker = false;
  for_each_entry(fd, [&](int, const char* name) {
    ++count;
    if (std::strcmp(name, kOutputMarker) == 0) marker = true;
  });
  return count == 1 && marker;
}

}  // namespace

int register_temporary(const std::string& path, TemporaryKind kind) noexcept {
  if (path.empty() || path.size() >= kPathMax) return -1;
  for (int i = 0; i < kSlots; ++i) {
    int expected = 0;
    if (g_slots[i].state.compare_exchange_strong(expected, -1, std::memory_order_acq_rel)) {
      std::memcpy(g_slots[i].path, path.c_str(), path.size() + 1);
      g_slots[i].kind = static_cast<int>(kind);
      g_slots[i].state.store(1, std::memory_order_release);
      return i;
    }
  }
  return -1;
}

void unregister_temporary(int slot) noexcept {
  if (slot < 0 || slot >= kSlots) return;
  g_slots[slot].state.store(0, std::memory_order_release);
}

bool remove_flat_tree(const char* path) noexcept {
  const int fd = ::open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd >= 0) {
    // Deleting while reading may skip entries: read again until a pass removes nothing.
    for (int pass = 0; pass < 16; ++pass) {
      bool removed = false;
      for_each_entry(fd, [&](int dir, const char* name) {
        if (::unlinkat(dir, name, 0) == 0 || ::unlinkat(dir, name, AT_REMOVEDIR) == 0) {
          removed = true;
        }
      });
      if (!removed) break;
    }
    ::close(fd);
  }
  return ::rmdir(path) == 0 || errno == ENOENT;
}

void remove_temporary(const char* path, TemporaryKind kind) noexcept {
  switch (kind) {
    case TemporaryKind::file:
      ::unlink(path);
      return;
    case TemporaryKind::tree:
      remove_flat_tree(path);
      return;
    case TemporaryKind::created_dir:
    case TemporaryKind::marked_dir: {
      const int fd = ::open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (fd < 0) return;
      const bool only_marker = holds_only_marker(fd);
      if (only_marker) ::unlinkat(fd, kOutputMarker, 0);
      ::close(fd);
      if (only_marker && kind == TemporaryKind::created_dir) ::rmdir(path);
      return;
    }
  }
}

void remove_registered_temporaries() noexcept {
  // Files first (they may live inside a registered directory), then directories.
  for (int kind = 1; kind <= 4; ++kind) {
    for (int i = kSlots - 1; i >= 0; --i) {
      if (g_slots[i].state.load(std::memory_order_acquire) != 1) continue;
      if (g_slots[i].kind != kind) continue;
      remove_temporary(g_slots[i].path, static_cast<TemporaryKind>(kind));
    }
  }
}

std::string random_suffix() {
  static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  unsigned char bytes[6] = {};
  std::size_t got = 0;
  while (got < sizeof bytes) {
    const ssize_t n = ::getrandom(bytes + got, sizeof bytes - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    got += static_cast<std::size_t>(n);
  }
  if (got < sizeof bytes) {  // no getrandom: the pid and a counter are unique enough
    static std::atomic<unsigned> counter{0};
    unsigned long v = static_cast<unsigned long>(::getpid()) * 7919u + counter++;
    for (auto& b : bytes) {
      b = static_cast<unsigned char>(v);
      v = v / 62 + 0x9e3779b9u;
    }
  }
  std::string out(6, 'x');
  for (std::size_t i = 0; i < 6; ++i) out[i] = alphabet[bytes[i] % 62];
  return out;
}

std::string temporary_name(const std::string& dir, const std::string& base) {
  std::string name = dir;
  if (!name.empty() && name.back() != '/') name += '/';
  name += '.';
  name += base;
  name += ".tmp.";
  name += random_suffix();
  return name;
}

RegisteredTemporary::RegisteredTemporary(std::string path, TemporaryKind kind)
    : path_(std::move(path)), kind_(kind), slot_(register_temporary(path_, kind)) {}

RegisteredTemporary::~RegisteredTemporary() { remove(); }

RegisteredTemporary::RegisteredTemporary(RegisteredTemporary&& other) noexcept
    : path_(std::move(other.path_)), kind_(other.kind_), slot_(other.slot_) {
  other.path_.clear();
  other.slot_ = -1;
}

RegisteredTemporary& RegisteredTemporary::operator=(RegisteredTemporary&& other) noexcept {
  if (this != &other) {
    remove();
    path_ = std::move(other.path_);
    kind_ = other.kind_;
    slot_ = other.slot_;
    other.path_.clear();
    other.slot_ = -1;
  }
  return *this;
}

void RegisteredTemporary::release() noexcept {
  unregister_temporary(slot_);
  slot_ = -1;
  path_.clear();
}

void RegisteredTemporary::remove() noexcept {
  if (!path_.empty()) remove_temporary(path_.c_str(), kind_);
  release();
}

}  // namespace measattn
