// Plots and tables for the CLI: gnuplot (pngcairo) driven through a script,
// CSV files written atomically. Every PNG comes with the CSV behind it.
#pragma once

#include <Eigen/Dense>
#include <Eigen/Eigenvalues>
#include <string>
#include <vector>

namespace measattn::cli {

/// A table: column names and rows of numbers (written with 17 significant digits).
struct Table {
  std::vector<std::string> columns;
  std::vector<std::vector<double>> rows;

  /// The table as CSV text (header line, then one line per row).
  std::string csv() const;
  /// The table as a gnuplot inline data block named `$name`.
  std::string gnuplot_block(const std::string& name) const;
};

/// Writes the table as CSV, atomically.
void write_csv(const std::string& path, const Table& table);

/// Renders a gnuplot script to a PNG (pngcairo, width x height), atomically:
/// the terminal and output are set here, `script` holds the data blocks and
/// plot commands. Throws std::runtime_error if gnuplot fails.
void render_png(const std::string& png_path, const std::string& script, int width = 900,
                int height = 600);

/// Quotes a string for a gnuplot script ("..." with escapes).
std::string gnuplot_quote(const std::string& s);

/// The CLI's one principal-direction projection: the top `count` principal
/// directions (d x count, largest variance first) of the points (rows) of all
/// `sets` about their common mean, for 2-D pictures of d-dimensional points.
/// `Work` is the matrix type the covariance is formed and diagonalized in.
template <class Work, class Points>
Work principal_directions(const std::vector<Points>& sets, Eigen::Index count) {
  const Eigen::Index d = sets.at(0).cols();
  Eigen::Index rows = 0;
  Eigen::RowVectorXd mean = Eigen::RowVectorXd::Zero(d);
  for (const auto& s : sets) {
    mean += s.colwise().sum();
    rows += s.rows();
  }
  mean /= static_cast<double>(rows);
  Work cov = Work::Zero(d, d);
  for (const auto& s : sets) {
    const Work c = s.rowwise() - mean;
    cov += c.transpose() * c;
  }
  Eigen::SelfAdjointEigenSolver<Work> eig(cov);
  Work dirs(d, count);
  for (Eigen::Index c = 0; c < count; ++c) dirs.col(c) = eig.eigenvectors().col(d - 1 - c);
  return dirs;
}

}  // namespace measattn::cli
