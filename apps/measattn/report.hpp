// A report made of blocks (headings, paragraphs, tables, images), rendered to
// Markdown and to a self-contained HTML page with the same content.
#pragma once

#include <string>
#include <vector>

#include "plot.hpp"

namespace measattn::cli {

class Report {
 public:
  void heading(int level, const std::string& text);
  void paragraph(const std::string& text);
  /// A table with a caption; `digits` significant digits per number.
  void table(const std::vector<std::string>& columns,
             const std::vector<std::vector<std::string>>& rows, const std::string& caption = "");
  /// An image (path relative to the report) with a caption and the CSV behind it.
  void image(const std::string& path, const std::string& caption, const std::string& csv = "");
  void code(const std::string& text);

  std::string markdown() const;
  std::string html(const std::string& title) const;

 private:
  struct Block {
    enum Kind { heading, paragraph, table, image, code } kind;
    int level = 0;
    std::string text, extra, csv;
    std::vector<std::string> columns;
    std::vector<std::vector<std::string>> rows;
  };
  std::vector<Block> blocks_;
};

/// Formats a number with `digits` significant digits ("%.*g"); NaN as "n/a",
/// infinities as "+inf" / "-inf".
std::string fmt(double v, int digits = 6);

}  // namespace measattn::cli
