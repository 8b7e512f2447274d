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

constexpr const char* kGibbsResultDoc = R"doc(
The Gibbs (softmax) measure nu*_j = w_j e^{g_j} / Z and its statistics.

Attributes
----------
probabilities : numpy.ndarray, shape (m,)
    nu*.
log_partition : float
    log Z = logsumexp_j (g_j + log w_j).
expected_score, entropy, kl : float
    E_{nu*}[g], the Shannon entropy of nu* (natural log) and KL(nu* || mu);
    log Z = E_{nu*}[g] - KL(nu* || mu) (the principle's maximum).

Examples
--------
>>> g = measattn.gibbs([0.0, 1.0, 2.0])
>>> round(g.expected_score - g.kl, 6) == round(g.log_partition, 6)
True
)doc";

constexpr const char* kGibbsDoc = R"doc(
The Gibbs variational principle: attention weights as a maximizer.

    log Z = max_{nu << mu} E_nu[g] - KL(nu || mu),   Z = sum_j w_j e^{g_j},
    nu*_j = w_j e^{g_j} / Z   (softmax of g + log w: one attention row)

Parameters
----------
scores : array_like, shape (m,)
    g (converted to float64).
weights : array_like, shape (m,), optional
    w of mu (normalized); None = uniform.

Returns
-------
GibbsResult
    nu* and log Z, computed exactly in the log domain (any finite scores give
    finite results). O(m).

Examples
--------
>>> g = measattn.gibbs([0.0, 1.0, 2.0])
>>> g.probabilities
array([0.090031, 0.244728, 0.665241])
>>> round(g.log_partition, 6), round(g.entropy, 6)
(1.308994, 0.832396)

References
----------
Donsker and Varadhan (1975); docs/theory.md, "Attention as maximum entropy",
section 1.
)doc";

constexpr const char* kLogPartitionDoc = R"doc(
log Z = log sum_j w_j e^{g_j} (w normalized), computed stably.

Parameters
----------
scores : array_like, shape (m,)
weights : array_like, shape (m,), optional
    None = uniform.

Returns
-------
float

Examples
--------
>>> round(measattn.log_partition([0.0, 1.0, 2.0]), 6)
1.308994
>>> round(float(np.log(np.mean(np.exp([0.0, 1.0, 2.0])))), 6)
1.308994
)doc";

constexpr const char* kGibbsBoundResultDoc = R"doc(
A candidate nu measured against the Gibbs principle.

Attributes
----------
objective : float
    E_nu[g] - KL(nu || mu) <= log Z.
log_partition : float
    log Z.
gap : float
    log Z - objective = KL(nu || nu*) >= 0.

Examples
--------
>>> b = measattn.gibbs_bound([0.0, 1.0], candidate=[0.5, 0.5])
>>> b.gap >= 0
True
)doc";

constexpr const char* kGibbsBoundDoc = R"doc(
The objective of a candidate nu and its duality gap.

    objective = E_nu[g] - KL(nu || mu) <= log Z,   gap = KL(nu || nu*)

Parameters
----------
scores : array_like, shape (m,)
candidate : array_like, shape (m,)
    nu (normalized).
weights : array_like, shape (m,), optional
    mu; None = uniform.

Returns
-------
GibbsBoundResult
    Exact values (a certificate: objective is a lower bound of log Z).

Examples
--------
>>> b = measattn.gibbs_bound([0.0, 1.0, 2.0], candidate=[1/3, 1/3, 1/3])
>>> round(b.objective, 6), round(b.log_partition, 6), round(b.gap, 6)
(1.0, 1.308994, 0.308994)

References
----------
docs/theory.md, "Attention as maximum entropy", section 1.
)doc";

constexpr const char* kMaxEntResultDoc = R"doc(
nu_beta = w e^{beta g} / Z(beta): the minimizer of KL(nu || mu) with E_nu[g] = target.

Attributes
----------
beta : float
    The inverse temperature found.
