// Token ids of a text file under a checkpoint's tokenizer (--text).
//
// Tokenization is not reimplemented here: the checkpoint's tokenizer.json is
// run by the Hugging Face `tokenizers` library, in a child Python process
// (MEASATTN_PYTHON, else the Python measattn was configured with, which is the
// project's virtual environment after scripts/venv.sh). Special tokens are
// added as the tokenizer's post-processor says ([CLS] ... [SEP] for BERT);
// truncation and padding stored in tokenizer.json are switched off, so every
// token of the text is kept (a text longer than the model's positions is then
// refused by the embedding, naming input_ids).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace measattn::cli {

/// The tokenizer file of a checkpoint: <model>/tokenizer.json for a directory,
/// else tokenizer.json beside the file.
std::string tokenizer_path(const std::string& model_path);

/// The ids of the UTF-8 text in `text_path`. Throws invalid_argument("<flag>:
/// <file>: <reason>"): no tokenizer.json, `tokenizers` not installed, text not
/// UTF-8, empty text, the tokenizer failing.
std::vector<std::int64_t> tokenize_text(const std::string& model_path, const std::string& text_path,
                                        const std::string& flag = "--text");

/// The same for a text in memory (perturbed copies of a text).
std::vector<std::int64_t> tokenize_string(const std::string& model_path, const std::string& text,
                                          const std::string& what);

}  // namespace measattn::cli
