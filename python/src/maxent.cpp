// Bindings of maxent.hpp: Gibbs principle, constrained maximum entropy, entropy
// diagnostics of a model, doubly-stochastic (Sinkhorn) attention potentials.
// Computed in float64 (inputs of other dtypes are converted).
#include "measattn/maxent.hpp"
#include "convert.hpp"

namespace measattn::python {
namespace {

using namespace pybind11::literals;

VectorD optional_weights(const py::handle& w) {
  return w.is_none() ? VectorD() : vector_copy<double>(w, "weights");
}

py::array vec(const VectorD& v) { return to_numpy(VectorD(v)); }

}  // namespace

void bind_maxent(py::module_& m) {
  // Keywords = the field tables of maxent.hpp, defaults from default-constructed Options.
  register_option_fields("maxent", &option_fields_of<MaxEntOptions>);
  register_option_fields("attention_entropy", &option_fields_of<EntropyOptions>);
  register_option_fields("sinkhorn_attention", &option_fields_of<SinkhornAttentionOptions>);
  using GR = GibbsResult<double>;
  py::class_<GR>(m, "GibbsResult", "The Gibbs (softmax) measure nu*_j = w_j e^{g_j} / Z.")
      .def_property_readonly("probabilities", [](const GR& r) { return vec(r.probabilities); })
      .def_readonly("log_partition", &GR::log_partition, "log Z = logsumexp_j (g_j + log w_j).")
      .def_readonly("expected_score", &GR::expected_score, "E_{nu*}[g].")
      .def_readonly("entropy", &GR::entropy, "Shannon entropy of nu* (natural log).")
      .def_readonly("kl", &GR::kl, "KL(nu* || mu).");

  m.def(
      "gibbs",
      [](const py::object& scores, const py::object& weights) {
        VectorD g = vector_copy<double>(scores, "scores");
        VectorD w = optional_weights(weights);
        return gibbs<double>(g, w);
      },
      "scores"_a, "weights"_a = py::none(),
      "The maximizer nu* of E_nu[g] - KL(nu || mu) over nu << mu and its value log Z\n"
      "(Gibbs variational principle). scores g (m,), weights w (m,) of mu (None =\n"
      "uniform). Log domain: any finite scores give finite results. O(m).");

  m.def(
      "log_partition",
      [](const py::object& scores, const py::object& weights) {
        return log_partition<double>(vector_copy<double>(scores, "scores"),
                                     optional_weights(weights));
      },
      "scores"_a, "weights"_a = py::none(), "log sum_j w_j e^{g_j} (w normalized), stable.");

  using GB = GibbsBoundResult<double>;
  py::class_<GB>(m, "GibbsBoundResult", "A candidate nu measured against the Gibbs principle.")
      .def_readonly("objective", &GB::objective, "E_nu[g] - KL(nu || mu) <= log Z.")
      .def_readonly("log_partition", &GB::log_partition)
      .def_readonly("gap", &GB::gap, "log Z - objective = KL(nu || nu*) >= 0.");

  m.def(
      "gibbs_bound",
      [](const py::object& scores, const py::object& candidate, const py::object& weights) {
        return gibbs_bound<double>(vector_copy<double>(scores, "scores"),
                                   vector_copy<double>(candidate, "candidate"),
                                   optional_weights(weights));
      },
      "scores"_a, "candidate"_a, "weights"_a = py::none(),
      "Objective E_nu[g] - KL(nu || mu) of the candidate nu (m,) and its duality gap.");

  using MR = MaxEntResult<double>;
  py::class_<MR>(m, "MaxEntResult",
                 "nu_beta ∝ w e^{beta g}: the minimizer of KL(nu || mu) with E_nu[g] = target.")
      .def_readonly("beta", &MR::beta, "Inverse temperature.")
      .def_property_readonly("probabilities", [](const MR& r) { return vec(r.probabilities); })
      .def_readonly("expected_score", &MR::expected_score)
      .def_readonly("target", &MR::target)
      .def_readonly("residual", &MR::residual, "expected_score - target.")
      .def_readonly("entropy", &MR::entropy)
      .def_readonly("kl", &MR::kl, "KL(nu_beta || mu).")
      .def_readonly("log_partition", &MR::log_partition)
      .def_readonly("variance", &MR::variance, "Var_{nu_beta}(g) = dE/dbeta.")
      .def_readonly("score_min", &MR::score_min)
      .def_readonly("score_max", &MR::score_max)
      .def_readonly("beta_lower", &MR::beta_lower)
      .def_readonly("beta_upper", &MR::beta_upper)
      .def_readonly("iterations", &MR::iterations)
      .def_property_readonly(
          "status", [](const MR& r) { return to_string(r.status); },
          "\"converged\" or \"iteration_limit\".")
      .def_readonly("message", &MR::message);

  m.def(
      "maxent",
      [](const py::object& scores, double target, const py::object& weights, double beta_tolerance,
         int max_iterations) {
        MaxEntOptions o;
        o.beta_tolerance = beta_tolerance;
        o.max_iterations = max_iterations;
        o.validate();
        return maxent<double>(vector_copy<double>(scores, "scores"), target,
                              optional_weights(weights), o);
      },
      "scores"_a, "target"_a, "weights"_a = py::none(),
      "beta_tolerance"_a = MaxEntOptions{}.beta_tolerance,
      "max_iterations"_a = MaxEntOptions{}.max_iterations,
      "Constrained maximum entropy: the beta with E_{nu_beta}[g] = target, nu_beta ∝\n"
      "w e^{beta g} (the minimizer of KL(nu || mu) under E_nu[g] = target). Standard\n"
      "attention is beta = 1. target must lie in (min g, max g) on supp mu (else\n"
      "ValueError naming the interval). Safeguarded Newton, O(m) per iteration.");

  m.def(
      "maxent_at_beta",
      [](const py::object& scores, double beta, const py::object& weights) {
        return maxent_at_beta<double>(vector_copy<double>(scores, "scores"), beta,
                                      optional_weights(weights));
      },
      "scores"_a, "beta"_a, "weights"_a = py::none(),
      "The outputs of maxent for a given beta (no solve; target = expected_score).");

  m.def("default_temperature_grid", &default_temperature_grid,
        "-logspace(2, -2, 17) + [0] + logspace(-2, 2, 17): 35 increasing betas incl. 1.");

  using HE = HeadEntropy<double>;
  py::class_<HE>(m, "HeadEntropy", "Self-attention entropies of one head.")
      .def_property_readonly(
          "entropy", [](const HE& r) { return vec(r.entropy); },
          "(n,) H(K(x_i, .)) per query (natural log).")
      .def_property_readonly(
          "effective_tokens", [](const HE& r) { return vec(r.effective_tokens); }, "(n,) exp(H_i).")
      .def_property_readonly(
          "expected_score", [](const HE& r) { return vec(r.expected_score); },
          "(n,) E_{K(x_i, .)}[G(x_i, .)].")
      .def_readonly("mean_entropy", &HE::mean_entropy, "sum_i w_i H_i.")
      .def_readonly("min_entropy", &HE::min_entropy)
      .def_readonly("max_entropy", &HE::max_entropy)
      .def_readonly("mean_effective_tokens", &HE::mean_effective_tokens)
      .def_property_readonly(
          "curve_entropy", [](const HE& r) { return vec(r.curve_entropy); },
          "Temperature curve: sum_i w_i H_i(beta) per beta.")
      .def_property_readonly("curve_expected_score",
                             [](const HE& r) { return vec(r.curve_expected_score); });

  using ER = EntropyResult<double>;
  py::class_<ER>(m, "EntropyResult", "Entropy diagnostics of every head.")
      .def_readonly("betas", &ER::betas, "The temperature grid used.")
      .def_readonly("heads", &ER::heads, "One HeadEntropy per head.");

  m.def(
      "attention_entropy",
      [](const PyModel& pm, const py::object& tokens, const py::object& weights,
         const py::object& betas, bool causal, Index query_block, Index key_block) {
        EntropyOptions o;
        if (!betas.is_none()) o.betas = betas.cast<std::vector<double>>();
        o.causal = causal;
        o.query_block = query_block;
        o.key_block = key_block;
        o.validate();
        ModelArg<double> model(pm);
        MeasureArg<double> mu(tokens, weights);
        py::gil_scoped_release release;
        return attention_entropy<double>(model.get(), mu.get(), o);
      },
      "model"_a, "tokens"_a, "weights"_a = py::none(), "betas"_a = py::none(),
      "causal"_a = EntropyOptions{}.causal, "query_block"_a = EntropyOptions{}.query_block,
      "key_block"_a = EntropyOptions{}.key_block,
      "Self-attention entropy of every head on mu (queries = atoms, averages weighted by\n"
      "mu), effective number of attended tokens exp(H), and the temperature curve over\n"
      "betas (None = default_temperature_grid()). Streamed: never forms the n x n kernel.");

  using SR = SinkhornAttentionResult<double>;
  py::class_<SR>(m, "SinkhornAttentionResult",
                 "Potentials of doubly-stochastic attention: K_ij = w_j exp(f_i + G_ij + g_j).")
      .def_property_readonly("f", [](const SR& r) { return vec(r.f); })
      .def_property_readonly("g", [](const SR& r) { return vec(r.g); })
      .def_readonly("column_error", &SR::column_error,
                    "sum_j |sum_i w_i K_ij - w_j| (L1 violation of the second marginal).")
      .def_readonly("iterations", &SR::iterations)
      .def_property_readonly(
          "status", [](const SR& r) { return to_string(r.status); },
          "\"converged\" or \"iteration_limit\".")
      .def_readonly("message", &SR::message);

  m.def(
      "sinkhorn_attention",
      [](const PyModel& pm, const py::object& tokens, const py::object& weights, Index head,
         int iterations, double tolerance, Index block) {
        SinkhornAttentionOptions o;
        o.iterations = iterations;
        o.tolerance = tolerance;
        o.block = block;
        o.validate();
        ModelArg<double> model(pm);
        MeasureArg<double> mu(tokens, weights);
        py::gil_scoped_release release;
        return sinkhorn_attention<double>(model.get(), mu.get(), head, o);
      },
      "model"_a, "tokens"_a, "weights"_a = py::none(), "head"_a = 0,
      "iterations"_a = SinkhornAttentionOptions{}.iterations,
      "tolerance"_a = SinkhornAttentionOptions{}.tolerance,
      "block"_a = SinkhornAttentionOptions{}.block,
      "Streamed log-domain Sinkhorn scaling of the self-attention logits of one head\n"
      "(Sander et al. 2022): iteration 0 is softmax; each iteration fixes the columns,\n"
      "then the rows. O(iterations n^2 k) time, O(n E) memory.");
}

}  // namespace measattn::python