probabilities : numpy.ndarray, shape (m,)
expected_score, target, residual : float
    E_{nu_beta}[g], the target and their difference.
entropy, kl, log_partition, variance : float
    H(nu_beta), KL(nu_beta || mu), log Z(beta), Var_{nu_beta}(g) = dE/dbeta.
score_min, score_max : float
    The range of g on supp mu.
beta_lower, beta_upper : float
    The final bracket of beta.
iterations : int
status, message : str
    "converged" or "iteration_limit".

Examples
--------
>>> r = measattn.maxent_at_beta([0.0, 1.0, 2.0], beta=1.0)
>>> round(r.variance, 6)
0.424405
)doc";

constexpr const char* kMaxEntDoc = R"doc(
Constrained maximum entropy: the temperature that meets a target score.

    nu_beta = argmin { KL(nu || mu) : E_nu[g] = target } = w e^{beta g} / Z(beta),

beta solving E_{nu_beta}[g] = target (standard attention is beta = 1).

Parameters
----------
scores : array_like, shape (m,)
target : float
    In (min g, max g) on supp mu (else ValueError naming the interval).
weights : array_like, shape (m,), optional
    None = uniform.
beta_tolerance : float
max_iterations : int

Returns
-------
MaxEntResult
    beta to beta_tolerance (a numerical solution; status says whether it
    converged) and the statistics of nu_beta.

Notes
-----
Safeguarded Newton on the convex dual log Z(beta) - beta target, O(m) per
iteration.

Examples
--------
>>> r = measattn.maxent([0.0, 1.0, 2.0], target=1.5)
>>> round(r.beta, 6), r.status
(0.834115, 'converged')
>>> r.probabilities
array([0.116204, 0.267592, 0.616204])

References
----------
Jaynes, "Information theory and statistical mechanics" (1957); docs/theory.md,
"Attention as maximum entropy", section 2.
)doc";

constexpr const char* kMaxEntAtBetaDoc = R"doc(
The statistics of nu_beta = w e^{beta g} / Z(beta) for a given beta (no solve).

Parameters
----------
scores : array_like, shape (m,)
beta : float
weights : array_like, shape (m,), optional
    None = uniform.

Returns
-------
MaxEntResult
    target = expected_score (exact).

Examples
--------
>>> r = measattn.maxent_at_beta([0.0, 1.0, 2.0], beta=1.0)
>>> r.probabilities, round(r.expected_score, 6)
(array([0.090031, 0.244728, 0.665241]), 1.57521)
)doc";

constexpr const char* kGridDoc = R"doc(
The default temperature grid of attention_entropy.

    -logspace(2, -2, 17) + [0] + logspace(-2, 2, 17)

Returns
-------
list of float
    35 increasing betas from -100 to 100, 1 included.

Examples
--------
>>> grid = measattn.default_temperature_grid()
>>> len(grid), grid[0], grid[17], grid[-1], 1.0 in grid
(35, -100.0, 0.0, 100.0, True)
)doc";

constexpr const char* kHeadEntropyDoc = R"doc(
Self-attention entropies of one head.

Attributes
----------
entropy : numpy.ndarray, shape (n,)
    H_i = H(K(x_i, .)) per query (natural log), 0 <= H_i <= log n.
effective_tokens : numpy.ndarray, shape (n,)
    exp(H_i), the number of tokens attended to.
expected_score : numpy.ndarray, shape (n,)
    E_{K(x_i, .)}[G(x_i, .)].
mean_entropy, min_entropy, max_entropy, mean_effective_tokens : float
    sum_i w_i H_i, the extremes, sum_i w_i exp(H_i).
curve_entropy, curve_expected_score : numpy.ndarray, shape (len(betas),)
    The same averages with the logits multiplied by beta.

Examples
--------
>>> e = measattn.attention_entropy(measattn.Model.canonical(2, 1.0), np.eye(2))
>>> e.heads[0].effective_tokens
array([1.789978, 1.789978])
)doc";

