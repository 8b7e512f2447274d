// libFuzzer target: the checkpoint importer (detail::parse_transformer) on
// arbitrary bytes: a 4-byte little-endian length L, L bytes of config.json,
// then the safetensors bytes; L = 0xFFFFFFFF (or an input shorter than 4
// bytes) means no config.json (a torch encoder state dict configured by its
// __metadata__). Only measattn::invalid_argument is an acceptable outcome; a
// checkpoint that loads must validate and run a forward pass on two tokens
// (finite hidden states, or invalid_argument for weights too large).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

#include "measattn/error.hpp"
#include "measattn/transformer.hpp"
#include "transformer/checkpoint.hpp"

namespace {

template <class Scalar>
void run(const std::optional<std::string>& config, const std::string& weights) {
  measattn::Transformer<Scalar> t;
  try {
    t = measattn::detail::parse_transformer<Scalar>(config, "fuzz/config.json", weights,
                                                    "fuzz/model.safetensors");
  } catch (const measattn::invalid_argument&) {
    return;
  }
  t.validate();  // must not throw for an accepted checkpoint
  // Bound the work of the forward pass (the fuzzer's inputs are small anyway).
  if (t.dim() > 256 || t.num_layers() > 8) return;
  try {
    const auto states =
        t.word_embeddings.size() != 0
            ? measattn::forward(t, {0, t.vocab_size() - 1})
            : measattn::forward_points(t, measattn::Matrix<Scalar>::Ones(2, t.dim()));
    if (states.size() != static_cast<std::size_t>(t.num_layers() + 1)) std::abort();
    for (const auto& h : states) {
      if (!h.allFinite()) std::abort();
    }
  } catch (const measattn::invalid_argument&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  std::optional<std::string> config;
  std::string weights = bytes;
  if (size >= 4) {
    std::uint32_t n;
    std::memcpy(&n, data, 4);
    if (n != 0xFFFFFFFFu) {
      const std::size_t len = std::min<std::size_t>(n, size - 4);
      config = bytes.substr(4, len);
      weights = bytes.substr(4 + len);
    } else {
      weights = bytes.substr(4);
    }
  }
  run<double>(config, weights);
  run<float>(config, weights);
  return 0;
}
