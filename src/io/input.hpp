// Bounded sequential input for the file readers (.npy, safetensors, flow
// checkpoints): a reader takes the fixed-size preamble first, validates it,
// then asks for exactly the bytes its header declares. Nothing is read whole
// on trust, so a device (/dev/zero), a FIFO or a hostile header costs at most
// what the format allows.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace measattn::detail {

/// The most memory one input's data may take: the machine's physical memory
/// (sysconf), or 2^40 bytes when it cannot be determined.
std::uint64_t input_memory_cap();

/// Throws invalid_argument("<name>: <what> needs N bytes, more than this
/// machine's memory (M bytes)") when bytes > input_memory_cap().
void check_memory(std::uint64_t bytes, const std::string& name, const std::string& what);

/// A source of bytes read in order: a file or a block of memory.
class Source {
 public:
  virtual ~Source() = default;
  /// Appends up to n bytes to out, fewer only where the input ends; returns the
  /// number appended. The string grows with the data that actually arrives.
  virtual std::uint64_t read(std::string& out, std::uint64_t n) = 0;
  /// True when no byte follows (reads at most one byte).
  virtual bool at_end() = 0;
  /// The total size when it is known in advance (memory, a regular file).
  virtual std::optional<std::uint64_t> size() const = 0;
  /// The name used in messages (the path).
  virtual const std::string& name() const = 0;
};

/// A file opened for reading: regular files, devices, FIFOs and sockets;
/// directories are refused. Throws invalid_argument("<path>: cannot open ...").
class InputFile final : public Source {
 public:
  explicit InputFile(const std::string& path);
  ~InputFile() override;
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;
  std::uint64_t read(std::string& out, std::uint64_t n) override;
  bool at_end() override;
  std::optional<std::uint64_t> size() const override;
  const std::string& name() const override { return path_; }

 private:
  int fd_ = -1;
  std::string path_;
  std::optional<std::uint64_t> size_;
};

/// Bytes in memory (not copied: `bytes` must outlive the source).
class MemorySource final : public Source {
 public:
  MemorySource(std::string_view bytes, std::string name) : bytes_(bytes), name_(std::move(name)) {}
  std::uint64_t read(std::string& out, std::uint64_t n) override;
  bool at_end() override { return pos_ == bytes_.size(); }
  std::optional<std::uint64_t> size() const override { return bytes_.size(); }
  const std::string& name() const override { return name_; }

 private:
  std::string_view bytes_;
  std::string name_;
  std::size_t pos_ = 0;
};

}  // namespace measattn::detail