constexpr const char* kEntropyResultDoc = R"doc(
Entropy diagnostics of every head (measattn.attention_entropy).

Attributes
----------
betas : list of float
    The temperature grid used.
heads : list of HeadEntropy
    One per head.

Examples
--------
>>> e = measattn.attention_entropy(measattn.Model.random(4, num_heads=2), np.eye(4))
>>> len(e.heads), len(e.betas)
(2, 35)
)doc";

constexpr const char* kAttentionEntropyDoc = R"doc(
The entropy of self-attention, head by head, and its temperature curve.

    H_i = -sum_j K(x_i, x_j) log K(x_i, x_j),  K(x, .) = softmax(G(x, .) + log w)

for the queries x_i = the tokens, averaged with the weights of mu; exp(H_i) is
the effective number of tokens attended to. The curve repeats the averages for
logits beta G over `betas` (beta = 0: the entropy of mu itself, log n for
uniform weights; large beta: close to 0).

Parameters
----------
model : Model
tokens : array_like, shape (n, d), or Measure
weights : array_like, shape (n,), optional
betas : sequence of float, optional
    None = default_temperature_grid().
causal : bool, default False
query_block, key_block : int, default 0
    Block sizes (0 = automatic; no effect on the result).

Returns
-------
EntropyResult
    Exact values (computed in float64, streamed: the n x n kernel is never
    formed).

Examples
--------
>>> model = measattn.Model.random(4, num_heads=2, seed=0)
>>> x = np.random.default_rng(0).normal(size=(6, 4))
>>> e = measattn.attention_entropy(model, x, betas=[0.0, 1.0, 10.0])
>>> head = e.heads[0]
>>> round(head.mean_entropy, 6), round(float(np.log(6)), 6)
(1.618831, 1.791759)
>>> head.curve_entropy
array([1.791759, 1.618831, 0.356182])

References
----------
docs/theory.md, "Attention as maximum entropy", section 3.
)doc";

constexpr const char* kSinkhornResultDoc = R"doc(
The potentials of doubly-stochastic (Sinkhorn) attention.

    K_ij = w_j exp(f_i + G_ij + g_j)

Attributes
----------
f, g : numpy.ndarray, shape (n,)
column_error : float
    sum_j |sum_i w_i K_ij - w_j|, the L1 violation of the second marginal.
iterations : int
status, message : str
    "converged" (column_error <= tolerance) or "iteration_limit".

Examples
--------
>>> r = measattn.sinkhorn_attention(measattn.Model.random(2, seed=0), np.eye(2), iterations=3)
>>> r.f.shape, r.iterations <= 3
((2,), True)
)doc";

constexpr const char* kSinkhornAttentionDoc = R"doc(
Sinkhorn scaling of the self-attention logits of one head.

    K_ij = w_j exp(f_i + G(x_i, x_j) + g_j),  sum_j K_ij = 1,  sum_i w_i K_ij = w_j

Iteration 0 is softmax (rows normalized); each iteration fixes the columns,
then the rows (log domain, streamed).

Parameters
----------
model : Model
tokens : array_like, shape (n, d), or Measure
weights : array_like, shape (n,), optional
head : int, default 0
iterations : int
    The most iterations.
tolerance : float
    Stop when column_error <= tolerance.
block : int
    Block size (0 = automatic).

Returns
-------
SinkhornAttentionResult
    The potentials after the last iteration (an approximation whose error is
    column_error; the rows sum to one exactly up to rounding).

Notes
-----
O(iterations n^2 k) time, O(n E) memory. Model.kernel(tokens,
normalization="sinkhorn", sinkhorn_iterations=...) materializes the kernel.

