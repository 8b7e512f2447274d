// Bindings of lipschitz.hpp: certified upper bounds, the certified lower-bound
// search, and token-level Jacobian norms. Float64 (the library's precision here).
#include "measattn/lipschitz.hpp"
#include "convert.hpp"

namespace measattn::python {
namespace {

using namespace pybind11::literals;

// Keywords = LipschitzSearchOptions' table (lipschitz.hpp); residual is an explicit argument.
void apply_search_options(LipschitzSearchOptions& o, const py::dict& kw) {
  std::vector<std::string> known;
  for (const std::string& name : field_names<LipschitzSearchOptions>())
    if (name != "residual") known.push_back(name);
  reject_unknown(kw, known, "lipschitz_lower_bound");
  apply_fields(o, kw, {"residual"});
}

}  // namespace

void bind_lipschitz(py::module_& m) {
  const TokenJacobianOptions jacobian;  // the keywords' defaults (never copies)
  const TokenSearchOptions search;
  register_option_fields("lipschitz_upper_bounds", &option_fields_of<UpperBoundOptions>);
  register_option_fields("lipschitz_lower_bound", &option_fields_of<LipschitzSearchOptions>);
  register_option_fields("token_jacobian_norm", &option_fields_of<TokenJacobianOptions>);
  register_option_fields("token_lipschitz_lower_bound", &option_fields_of<TokenSearchOptions>);
  py::class_<NamedBound>(m, "NamedBound", "One named upper bound and what it bounds.")
      .def_readonly("name", &NamedBound::name)
      .def_readonly("value", &NamedBound::value)
      .def_readonly("kind", &NamedBound::kind,
                    "\"w1\" (constant of mu -> F(mu) in W1 on B_R), \"token_l2\" / "
                    "\"token_linf\" (token level on R^{N x d}) or \"token_l2_ball\" (on B_R^N).")
      .def_readonly("meaning", &NamedBound::meaning)
      .def("__repr__", [](const NamedBound& b) {
        return "NamedBound('" + b.name + "', " + py::repr(py::float_(b.value)).cast<std::string>() +
               ", kind='" + b.kind + "')";
      });

  py::class_<HeadBound>(m, "HeadBound", "The two parts of the W1 theorem for one head.")
      .def_readonly("x_part", &HeadBound::x_part)
      .def_readonly("measure_part", &HeadBound::measure_part)
      .def_readonly("x_core", &HeadBound::x_core)
      .def_readonly("measure_core", &HeadBound::measure_core)
      .def_readonly("value_norm", &HeadBound::value_norm)
      .def_readonly("projected_value_norm", &HeadBound::projected_value_norm)
      .def_readonly("rho", &HeadBound::rho)
      .def_readonly("oscillation", &HeadBound::oscillation);

  py::class_<UpperBoundResult>(m, "UpperBoundResult",
                               "Certified upper bounds on the Lipschitz constant in W1 on B_R.")
      .def_readonly("radius", &UpperBoundResult::radius)
      .def_readonly("residual", &UpperBoundResult::residual)
      .def_readonly("heads", &UpperBoundResult::heads)
      .def_readonly("bounds", &UpperBoundResult::bounds, "Every bound that applies, W1 first.")
      .def_readonly("best_w1", &UpperBoundResult::best_w1, "The smallest W1 bound.")
      .def_readonly("best_name", &UpperBoundResult::best_name)
      .def_readonly("output_radius", &UpperBoundResult::output_radius,
                    "Radius of a ball containing every output Gamma_mu(x), x, mu in B_R.")
      .def("get", &UpperBoundResult::get, "name"_a, "Value of a bound by name (NaN when absent).");

  m.def(
      "lipschitz_upper_bounds",
      [](const PyModel& pm, double radius, bool residual, Index tokens) {
        UpperBoundOptions o;
        o.radius = radius;
        o.residual = residual;
        o.tokens = tokens;
        o.validate();
        ModelArg<double> model(pm);
        py::gil_scoped_release release;
        return lipschitz_upper_bounds(model.get(), o);
      },
      "model"_a, "radius"_a, "residual"_a = UpperBoundOptions{}.residual,
      "tokens"_a = UpperBoundOptions{}.tokens,
      "Every certified upper bound L with W1(F(mu), F(nu)) <= L W1(mu, nu) for mu, nu in\n"
      "B_radius (Vuckovic et al.'s theorem, per-head and combined forms), plus Kim et\n"
      "al.'s token-level bounds for N = tokens when they apply. O(H d^3).");

  py::class_<LipschitzWitness>(m, "LipschitzWitness",
                               "The best pair (mu, nu) found and its images, exact W1 values.")
      .def_property_readonly(
          "mu_atoms", [](const LipschitzWitness& w) { return to_numpy(MatrixD(w.mu_atoms)); })
      .def_property_readonly(
          "nu_atoms", [](const LipschitzWitness& w) { return to_numpy(MatrixD(w.nu_atoms)); })
      .def_property_readonly(
          "mu_weights", [](const LipschitzWitness& w) { return to_numpy(VectorD(w.mu_weights)); })
      .def_property_readonly(
          "nu_weights", [](const LipschitzWitness& w) { return to_numpy(VectorD(w.nu_weights)); })
      .def_property_readonly(
          "f_mu_atoms", [](const LipschitzWitness& w) { return to_numpy(MatrixD(w.f_mu_atoms)); })
      .def_property_readonly(
          "f_nu_atoms", [](const LipschitzWitness& w) { return to_numpy(MatrixD(w.f_nu_atoms)); })
      .def_readonly("w1_input", &LipschitzWitness::w1_input)
      .def_readonly("w1_output", &LipschitzWitness::w1_output)
      .def_readonly("origin", &LipschitzWitness::origin)
      .def_readonly("restart", &LipschitzWitness::restart);

  py::class_<LipschitzSearchResult>(m, "LipschitzSearchResult",
                                    "A certified lower bound on the W1 Lipschitz constant.")
      .def_readonly("ratio", &LipschitzSearchResult::ratio,
                    "W1(F(mu), F(nu)) / W1(mu, nu) of the witness, both exact.")
      .def_readonly("witness", &LipschitzSearchResult::witness)
      .def_readonly("restart_ratios", &LipschitzSearchResult::restart_ratios)
      .def_readonly("evaluations", &LipschitzSearchResult::evaluations)
      .def_property_readonly("status",
                             [](const LipschitzSearchResult& r) { return to_string(r.status); })
      .def_readonly("message", &LipschitzSearchResult::message);

  m.def(
      "lipschitz_lower_bound",
      [](const PyModel& pm, double radius, bool residual, const py::kwargs& kw) {
        LipschitzSearchOptions o;
        o.residual = residual;
        apply_search_options(o, kw);
        o.validate();
        ModelArg<double> model(pm);
        py::gil_scoped_release release;
        return lipschitz_lower_bound(model.get(), radius, o);
      },
      "model"_a, "radius"_a, "residual"_a = LipschitzSearchOptions{}.residual,
      "Search for mu, nu in B_radius maximizing W1(F(mu), F(nu)) / W1(mu, nu) (gradient\n"
      "ascent over atoms and weights, restarts); the reported ratio is recomputed with the\n"
      "exact W1 solver: a certified lower bound. Options: atoms, restarts, steps,\n"
      "step_size, nearby, seed, threads, progress.");

  m.def(
      "lipschitz_ratio",
      [](const PyModel& pm, const py::object& mu, const py::object& nu, bool residual) {
        ModelArg<double> model(pm);
        MeasureArg<double> a(mu, py::none(), "mu");
        MeasureArg<double> b(nu, py::none(), "nu");
        py::gil_scoped_release release;
        return lipschitz_ratio(model.get(), a.get(), b.get(), residual);
      },
      "model"_a, "mu"_a, "nu"_a, "residual"_a = false,
      "W1(F(mu), F(nu)) / W1(mu, nu) with the exact solver (0 when W1(mu, nu) = 0).");

  // Unpacks as the tuple (value, constants, radii) it was before it had a name.
  py::class_<StackBoundResult>(m, "StackBoundResult",
                               "The certified W1 bound L = prod_l L_l(R_{l-1}) of a stack.")
      .def_readonly("value", &StackBoundResult::value, "The product L.")
      .def_readonly("constants", &StackBoundResult::constants, "L_l(R_{l-1}) per layer.")
      .def_readonly("radii", &StackBoundResult::radii, "R_0, ..., R_L.")
      .def("__len__", [](const StackBoundResult&) { return 3; })
      .def("__iter__",
           [](const StackBoundResult& s) {
             return py::iter(py::make_tuple(s.value, s.constants, s.radii));
           })
      .def("__getitem__",
           [](const StackBoundResult& s, py::ssize_t i) -> py::object {
             const py::tuple t = py::make_tuple(s.value, s.constants, s.radii);
             return t[py::int_(i)];
           })
      .def("__repr__", [](const StackBoundResult& s) {
        return "StackBoundResult(value=" + py::repr(py::float_(s.value)).cast<std::string>() +
               ", layers=" + std::to_string(s.constants.size()) + ")";
      });

  m.def(
      "lipschitz_stack_upper_bound",
      [](const std::vector<PyModel>& layers, double radius, bool residual) {
        std::vector<Model<double>> models;
        for (const auto& l : layers) models.push_back(l.as<double>());
        return lipschitz_stack_upper_bound(models, radius, residual);
      },
      "layers"_a, "radius"_a, "residual"_a = false,
      "StackBoundResult (value, constants, radii; unpacks as that tuple) for F_L o ... o F_1\n"
      "on B_R: L = prod_l L_l(R_{l-1}).");

  m.def(
      "castin_adversarial_tokens",
      [](const PyModel& pm, Index n, double radius) {
        return to_numpy(castin_adversarial_tokens(pm.as<double>(), n, radius));
      },
      "model"_a, "n"_a, "radius"_a,
      "Castin, Ablin and Peyre's adversarial token sequence (n, d) on the sphere of radius R.");

  py::class_<TokenJacobianResult>(m, "TokenJacobianResult")
      .def_readonly("value", &TokenJacobianResult::value,
                    "||J(X) v|| for the final unit v: a certified lower bound on ||J(X)||_2.")
      .def_readonly("iterations", &TokenJacobianResult::iterations, "Krylov restarts.")
      .def_property_readonly("status",
                             [](const TokenJacobianResult& r) { return to_string(r.status); })
      .def_readonly("message", &TokenJacobianResult::message)
      .def_readonly("residual", &TokenJacobianResult::residual,
                    "||J^T J v - value^2 v|| for the final unit v.")
      .def_readonly("lower", &TokenJacobianResult::lower, "= value (certified).")
      .def_readonly("upper", &TokenJacobianResult::upper,
                    "sqrt(value^2 + residual): J^T J has an eigenvalue within the residual of\n"
                    "value^2; the top one with probability 1 (random start).")
      .def_readonly("products", &TokenJacobianResult::products,
                    "Applications of J^T J (one JVP and one VJP each).")
      .def_readonly("method", &TokenJacobianResult::method)
      .def_readonly("converged", &TokenJacobianResult::converged);

  m.def(
      "token_jacobian_norm",
      [](const PyModel& pm, const py::object& tokens, bool residual, int iterations,
         double tolerance, std::uint64_t seed) {
        TokenJacobianOptions o;
        o.residual = residual;
        o.iterations = iterations;
        o.tolerance = tolerance;
        o.seed = seed;
        o.validate();
        ModelArg<double> model(pm);
        MatrixD x = matrix_copy<double>(tokens, "tokens");
        py::gil_scoped_release release;
        return token_jacobian_norm(model.get(), x, o);
      },
      // Keywords = TokenJacobianOptions' table, defaults from TokenJacobianOptions{}.
      "model"_a, "tokens"_a, "residual"_a = jacobian.residual, "iterations"_a = jacobian.iterations,
      "tolerance"_a = jacobian.tolerance, "seed"_a = jacobian.seed,
      "||J(X)||_2 of X -> (Gamma_{mu_X}(x_i))_i (tokens X (n, d), uniform weights) by\n"
      "restarted Lanczos on J^T J through exact JVPs and VJPs, stopped on the relative\n"
      "residual; value (certified lower), residual and the bracket [lower, upper].");

  m.def(
      "token_jacobian",
      [](const PyModel& pm, const py::object& tokens, bool residual) {
        ModelArg<double> model(pm);
        MatrixD x = matrix_copy<double>(tokens, "tokens");
        MatrixD j;
        {
          py::gil_scoped_release release;
          j = token_jacobian(model.get(), x, residual);
        }
        return to_numpy(std::move(j));
      },
      "model"_a, "tokens"_a, "residual"_a = false,
      "The dense token-level Jacobian, shape (n d_out, n d) (row-major vec of X).");

  py::class_<TokenSearchResult>(m, "TokenSearchResult")
      .def_readonly("value", &TokenSearchResult::value)
      .def_property_readonly("tokens",
                             [](const TokenSearchResult& r) { return to_numpy(MatrixD(r.tokens)); })
      .def_readonly("evaluations", &TokenSearchResult::evaluations)
      .def_readonly("upper", &TokenSearchResult::upper)
      .def_readonly("residual", &TokenSearchResult::residual)
      .def_readonly("origin", &TokenSearchResult::origin,
                    "\"castin\", \"castin_other\", \"outlier\" or \"random\".")
      .def_readonly("restart_values", &TokenSearchResult::restart_values);

  m.def(
      "token_lipschitz_lower_bound",
      [](const PyModel& pm, Index tokens, int restarts, int steps, double step_size, double radius,
         std::uint64_t seed, bool residual, int threads) {
        TokenSearchOptions o;
        o.tokens = tokens;
        o.restarts = restarts;
        o.steps = steps;
        o.step_size = step_size;
        o.radius = radius;
        o.seed = seed;
        o.residual = residual;
        o.threads = threads;
        o.validate();
        ModelArg<double> model(pm);
        py::gil_scoped_release release;
        return token_lipschitz_lower_bound(model.get(), o);
      },
      // Keywords = TokenSearchOptions' table, defaults from TokenSearchOptions{}.
      "model"_a, "tokens"_a = search.tokens, "restarts"_a = search.restarts,
      "steps"_a = search.steps, "step_size"_a = search.step_size, "radius"_a = search.radius,
      "seed"_a = search.seed, "residual"_a = search.residual, "threads"_a = search.threads,
      "max_X ||J(X)||_2 over N = tokens tokens (in B_R^N when radius > 0): Kim et al.'s\n"
      "empirical lower bound on the token-level Lipschitz constant.");

  py::class_<TokenBallBound>(m, "TokenBallBound",
                             "The proved bound token_ball_l2 on ||J(X)||_2 over B_R^n (dot).")
      .def_readonly("value", &TokenBallBound::value)
      .def_readonly("head_constants", &TokenBallBound::head_constants)
      .def_readonly("column_sums", &TokenBallBound::column_sums)
      .def_readonly("mean_field", &TokenBallBound::mean_field);

  m.def(
      "token_ball_upper_bound",
      [](const PyModel& pm, double radius, Index tokens, bool residual) {
        ModelArg<double> model(pm);
        py::gil_scoped_release release;
        return token_ball_upper_bound(model.get(), radius, tokens, residual);
      },
      "model"_a, "radius"_a, "tokens"_a, "residual"_a = false,
      "token_ball_l2: a proved bound on ||J(X)||_2 for every X in B_R^n (dot potential,\n"
      "uniform weights); grows like sqrt(n), independent of n past e^{2 R rho}.");

  py::class_<TokenSweepResult>(m, "TokenSweepResult")
      .def_readonly("sizes", &TokenSweepResult::sizes)
      .def_readonly("lower", &TokenSweepResult::lower)
      .def_readonly("castin", &TokenSweepResult::castin)
      .def_readonly("upper", &TokenSweepResult::upper)
      .def_readonly("origins", &TokenSweepResult::origins)
      .def_readonly("exponent_lower", &TokenSweepResult::exponent_lower)
      .def_readonly("exponent_upper", &TokenSweepResult::exponent_upper)
      .def_readonly("exponent_castin", &TokenSweepResult::exponent_castin)
      .def_readonly("local_exponents", &TokenSweepResult::local_exponents)
      .def_readonly("evaluations", &TokenSweepResult::evaluations);

  m.def(
      "token_lipschitz_sweep",
      [](const PyModel& pm, const std::vector<Index>& sizes, double radius, int restarts, int steps,
         double step_size, std::uint64_t seed, bool residual, int threads) {
        TokenSearchOptions o;
        o.radius = radius;
        o.restarts = restarts;
        o.steps = steps;
        o.step_size = step_size;
        o.seed = seed;
        o.residual = residual;
        o.threads = threads;
        ModelArg<double> model(pm);
        py::gil_scoped_release release;
        return token_lipschitz_sweep(model.get(), sizes, o);
      },
      // Keywords = TokenSearchOptions' table (tokens replaced by sizes).
      "model"_a, "sizes"_a, "radius"_a, "restarts"_a = search.restarts, "steps"_a = search.steps,
      "step_size"_a = search.step_size, "seed"_a = search.seed, "residual"_a = search.residual,
      "threads"_a = search.threads,
      "token_lipschitz_lower_bound on B_R^n for each n in sizes, Castin's sequence and the\n"
      "proved bound token_ball_l2 beside it, and the fitted exponents of log value vs log n.");
}

}  // namespace measattn::python
