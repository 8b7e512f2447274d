#include "plot.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "measattn/io.hpp"

namespace measattn::cli {

namespace {

std::string number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Inf" : "-Inf";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

}  // namespace

std::string Table::csv() const {
  std::ostringstream out;
  for (size_t c = 0; c < columns.size(); ++c) out << (c ? "," : "") << columns[c];
  out << "\n";
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size(); ++c) out << (c ? "," : "") << number(row[c]);
    out << "\n";
  }
  return out.str();
}

std::string Table::gnuplot_block(const std::string& name) const {
  std::ostringstream out;
  out << "$" << name << " << EOD\n";
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size(); ++c) out << (c ? " " : "") << number(row[c]);
    out << "\n";
  }
  out << "EOD\n";
  return out.str();
}

void write_csv(const std::string& path, const Table& table) {
  write_file_atomic(path, table.csv());
}

std::string gnuplot_quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

void render_png(const std::string& png_path, const std::string& script, int width, int height) {
  namespace fs = std::filesystem;
  const fs::path target(png_path);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  const std::string stem =
      ".measattn-plot-" + std::to_string(::getpid()) + "-" + target.filename().string();
  const fs::path tmp_png = dir / (stem + ".png");
  const fs::path tmp_gp = dir / (stem + ".gp");
  {
    std::ofstream gp(tmp_gp);
    gp << "set terminal pngcairo size " << width << "," << height
       << " enhanced font 'DejaVu Sans,10'\n"
       << "set output " << gnuplot_quote(tmp_png.string()) << "\n"
       << script << "\nunset output\n";
    if (!gp) throw std::runtime_error(png_path + ": cannot write the gnuplot script");
  }
  const std::string command = "gnuplot " + gnuplot_quote(tmp_gp.string()) + " > /dev/null 2>" +
                              gnuplot_quote((dir / (stem + ".log")).string());
  const int status = std::system(command.c_str());
  std::error_code ec;
  std::string log;
  {
    std::ifstream in(dir / (stem + ".log"));
    std::getline(in, log, '\0');
  }
  fs::remove(tmp_gp, ec);
  fs::remove(dir / (stem + ".log"), ec);
  if (status != 0 || !fs::exists(tmp_png) || fs::file_size(tmp_png, ec) == 0) {
    fs::remove(tmp_png, ec);
    throw std::runtime_error(png_path + ": gnuplot failed: " + log.substr(0, 300));
  }
  fs::rename(tmp_png, target);
}

}  // namespace measattn::cli
