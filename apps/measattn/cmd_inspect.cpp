// measattn inspect — the architecture of a checkpoint.
//
//   measattn inspect PATH [--json]
//
// PATH is a Hugging Face checkpoint directory (config.json + model.safetensors:
// BERT, GPT-2) or a torch encoder state dict (docs/transformers.md). Prints the
// architecture, model_type, layers, heads, dimensions (d, head dim,
// feed-forward), norm placement, activation, causality, vocabulary, positions
// and the parameter count; --json prints the same as one JSON object (the keys
// of Python's Transformer.summary()). The whole checkpoint is validated.
#include <iostream>
#include <memory>
#include <string>

#include "command.hpp"
#include "measattn/error.hpp"
#include "measattn/transformer.hpp"
#include "transformer_summary.hpp"

namespace measattn::cli {
namespace {

struct InspectArgs {
  std::string path;
  bool json = false;
};

const bool registered = register_command(
    "inspect", "Architecture, dimensions and parameter count of a checkpoint (BERT, GPT-2, torch)",
    [](CLI::App& app) {
      auto a = std::make_shared<InspectArgs>();
      app.add_option("path", a->path,
                     "Checkpoint: a directory with config.json and model.safetensors, or a "
                     "torch encoder .safetensors")
          ->required();
      app.add_flag("--json", a->json, "Print one JSON object");
      app.callback([a] {
        const Transformer<double> t = load_transformer<double>(a->path);
        const TransformerSummary s = summarize(t);
        if (a->json) {
          nlohmann::json j = summary_json(s);
          j["path"] = a->path;
          std::cout << j.dump(2) << "\n";
        } else {
          std::cout << summary_text(s, a->path);
        }
      });
    });

}  // namespace
}  // namespace measattn::cli