Examples
--------
>>> model = measattn.Model.random(4, num_heads=2, seed=0)
>>> x = np.random.default_rng(0).normal(size=(6, 4))
>>> r = measattn.sinkhorn_attention(model, x, iterations=50)
>>> r.iterations, r.column_error < 1e-6
(50, True)
>>> kernel = model.kernel(x, normalization="sinkhorn", sinkhorn_iterations=50)
>>> kernel.sum(axis=0), kernel.sum(axis=1)
(array([1., 1., 1., 1., 1., 1.]), array([1., 1., 1., 1., 1., 1.]))

References
----------
Sander, Ablin, Blondel and Peyre, "Sinkformers: Transformers with doubly
stochastic attention" (2022); docs/theory.md, "Attention as maximum entropy",
section 4.
)doc";

}  // namespace

void bind_maxent(py::module_& m) {
  // Keywords = the field tables of maxent.hpp, defaults from default-constructed Options.
  register_option_fields("maxent", &option_fields_of<MaxEntOptions>);
  register_option_fields("attention_entropy", &option_fields_of<EntropyOptions>);
  register_option_fields("sinkhorn_attention", &option_fields_of<SinkhornAttentionOptions>);
  using GR = GibbsResult<double>;
  py::class_<GR>(m, "GibbsResult", kGibbsResultDoc)
      .def_property_readonly(
          "probabilities", [](const GR& r) { return vec(r.probabilities); }, "(m,) nu*.")
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
      "scores"_a, "weights"_a = py::none(), kGibbsDoc);

  m.def(
      "log_partition",
      [](const py::object& scores, const py::object& weights) {
        return log_partition<double>(vector_copy<double>(scores, "scores"),
                                     optional_weights(weights));
      },
      "scores"_a, "weights"_a = py::none(), kLogPartitionDoc);

  using GB = GibbsBoundResult<double>;
  py::class_<GB>(m, "GibbsBoundResult", kGibbsBoundResultDoc)
      .def_readonly("objective", &GB::objective, "E_nu[g] - KL(nu || mu) <= log Z.")
      .def_readonly("log_partition", &GB::log_partition, "log Z.")
      .def_readonly("gap", &GB::gap, "log Z - objective = KL(nu || nu*) >= 0.");

  m.def(
      "gibbs_bound",
      [](const py::object& scores, const py::object& candidate, const py::object& weights) {
        return gibbs_bound<double>(vector_copy<double>(scores, "scores"),
                                   vector_copy<double>(candidate, "candidate"),
                                   optional_weights(weights));
      },
      "scores"_a, "candidate"_a, "weights"_a = py::none(), kGibbsBoundDoc);

  using MR = MaxEntResult<double>;
  py::class_<MR>(m, "MaxEntResult", kMaxEntResultDoc)
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
      "max_iterations"_a = MaxEntOptions{}.max_iterations, kMaxEntDoc);

  m.def(
      "maxent_at_beta",
      [](const py::object& scores, double beta, const py::object& weights) {
        return maxent_at_beta<double>(vector_copy<double>(scores, "scores"), beta,
                                      optional_weights(weights));
      },
      "scores"_a, "beta"_a, "weights"_a = py::none(), kMaxEntAtBetaDoc);

  m.def("default_temperature_grid", &default_temperature_grid, kGridDoc);

  using HE = HeadEntropy<double>;
  py::class_<HE>(m, "HeadEntropy", kHeadEntropyDoc)
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
  py::class_<ER>(m, "EntropyResult", kEntropyResultDoc)
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
      "key_block"_a = EntropyOptions{}.key_block, kAttentionEntropyDoc);

  using SR = SinkhornAttentionResult<double>;
  py::class_<SR>(m, "SinkhornAttentionResult", kSinkhornResultDoc)
      .def_property_readonly(
          "f", [](const SR& r) { return vec(r.f); }, "(n,) row potentials.")
      .def_property_readonly(
          "g", [](const SR& r) { return vec(r.g); }, "(n,) column potentials.")
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
      "block"_a = SinkhornAttentionOptions{}.block, kSinkhornAttentionDoc);
}

}  // namespace measattn::python
