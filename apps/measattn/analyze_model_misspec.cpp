// Real-model section 4: mis-specification on real text (docs/theory.md#misspec).
// The text is perturbed — typos, dropped words, swapped adjacent words — with a
// fixed seed; each copy is tokenized again by the checkpoint's tokenizer, run
// through the stack, and compared with the original in exact W1 at every depth:
// W1 in (entering a block) against W1 out (leaving it), layer by layer.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <numeric>
#include <random>

#include "analyze_model.hpp"
#include "measattn/attention.hpp"
#include "measattn/wasserstein.hpp"
#include "plot.hpp"
#include "tokenize.hpp"

namespace measattn::cli {

namespace {

// The text as words (maximal runs of non-space bytes) with the spacing after each.
struct Words {
  std::string lead;                                        // spacing before the first word
  std::vector<std::pair<std::string, std::string>> items;  // word, spacing after it
  std::string join() const {
    std::string s = lead;
    for (const auto& [w, sp] : items) s += w + sp;
    return s;
  }
};

Words split_words(const std::string& text) {
  Words w;
  size_t i = 0;
  while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) w.lead += text[i++];
  while (i < text.size()) {
    std::string word, space;
    while (i < text.size() && !std::isspace(static_cast<unsigned char>(text[i]))) word += text[i++];
    while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) space += text[i++];
    w.items.emplace_back(word, space);
  }
  return w;
}

// Positions of the ASCII letters of a word (multi-byte UTF-8 is left alone).
std::vector<size_t> letters(const std::string& word) {
  std::vector<size_t> p;
  for (size_t i = 0; i < word.size(); ++i)
    if (std::isalpha(static_cast<unsigned char>(word[i]))) p.push_back(i);
  return p;
}

// `edits` distinct indices among `candidates`, drawn by `rng` (sorted).
std::vector<size_t> choose(std::vector<size_t> candidates, size_t edits, std::mt19937_64& rng) {
  std::shuffle(candidates.begin(), candidates.end(), rng);
  candidates.resize(std::min(edits, candidates.size()));
  std::sort(candidates.begin(), candidates.end());
  return candidates;
}

// The perturbed text, and the number of edits made (0 when none was possible).
std::pair<std::string, int> perturb(const std::string& text, const std::string& kind, int edits,
                                    std::mt19937_64& rng) {
  Words w = split_words(text);
  std::vector<size_t> cand;
  if (kind == "typo") {
    for (size_t i = 0; i < w.items.size(); ++i)
      if (letters(w.items[i].first).size() >= 2) cand.push_back(i);
    const auto picked = choose(cand, static_cast<size_t>(edits), rng);
    for (size_t i : picked) {
      std::string& word = w.items[i].first;
      const auto pos = letters(word);
      std::uniform_int_distribution<size_t> at(0, pos.size() - 1);
      const size_t a = pos[at(rng)];
      // Swap with the next letter when it differs, else replace by another letter.
      const auto next = std::find(pos.begin(), pos.end(), a) + 1;
      if (next != pos.end() && word[*next] != word[a] && (rng() & 1)) {
        std::swap(word[a], word[*next]);
      } else {
        std::uniform_int_distribution<int> letter(0, 24);
        const char old = static_cast<char>(std::tolower(static_cast<unsigned char>(word[a])));
        char c = static_cast<char>('a' + letter(rng));
        if (c >= old) ++c;  // never the same letter
        word[a] = c;
      }
    }
    return {w.join(), static_cast<int>(picked.size())};
  }
  if (kind == "drop") {
    if (w.items.size() < 2) return {text, 0};
    cand.resize(w.items.size());
    std::iota(cand.begin(), cand.end(), size_t{0});
    const auto picked = choose(cand, std::min(static_cast<size_t>(edits), w.items.size() - 1), rng);
    for (auto it = picked.rbegin(); it != picked.rend(); ++it) {
      const auto pos = w.items.begin() + static_cast<std::ptrdiff_t>(*it);
      if (*it + 1 == w.items.size() && *it > 0) {
        w.items[*it - 1].second = pos->second;  // the text's ending stays
      }
      w.items.erase(pos);
    }
    return {w.join(), static_cast<int>(picked.size())};
  }
  // swap: disjoint adjacent pairs (i, i + 1), i even-aligned candidates.
  for (size_t i = 0; i + 1 < w.items.size(); i += 2) cand.push_back(i);
  const auto picked = choose(cand, static_cast<size_t>(edits), rng);
  for (size_t i : picked) std::swap(w.items[i].first, w.items[i + 1].first);
  return {w.join(), static_cast<int>(picked.size())};
}

