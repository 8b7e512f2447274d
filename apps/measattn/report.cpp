#include "report.hpp"

#include <cmath>
#include <cstdio>
#include <sstream>

namespace measattn::cli {

std::string fmt(double v, int digits) {
  // An undefined number (a rate fitted on too few points) is "n/a"; an infinite
  // upper bound is "+inf" on purpose. Never a bare nan or inf.
  if (std::isnan(v)) return "n/a";
  if (std::isinf(v)) return v > 0 ? "+inf" : "-inf";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*g", digits, v);
  return buf;
}

void Report::heading(int level, const std::string& text) {
  blocks_.push_back({Block::heading, level, text, "", "", {}, {}});
}
void Report::paragraph(const std::string& text) {
  blocks_.push_back({Block::paragraph, 0, text, "", "", {}, {}});
}
void Report::table(const std::vector<std::string>& columns,
                   const std::vector<std::vector<std::string>>& rows, const std::string& caption) {
  blocks_.push_back({Block::table, 0, caption, "", "", columns, rows});
}
void Report::image(const std::string& path, const std::string& caption, const std::string& csv) {
  blocks_.push_back({Block::image, 0, caption, path, csv, {}, {}});
}
void Report::code(const std::string& text) {
  blocks_.push_back({Block::code, 0, text, "", "", {}, {}});
}

std::string Report::markdown() const {
  std::ostringstream md;
  for (const auto& b : blocks_) {
    switch (b.kind) {
      case Block::heading:
        md << std::string(static_cast<size_t>(b.level), '#') << " " << b.text << "\n\n";
        break;
      case Block::paragraph:
        md << b.text << "\n\n";
        break;
      case Block::code:
        md << "```\n" << b.text << "\n```\n\n";
        break;
      case Block::table:
        if (!b.text.empty()) md << "*" << b.text << "*\n\n";
        md << "|";
        for (const auto& c : b.columns) md << " " << c << " |";
        md << "\n|";
        for (size_t i = 0; i < b.columns.size(); ++i) md << " --- |";
        md << "\n";
        for (const auto& row : b.rows) {
          md << "|";
          for (const auto& cell : row) {
            std::string escaped;  // a '|' inside a cell would end it
            for (char c : cell) escaped += c == '|' ? std::string("\\|") : std::string(1, c);
            md << " " << escaped << " |";
          }
          md << "\n";
        }
        md << "\n";
        break;
      case Block::image:
        md << "![" << b.text << "](" << b.extra << ")\n\n*" << b.text << "*";
        if (!b.csv.empty()) md << " (data: [" << b.csv << "](" << b.csv << "))";
        md << "\n\n";
        break;
    }
  }
  return md.str();
}

namespace {
std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '&':
        out += "&amp;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// Inline `code` spans of the Markdown text become <code> in HTML.
std::string inline_html(const std::string& s) {
  std::string out;
  bool in_code = false;
  for (char c : escape(s)) {
    if (c == '`') {
      out += in_code ? "</code>" : "<code>";
      in_code = !in_code;
    } else {
      out += c;
    }
  }
  if (in_code) out += "</code>";
  return out;
}
}  // namespace

std::string Report::html(const std::string& title) const {
  std::ostringstream h;
  h << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>" << escape(title)
    << "</title>\n<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;"
       "line-height:1.45}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid "
       "#bbb;padding:.2em .6em;text-align:right}th{background:#eee}img{max-width:100%}"
       "pre{background:#f6f6f6;padding:.6em}figcaption{font-style:italic}</style></head>"
       "<body>\n";
  for (const auto& b : blocks_) {
    switch (b.kind) {
      case Block::heading:
        h << "<h" << b.level << ">" << inline_html(b.text) << "</h" << b.level << ">\n";
        break;
      case Block::paragraph:
        h << "<p>" << inline_html(b.text) << "</p>\n";
        break;
      case Block::code:
        h << "<pre>" << escape(b.text) << "</pre>\n";
        break;
      case Block::table:
        h << "<table>";
        if (!b.text.empty()) h << "<caption>" << inline_html(b.text) << "</caption>";
        h << "<tr>";
        for (const auto& c : b.columns) h << "<th>" << inline_html(c) << "</th>";
        h << "</tr>\n";
        for (const auto& row : b.rows) {
          h << "<tr>";
          for (const auto& cell : row) h << "<td>" << inline_html(cell) << "</td>";
          h << "</tr>\n";
        }
        h << "</table>\n";
        break;
      case Block::image:
        h << "<figure><img src=\"" << escape(b.extra) << "\" alt=\"" << escape(b.text)
          << "\"><figcaption>" << inline_html(b.text);
        if (!b.csv.empty())
          h << " (data: <a href=\"" << escape(b.csv) << "\">" << escape(b.csv) << "</a>)";
        h << "</figcaption></figure>\n";
        break;
    }
  }
  h << "</body></html>\n";
  return h.str();
}

}  // namespace measattn::cli
