// Section 5 of the report: the tokens as interacting particles (docs/theory.md#flow).
// The L-layer weight-shared residual network is Euler's scheme with h = T / L;
// its distance to the continuum flow (a tight Dormand–Prince reference) is
// measured in W1 and the convergence order fitted; then the layer-norm (sphere)
// dynamics are run long enough to watch the tokens cluster.
#include <cmath>

#include "analyze.hpp"
#include "measattn/flow.hpp"
#include "measattn/wasserstein.hpp"
#include "plot.hpp"

namespace measattn::cli {

namespace {

// Least-squares slope of log(err) against log(L).
// Only positive errors enter (log 0 is -inf); NaN when fewer than two remain.
double fitted_order(const std::vector<double>& depths, const std::vector<double>& errors) {
  double sx = 0, sy = 0, sxx = 0, sxy = 0, n = 0;
  for (size_t i = 0; i < depths.size(); ++i) {
    if (!(errors[i] > 0) || !std::isfinite(errors[i])) continue;
    n += 1;
    const double a = std::log(depths[i]), b = std::log(errors[i]);
    sx += a;
    sy += b;
    sxx += a * a;
    sxy += a * b;
  }
  if (n < 2) return std::nan("");
  return -(n * sxy - sx * sy) / (n * sxx - sx * sx);
}

// An order for the report: "n/a" when it could not be fitted.
std::string order_text(double order) {
  return std::isfinite(order) ? fmt(order, 3) : std::string("n/a (errors at rounding level)");
}

}  // namespace

void section_flow(SectionContext& ctx) {
  const auto& model = ctx.in.model;
  const auto& mu = *ctx.in.tokens;
  auto& r = ctx.report;
  r.heading(2, "5. The infinitely deep weight-shared network: a flow of measures");
  if (model.out_dim() != model.query_dim() || model.query_dim() != model.key_dim()) {
    r.paragraph("The layer maps R^" + std::to_string(model.query_dim()) + " to R^" +
                std::to_string(model.out_dim()) +
                ": a residual network of it is not defined, so there is no flow to show.");
    return;
  }
  r.paragraph(
      "Stacking the layer L times with shared weights and residual connections of step h = "
      "T/L, `x^{l+1} = x^l + h Gamma_{mu^l}(x^l)`, is exactly the explicit Euler scheme of "
      "the particle system `dx_i/dt = Gamma_{mu_t}(x_i)`; as L grows the network converges "
      "to the continuum flow mu_T (docs/theory.md, flow). Here T = 1, the continuum is a "
      "Dormand-Prince 5(4) run at tolerance 1e-11, and the error is the exact W1 distance "
      "between the network's output measure and mu_T.");

  FlowOptions ref_opt;
  ref_opt.time = 1;
  ref_opt.scheme = FlowScheme::dopri5;
  ref_opt.tolerance = 1e-11;
  const auto reference = flow(model, mu, ref_opt);
  const Measure<double> mu_t(reference.particles, reference.weights);

  Table t;
  t.columns = {"depth_L", "euler_w1", "rk4_w1"};
  std::vector<double> depths, euler_err, rk4_err;
  std::vector<std::vector<std::string>> rows;
  for (Index depth : {1, 2, 4, 8, 16, 32, 64}) {
    FlowOptions opt;
    opt.time = 1;
    opt.steps = depth;
    opt.scheme = FlowScheme::euler;
    const auto euler = flow(model, mu, opt);
    opt.scheme = FlowScheme::rk4;
    const auto rk4 = flow(model, mu, opt);
    const double e1 =
        wasserstein_exact_value(Measure<double>(euler.particles, euler.weights), mu_t, 1);
    const double e4 = wasserstein_exact_value(Measure<double>(rk4.particles, rk4.weights), mu_t, 1);
    depths.push_back(static_cast<double>(depth));
    euler_err.push_back(e1);
    rk4_err.push_back(e4);
    t.rows.push_back({static_cast<double>(depth), e1, e4});
    rows.push_back({std::to_string(depth), fmt(e1, 4), fmt(e4, 4)});
  }
  const double order_euler = fitted_order(depths, euler_err);
  // RK4 reaches the reference's own accuracy quickly: fit where it is above 1e-9.
  std::vector<double> d4, e4;
  for (size_t i = 0; i < depths.size(); ++i)
    if (rk4_err[i] > 1e-9) {
      d4.push_back(depths[i]);
      e4.push_back(rk4_err[i]);
    }
  const double order_rk4 = d4.size() >= 2 ? fitted_order(d4, e4) : std::nan("");
  r.table({"depth L", "W1(Euler network, mu_T)", "W1(RK4, mu_T)"}, rows,
          "Depth-L weight-shared residual network (Euler) and the RK4 scheme against the "
          "continuum at T = 1. Fitted convergence orders: Euler " +
              order_text(order_euler) + " (theory: 1), RK4 " + order_text(order_rk4) +
              " (theory: 4).");
  write_csv(ctx.dir + "/flow_convergence.csv", t);
  const bool convergence_drawn = render_or_note(
      ctx, "flow_convergence.png",
      t.gnuplot_block("D") +
          "set logscale xy\nset xlabel 'depth L (layers, h = 1/L)'\n"
          "set ylabel 'W1 to the continuum flow at T = 1'\nset key bottom left\n"
          "set grid\nset title 'Deep weight-shared network -> continuum flow'\n"
          "plot $D using 1:2 with linespoints lw 2 title 'Euler = residual network', "
          "$D using 1:3 with linespoints lw 2 title 'RK4', "
          "$D using 1:($2 > 0 ? $2 * 0 + " +
          fmt(euler_err.front(), 8) + " / $1 : 1/0) with lines dt 2 lc 'gray' title 'slope -1'\n");
  if (convergence_drawn)
    r.image("flow_convergence.png", "Error of the depth-L network against the continuum (log-log)",
            "flow_convergence.csv");

  // Clustering under the layer-norm dynamics on the sphere: every token must
  // have a direction (a token at the origin cannot be put on the sphere).
  for (Index i = 0; i < mu.size(); ++i) {
    if (!(mu.atoms().row(i).stableNorm() > 0)) {
      r.paragraph("The layer-norm (sphere) dynamics are not shown: token " + std::to_string(i) +
                  " is at the origin and has no direction to normalize.");
      ctx.summary += "flow: Euler (residual network) order " + order_text(order_euler) +
                     ", RK4 order " + order_text(order_rk4) +
                     "; sphere dynamics skipped (a token at the origin)\n";
      return;
    }
  }
  const double t_end = 30;
  FlowOptions sphere;
  sphere.time = t_end;
  sphere.steps = 600;
  sphere.scheme = FlowScheme::rk4;
  sphere.sphere = true;
  sphere.save_every = 10;
  sphere.cluster_tolerance = 1e-2;
  const auto layer_norm = flow(model, mu, sphere);
  const auto canonical_model = Model<double>::canonical(mu.dim(), 4.0);
  const auto canonical = flow(canonical_model, mu, sphere);

  Table c;
  c.columns = {"time", "clusters_model", "clusters_canonical_beta4", "energy_canonical"};
  for (size_t f = 0; f < layer_norm.frame_times.size(); ++f) {
    c.rows.push_back({layer_norm.frame_times[f], static_cast<double>(layer_norm.cluster_counts[f]),
                      static_cast<double>(canonical.cluster_counts[f]), canonical.energies[f]});
  }
  write_csv(ctx.dir + "/flow_clusters.csv", c);
  const bool clusters_drawn =
      render_or_note(ctx, "flow_clusters.png",
                     c.gnuplot_block("C") +
                         "set xlabel 'time t (depth)'\nset ylabel 'clusters (tolerance 0.01)'\n"
                         "set y2label 'energy E_4 (canonical model)'\nset ytics nomirror\n"
                         "set y2tics\nset grid\nset key top right\n"
                         "set title 'Tokens cluster under the layer-norm dynamics'\n"
                         "plot $C using 1:2 with steps lw 2 title 'this layer on the sphere', "
                         "$C using 1:3 with steps lw 2 title 'canonical V = I, beta = 4', "
                         "$C using 1:4 axes x1y2 with lines dt 2 title 'energy E_4 (canonical)'\n");

  // Trajectories of this layer's sphere flow, projected on the top-2 principal directions.
  // The principal directions of the start configuration (plot.hpp).
  const Matrix<double> dirs =
      principal_directions<Matrix<double>>(std::vector<Matrix<double>>{mu.atoms()}, 2);
  Table traj;
  traj.columns = {"particle", "time", "pc1", "pc2"};
  std::string script =
      "set xlabel 'principal direction 1'\nset ylabel 'principal direction 2'\n"
      "set title 'Token trajectories (layer-norm flow), projected'\n"
      "set size ratio -1\nset key off\n";
  for (Index i = 0; i < mu.size(); ++i) {
    for (size_t f = 0; f < layer_norm.frames.size(); ++f) {
      const Vector<double> p = dirs.transpose() * layer_norm.frames[f].row(i).transpose();
      traj.rows.push_back({static_cast<double>(i), layer_norm.frame_times[f], p[0], p[1]});
    }
  }
  write_csv(ctx.dir + "/flow_trajectories.csv", traj);
  // One data block, particles separated by blank lines so that each
  // trajectory is its own polyline.
  std::string block = "$T << EOD\n";
  for (size_t row = 0; row < traj.rows.size(); ++row) {
    if (row > 0 && traj.rows[row][0] != traj.rows[row - 1][0]) block += "\n";
    block += fmt(traj.rows[row][0], 17) + " " + fmt(traj.rows[row][1], 17) + " " +
             fmt(traj.rows[row][2], 17) + " " + fmt(traj.rows[row][3], 17) + "\n";
  }
  block += "EOD\n";
  script += block + "plot $T using 3:4:($1 + 1) with lines lc variable lw 1, " +
            "$T using ($2 == 0 ? $3 : 1/0):4 with points pt 7 ps 0.8 lc 'black', " +
            "$T using ($2 >= " + fmt(layer_norm.frame_times.back(), 17) +
            " ? $3 : 1/0):4 with points pt 6 ps 1.4 lc 'red'\n";
  const bool trajectories_drawn = render_or_note(ctx, "flow_trajectories.png", script, 700, 650);

  const Index start_clusters = layer_norm.cluster_counts.front();
  r.paragraph(
      "Layer normalization confines the tokens to the unit sphere: `dx_i/dt = P_{x_i} "
      "Gamma_{mu_t}(x_i)`. Over t in [0, " +
      fmt(t_end, 3) + "] (RK4, 600 steps) the tokens of this layer go from " +
      std::to_string(start_clusters) + " to " + std::to_string(layer_norm.cluster_counts.back()) +
      " clusters (distance tolerance 0.01); under the canonical model of the literature (V = I, "
      "G = 4 <x, y>) they go to " +
      std::to_string(canonical.cluster_counts.back()) +
      ", and its energy E_4 never decreases (from " + fmt(canonical.energies.front(), 6) + " to " +
      fmt(canonical.energies.back(), 6) + ").");
  if (clusters_drawn)
    r.image("flow_clusters.png", "Cluster count over time, and the canonical model's energy",
            "flow_clusters.csv");
  if (trajectories_drawn)
    r.image("flow_trajectories.png",
            "Trajectories of the tokens on the sphere (black: start, red: t = " + fmt(t_end, 3) +
                "), projected on the top-2 principal directions of the start",
            "flow_trajectories.csv");
  ctx.summary += "flow: Euler (residual network) order " + order_text(order_euler) +
                 ", RK4 order " + order_text(order_rk4) + "; clusters " +
                 std::to_string(start_clusters) + " -> " +
                 std::to_string(layer_norm.cluster_counts.back()) + " (this layer), -> " +
                 std::to_string(canonical.cluster_counts.back()) + " (canonical beta = 4)\n";
}

}  // namespace measattn::cli