double w1(const Matrix<double>& a, const Matrix<double>& b) {
  return wasserstein_exact_value(Measure<double>::empirical(a), Measure<double>::empirical(b), 1);
}

}  // namespace

void model_section_misspec(ModelContext& ctx) {
  const auto& model = ctx.in.model;
  auto& r = ctx.report;
  const Index layers = model.num_layers();
  r.heading(2, "4. Mis-specification on real text");
  ctx.local_w1_ratio.assign(static_cast<size_t>(layers), std::nan(""));
  if (ctx.in.text.empty()) {
    r.paragraph(
        "The input was given as token ids (--input-ids): there is no text to perturb, so this "
        "section is empty.");
    ctx.json["misspec"] = {{"kind", "exact"}, {"skipped", "no text (input given as ids)"}};
    ctx.summary += "misspec: skipped (no text)\n";
    return;
  }
  r.paragraph(
      "The text is perturbed with a fixed seed (" + std::to_string(ctx.in.seed) +
      "): **typo** (in k words, two adjacent letters swapped or one letter replaced), **drop** "
      "(k words removed), **swap** (k disjoint pairs of adjacent words exchanged), k = 1, 3, 9. "
      "Each perturbed text is tokenized again by the checkpoint's tokenizer and run through the "
      "stack; at every depth l the table gives W1 between the token measures of the original and "
      "the perturbed text (the two sequences may differ in length: W1 compares the measures, not "
      "the sequences). Depth 0 is the embedding output (W1 in); depth l the output of block l. "
      "**exact** (exact W1 solver).");

  const char* kinds[] = {"typo", "drop", "swap"};
  const int levels[] = {1, 3, 9};
  std::uint64_t stream = 0;
  for (const char* kind : kinds) {
    int last = -1;
    for (int k : levels) {
      std::mt19937_64 rng(ctx.in.seed * 1000003ULL + (++stream));
      auto [text, edits] = perturb(ctx.in.text, kind, k, rng);
      if (edits == 0 || edits == last || text == ctx.in.text) continue;
      last = edits;
      Perturbation p;
      p.kind = kind;
      p.edits = edits;
      p.text = text;
      p.ids =
          tokenize_string(ctx.in.model_path, text, std::string(kind) + " perturbation of the text");
      if (p.ids == ctx.in.ids) continue;  // the tokenizer sees no difference (say, case)
      if (p.ids.size() > static_cast<size_t>(model.max_positions()) && model.max_positions() > 0)
        continue;  // a longer copy than the model's positions (never with the built-in edits)
      p.hidden.push_back(embed(model, p.ids));
      for (const auto& block : model.blocks)
        p.hidden.push_back(block_forward(block, p.hidden.back()));
      ctx.perturbations.push_back(std::move(p));
    }
  }

  Table t;
  t.columns = {"perturbation", "edits", "tokens"};
  for (Index l = 0; l <= layers; ++l) t.columns.push_back("w1_depth" + std::to_string(l));
  std::vector<std::vector<std::string>> rows;
  nlohmann::json jp = nlohmann::json::array();
  Table pairs;  // W1 in against W1 out, per block
  pairs.columns = {"perturbation", "block", "w1_in", "w1_out"};
  std::string plot_lines, plot_pairs;
  double worst_gain = 0;
  for (size_t pi = 0; pi < ctx.perturbations.size(); ++pi) {
    const auto& p = ctx.perturbations[pi];
    std::vector<double> row{static_cast<double>(pi), static_cast<double>(p.edits),
                            static_cast<double>(p.ids.size())};
    std::vector<std::string> cells{p.kind + " x" + std::to_string(p.edits),
                                   std::to_string(p.ids.size())};
    nlohmann::json jw = nlohmann::json::array();
    std::vector<double> dist;
    for (Index l = 0; l <= layers; ++l) {
      const double v = w1(ctx.hidden[static_cast<size_t>(l)], p.hidden[static_cast<size_t>(l)]);
      dist.push_back(v);
      row.push_back(v);
      cells.push_back(fmt(v, 4));
      jw.push_back(json_number(v));
    }
    for (Index l = 0; l < layers; ++l) {
      pairs.rows.push_back({static_cast<double>(pi), static_cast<double>(l),
                            dist[static_cast<size_t>(l)], dist[static_cast<size_t>(l) + 1]});
      if (dist[static_cast<size_t>(l)] > 0)
        worst_gain =
            std::max(worst_gain, dist[static_cast<size_t>(l) + 1] / dist[static_cast<size_t>(l)]);
      // The attention map alone between the two attention inputs (a local W1 ratio).
      const auto& block = model.blocks[static_cast<size_t>(l)];
      const Matrix<double> xa = ctx.attention_in[static_cast<size_t>(l)];
      const Matrix<double> xb = attention_input(block, p.hidden[static_cast<size_t>(l)]);
      AttendOptions ao;
      ao.causal = block.causal;
      const auto mu = Measure<double>::empirical(xa), nu = Measure<double>::empirical(xb);
      const double din = wasserstein_exact_value(mu, nu, 1);
      if (din > 0) {
        const double dout = wasserstein_exact_value(self_attention(block.attention, mu, ao),
                                                    self_attention(block.attention, nu, ao), 1);
        double& best = ctx.local_w1_ratio[static_cast<size_t>(l)];
        if (std::isnan(best) || dout / din > best) best = dout / din;
      }
    }
    t.rows.push_back(row);
    rows.push_back(cells);
    jp.push_back({{"kind", p.kind},
                  {"edits", p.edits},
                  {"tokens", p.ids.size()},
                  {"text", p.text},
                  {"w1_by_depth", jw}});
    const std::string col = std::to_string(pi + 2);
    plot_lines += std::string(pi ? ", " : "") + "$W using 1:" + col +
                  " with linespoints lw 2 title '" + p.kind + " x" + std::to_string(p.edits) + "'";
  }
  std::vector<std::string> columns{"perturbation", "tokens"};
  for (Index l = 0; l <= layers; ++l)
    columns.push_back(l == 0 ? std::string("W1 in (embedding)")
                             : "W1 after block " + std::to_string(l - 1));
  r.table(columns, rows,
          "W1 between the original and the perturbed token measures at every depth (exact). "
          "The original has " +
              std::to_string(ctx.in.ids.size()) + " tokens.");
  r.paragraph(
      "Largest W1 out / W1 in of one block over the perturbations (block-level "
      "amplification, exact ratio of exact W1): " +
      fmt(worst_gain, 4) + ". The perturbed texts are in report.json.");
  write_csv(ctx.dir + "/model_misspec.csv", t);
  write_csv(ctx.dir + "/model_misspec_pairs.csv", pairs);

  // Depth on x, one line per perturbation.
  std::string block = "$W << EOD\n";
  for (Index l = 0; l <= layers; ++l) {
    block += std::to_string(l);
    for (const auto& row : t.rows) block += " " + fmt(row[3 + static_cast<size_t>(l)], 17);
    block += "\n";
  }
  block += "EOD\n";
  if (!ctx.perturbations.empty()) {
    add_model_plot(ctx, "model_misspec.png",
                   block +
                       "set xlabel 'depth l (0: embedding output)'\nset ylabel "
                       "'W1(original, perturbed)'\nset logscale y\nset grid\nset key outside "
                       "right\nset title 'Perturbed text against the original, layer by layer "
                       "(exact W1)'\nplot " +
                       plot_lines + "\n",
                   "W1 between the token measures of the original and of each perturbed text "
                   "at every depth; exact",
                   "model_misspec.csv", 1000, 600);
    add_model_plot(ctx, "model_misspec_in_out.png",
                   pairs.gnuplot_block("P") +
                       "set xlabel 'W1 in (entering block l)'\nset ylabel 'W1 out (leaving "
                       "block l)'\nset logscale xy\nset grid\nset key top left\nset title "
                       "'W1 in against W1 out, every block and perturbation (exact)'\n"
                       "plot $P using 3:4:2 with points pt 7 ps 1.2 lc palette title "
                       "'block l (colour)', x with lines dt 2 lc 'gray' title 'W1 out = W1 in'\n",
                   "W1 in against W1 out for every block (colour: block index) and perturbation; "
                   "points above the diagonal are amplified by the block",
                   "model_misspec_pairs.csv");
  }
  ctx.json["misspec"] = {{"kind", "exact"},
                         {"seed", ctx.in.seed},
                         {"original_tokens", ctx.in.ids.size()},
                         {"perturbations", jp},
                         {"largest_block_amplification", json_number(worst_gain)}};
  ctx.summary += "misspec: " + std::to_string(ctx.perturbations.size()) +
                 " perturbed texts, largest block amplification W1 out / W1 in " +
                 fmt(worst_gain, 4) + "\n";
}

}  // namespace measattn::cli
