// Bindings of lipschitz.hpp: certified upper bounds, the certified lower-bound
// search, and token-level Jacobian norms. Float64 (the library's precision here).
#include "measattn/lipschitz.hpp"
#include "convert.hpp"
#include "progress_arg.hpp"

namespace measattn::python {
namespace {

using namespace pybind11::literals;

// Keywords = LipschitzSearchOptions' table (lipschitz.hpp); residual is an explicit argument,
// progress (None, a bool or a callable) becomes the progress callback (ProgressArg): the
// library's own terminal line (LipschitzSearchOptions::progress) stays off.
// communicator (an mpi4py communicator or None) is the one keyword outside the table.
void apply_search_options(LipschitzSearchOptions& o, const py::dict& kw) {
  std::vector<std::string> known;
  for (const std::string& name : field_names<LipschitzSearchOptions>())
    if (name != "residual") known.push_back(name);
  known.push_back("communicator");
  reject_unknown(kw, known, "lipschitz_lower_bound");
  apply_fields(o, kw, {"residual", "progress", "communicator"});
  o.communicator =
      communicator_arg(kw.contains("communicator") ? py::object(kw["communicator"]) : py::none());
}

constexpr const char* kNamedBoundDoc = R"doc(
One named upper bound, its value and what it bounds.

Attributes
----------
name : str
    "w1_theorem", "w1_per_head", "w1_combined" (W1 constant on B_R),
    "kim_token_l2", "kim_token_linf" (Kim et al.'s token-level bounds).
value : float
    The bound (certified: proved, evaluated in double).
kind : str
    "w1", "token_l2", "token_linf" or "token_l2_ball".
meaning : str
    One sentence: which constant it bounds.

Examples
--------
>>> model = measattn.Model.random(2, seed=0)
>>> b = measattn.lipschitz_upper_bounds(model, radius=1.0).bounds[0]
>>> b.name, b.kind, round(b.value, 6)
('w1_theorem', 'w1', 190.429349)

References
----------
docs/theory.md, "Lipschitz continuity of attention in W1", sections 2-6.
)doc";

constexpr const char* kHeadBoundDoc = R"doc(
The two parts of the W1 theorem for one head (dot, l2 or cosine potential).

Attributes
----------
x_part : float
    Lx_h = ||V_h|| x_core: the Lipschitz constant of x -> Gamma^h_mu(x) on B_R.
measure_part : float
    Lm_h = ||V_h|| measure_core: that of mu -> Gamma^h_mu(x) in W1.
x_core, measure_core : float
    The same divided by ||V_h|| (dot: ||A|| R^2 and (1 + 2 R rho) e^{2 R rho}).
value_norm, projected_value_norm : float
    ||V_h|| and ||W_O^h V_h||.
rho : float
    sup over x in B_R of the y-gradient of the logit (dot: ||A|| R + ||c||,
    A = Q^T K / tau, c = K^T b_q / tau).
oscillation : float
    sup_x osc_{y in B_R} of the y-dependent logit (dot: 2 R rho).

Examples
--------
>>> model = measattn.Model(np.eye(2), np.eye(2), 0.5 * np.eye(2), np.eye(2), scale=1.0)
>>> h = measattn.lipschitz_upper_bounds(model, radius=1.0).heads[0]
>>> h.x_part, h.x_core, h.value_norm, h.rho, h.oscillation
(0.5, 1.0, 0.5, 1.0, 2.0)
>>> bool(np.isclose(h.measure_core, 3 * np.exp(2.0)))
True

References
----------
Vuckovic, Baratin and Tachet des Combes, "A mathematical theory of attention"
(2020); docs/theory.md, "Lipschitz continuity of attention in W1", sections 1-4.
)doc";

constexpr const char* kUpperBoundResultDoc = R"doc(
Certified upper bounds on the Lipschitz constant of mu -> F(mu) in W1 on B_R.

Attributes
----------
radius : float
residual : bool
    Bounds of mu -> (id + Gamma_mu)#mu (each W1 bound + 1).
heads : list of HeadBound
bounds : list of NamedBound
    Every bound that applies, the W1 bounds first (Kim's token-level bounds
    after them, only for the l2 potential with tied, Kim-form weights).
best_w1 : float
    The smallest W1 bound (certified).
best_name : str
output_radius : float
    Radius of a ball containing every output Gamma_mu(x), x, mu in B_R.

Examples
--------
>>> model = measattn.Model.random(2, seed=0)
>>> ub = measattn.lipschitz_upper_bounds(model, radius=1.0)
>>> ub.best_name, round(ub.best_w1, 6), round(ub.output_radius, 6)
('w1_stacked_reach', 124.473512, 3.305043)
>>> [b.name for b in ub.bounds]
['w1_theorem', 'w1_per_head', 'w1_combined', 'w1_stacked_reach', 'w1_column_density']
)doc";

constexpr const char* kGetDoc = R"doc(
The value of a bound by name (NaN when it does not apply).

Examples
--------
>>> ub = measattn.lipschitz_upper_bounds(measattn.Model.random(2, seed=0), radius=1.0)
>>> round(ub.get("w1_per_head"), 6), ub.get("kim_token_l2")
(125.316492, nan)
)doc";

constexpr const char* kUpperBoundsDoc = R"doc(
Every certified upper bound on the W1 Lipschitz constant of one layer on B_R.

Bounds L with

    W1(F(mu), F(nu)) <= L W1(mu, nu)   for all mu, nu supported in B_radius,

F(mu) = (Gamma_mu)#mu, from the splitting lemma
L <= sup_mu Lip(Gamma_mu) + sup_x Lip(mu -> Gamma_mu(x)), per head and combined.
With tokens = N > 0 and a model in Kim et al.'s form (potential "l2",
W_q = W_k per head, V_h = M_h Q_h^T Q_h / tau), their token-level bounds
kim_token_l2 and kim_token_linf on all of R^{N x d} are added (kind
"token_l2" / "token_linf": not W1 bounds).

Parameters
----------
model : Model
    Any potential; float32 models are evaluated in float64.
radius : float
    R > 0.
residual : bool, default False
    The layer mu -> (id + Gamma_mu)#mu.
tokens : int, default 0
    N for Kim's bounds (0 = none).

Returns
-------
UpperBoundResult
    Certified upper bounds (proved; evaluated in double, spectral norms exact).

Notes
-----
Dot potential, per head h with P = ||V_h||, A = Q^T K / tau, c = K^T b_q / tau,
rho = ||A|| R + ||c||:

    Lx_h = P ||A|| R^2,   Lm_h = P (1 + 2 R rho) e^{2 R rho},
    w1_theorem:  L = ||W_O|| ((sum_h Lx_h^2)^(1/2) + (sum_h Lm_h^2)^(1/2)),
    w1_per_head: L = sum_h (Lx_h + Lm_h) with ||W_O^h V_h|| in place of P,
    w1_combined: the smaller x-part plus the smaller measure part

(+1 each when residual; the l2 and cosine potentials have their own Lx_h, Lm_h).
A bound past double's range is +inf, never NaN. Cost O(H d^3).

Examples
--------
>>> model = measattn.Model.random(2, seed=0)
>>> ub = measattn.lipschitz_upper_bounds(model, radius=1.0)
>>> ub.best_name, round(ub.best_w1, 6)
('w1_stacked_reach', 124.473512)

Kim et al.'s form (Q = K = I, tau = 1, any V):

>>> kim = measattn.Model(np.eye(2), np.eye(2), 0.5 * np.eye(2), np.eye(2),
...                      potential="l2", scale=1.0)
>>> ub = measattn.lipschitz_upper_bounds(kim, radius=1.0, tokens=4)
>>> [(b.name, b.kind, round(b.value, 6)) for b in ub.bounds[3:]]
[('kim_token_l2', 'token_l2', 3.414183), ('kim_token_linf', 'token_linf', 2.207085)]

References
----------
Vuckovic, Baratin and Tachet des Combes, "A mathematical theory of attention"
(2020); Kim, Papamakarios and Mnih, "The Lipschitz constant of self-attention"
(2021); docs/theory.md, "Lipschitz continuity of attention in W1", sections 1-6.
)doc";

constexpr const char* kWitnessDoc = R"doc(
The best pair (mu, nu) a lower-bound search found, and its images.

Attributes
----------
mu_atoms, nu_atoms : ndarray, shape (n, d), (m, d)
mu_weights, nu_weights : ndarray, shape (n,), (m,)
f_mu_atoms, f_nu_atoms : ndarray
    The atoms of F(mu) and F(nu) (same weights).
w1_input, w1_output : float
    W1(mu, nu) and W1(F(mu), F(nu)), both by the exact solver.
origin : str
    The kind of restart that found it ("random", "nearby", "adversarial",
    "weights").
restart : int

Examples
--------
>>> model = measattn.Model.random(2, seed=0)
>>> w = measattn.lipschitz_lower_bound(model, 1.0, atoms=3, restarts=2, steps=20,
...                                    seed=1).witness
>>> w.origin, w.restart, w.mu_atoms.shape
('adversarial', 1, (3, 2))
>>> mu = measattn.Measure(w.mu_atoms, w.mu_weights)
>>> nu = measattn.Measure(w.nu_atoms, w.nu_weights)
>>> round(measattn.lipschitz_ratio(model, mu, nu), 6)
1.340922
)doc";

constexpr const char* kSearchResultDoc = R"doc(
A certified lower bound on the W1 Lipschitz constant, with its witness.

Attributes
----------
ratio : float
    W1(F(mu), F(nu)) / W1(mu, nu) of the witness, both exact: every L of
    lipschitz_upper_bounds is at least this.
witness : LipschitzWitness
restart_ratios : list of float
    The best certified ratio of each restart, in order (restarts + 1 entries
    when atoms >= 3: the last is the covariance seed).
evaluations : int
    Evaluations of the objective in all restarts.
status : str
    "completed" (all restarts ran) or "degenerate" (no pair with
    W1(mu, nu) > 0 was found; ratio 0).
message : str

Examples
--------
>>> model = measattn.Model.random(2, seed=0)
>>> lb = measattn.lipschitz_lower_bound(model, 1.0, atoms=3, restarts=2, steps=20, seed=1)
>>> lb.status, round(lb.ratio, 6), len(lb.restart_ratios)
('completed', 1.340922, 3)
)doc";

constexpr const char* kLowerBoundDoc = R"doc(
A certified lower bound on the W1 Lipschitz constant of one layer on B_R.

Searches mu, nu supported in B_radius maximizing

    W1(F(mu), F(nu)) / W1(mu, nu),   F(mu) = (Gamma_mu)#mu,

by normalized gradient ascent of its logarithm over the atoms (projected onto
B_R) and weights (softmax logits) of both measures: exact gradients through
the layer (reverse mode) and through W1 (envelope theorem: the optimal plan
and Kantorovich potentials). Restarts of several kinds (random, nearby pairs,
Castin et al.'s adversarial seeds, the covariance seed), each with its own
seed, run in parallel and are reduced in restart order.

Parameters
----------
model : Model
radius : float
    R > 0.
residual : bool, default False
    The layer mu -> (id + Gamma_mu)#mu.
atoms : int, default 4
    Atoms of each measure.
restarts : int, default 16
steps : int, default 60
    Ascent steps per restart.
step_size : float, default 0.05
    Initial step, as a fraction of R (positions) and in logits.
nearby : float, default 1e-3
    Relative size of the nearby-pair perturbation.
seed : int
threads : int, default 0
    OpenMP threads over restarts (0 = default); no effect on the result.
progress : None, bool or callable, optional
    None or False: nothing. A callable progress(done, total) is called after
    each restart finishes, with the GIL held: done = 1, ..., total =
    restarts (+ 1 for the covariance seed when atoms >= 3); an exception it
    raises stops the search and propagates. True: a tqdm bar when tqdm
    imports, else a line on stderr. The result does not depend on it.
communicator : mpi4py communicator, optional (keyword only)
    The ranks that share the restarts (docs/distributed.md): every rank
    passes the same arguments, each runs its share of the restarts, and every
    rank gets the same result, bit-identical to one process (progress then
    counts the calling rank's restarts). None = this process alone.

Returns
-------
LipschitzSearchResult
    A certified lower bound: the witness's ratio recomputed in double with the
    exact W1 solver on both sides (the output distance reduced by
    1e-12 (1 + max |output|) against rounding).

Examples
--------
>>> model = measattn.Model.random(2, seed=0)
>>> lb = measattn.lipschitz_lower_bound(model, 1.0, atoms=3, restarts=2, steps=20, seed=1)
>>> round(lb.ratio, 6), lb.witness.origin
(1.340922, 'adversarial')
>>> lb.ratio <= measattn.lipschitz_upper_bounds(model, 1.0).best_w1
True

References
----------
Castin, Ablin and Peyre, "How smooth is attention?" (2024); docs/theory.md,
"Lipschitz continuity of attention in W1", section 7.
)doc";

constexpr const char* kSweepPointDoc = R"doc(
One point (beta, R) of a lipschitz_sweep.

Attributes
----------
radius, beta : float
best_upper : float
    The smallest proved W1 bound on B_R at this beta (inf past double's range).
best_name : str
    Its name ("w1_theorem", "w1_column_density", ...).
lower : float
    The certified lower bound on B_R: the best ratio found by the searches at
    this beta and every radius r <= R of the grid (a pair in B_r lies in B_R);
    0 when they are all degenerate.
search_ratio : float
    The ratio this point's own search found (<= lower).
witness_radius : float
    The radius whose search gave lower (0 when lower is 0).
witness_origin : str
    That search's witness's seed family ("" when lower is 0).
gap : float
    best_upper / lower (inf when lower is 0).
evaluations : int
)doc";

constexpr const char* kSweepResultDoc = R"doc(
The result of lipschitz_sweep.

Attributes
----------
points : list of LipschitzSweepPoint
    One per (beta, radius): betas outer, radii inner, in the order given.
evaluations : int
    Pairs evaluated by all the searches.
)doc";

constexpr const char* kSweepDoc = R"doc(
Both sides of the W1 Lipschitz constant over a grid of radii and temperatures.

At each point (beta, R) the model's logits are multiplied by beta (tau ->
tau / beta in every head): lipschitz_upper_bounds gives the best proved bound
on B_R and lipschitz_lower_bound the certified lower bound (the same search
options, and seed, at every point).

Parameters
----------
model : Model
radii : sequence of float
    R > 0, at least one.
betas : sequence of float, default (1.0,)
    Inverse-temperature multipliers beta > 0.
residual : bool, default False
    The layer mu -> (id + Gamma_mu)#mu.
**options
    The search's keywords, as in lipschitz_lower_bound (atoms, restarts,
    steps, step_size, nearby, seed, threads); progress is called after each
    point: (1, points), ..., (points, points).
communicator : mpi4py communicator, optional (keyword only)
    The ranks that share the grid (docs/distributed.md): with at least as
    many points as ranks each rank runs its share of the points, else every
    point's restarts are shared; every rank gets the same result,
    bit-identical to one process.

Returns
-------
LipschitzSweepResult
    best_upper is proved, lower is certified (exact W1 on both sides):
    lower <= the true constant <= best_upper at every point.

Examples
--------
>>> model = measattn.Model.random(2, seed=0)
>>> s = measattn.lipschitz_sweep(model, [0.5, 1.0], betas=[0.5, 1.0], atoms=3,
...                              restarts=2, steps=10, seed=1)
>>> [(p.beta, p.radius) for p in s.points]
[(0.5, 0.5), (0.5, 1.0), (1.0, 0.5), (1.0, 1.0)]
>>> all(p.lower <= p.best_upper for p in s.points)
True

References
----------
docs/theory.md, "Lipschitz continuity of attention in W1"; docs/distributed.md.
)doc";

constexpr const char* kLocalResultDoc = R"doc(
The local certificate around one measure (lipschitz_local_bound).

Attributes
----------
radius, eps : float
    R used (mu's radius unless given) and the W1 radius of the neighbourhood.
upper : float
    L_loc(eps), proved: W1(F(nu), F(mu)) <= upper W1(nu, mu) for every nu in
    B_R with W1(nu, mu) <= eps (inf when vacuous at this eps).
upper_at_zero : float
    Its limit as eps -> 0.
eps_half, upper_at_eps_half : float
    The largest eps at which every factor 1 / (1 - eps |a| S) is at most 2
    (0 when it underflows double), and L_loc(eps_half) <= 2 upper_at_zero:
    proved for W1(nu, mu) <= eps_half.
head_measure_terms : list of float
    Per head, the part that comes from mu's kernel concentration.
x_term : float
    3 sum_h ||W_O^h V_h|| x_core_h (+1 residual).
global_upper, global_name : float, str
    The best bound on all of B_R (lipschitz_upper_bounds).
best_upper : float
    min(upper, global_upper).
lower : float
    Certified: the largest ratio W1(F(nu), F(mu)) / W1(nu, mu) found over nu
    in B_R with 0 < W1(nu, mu) <= eps (exact W1 on both sides).
witness_w1, witness_origin, witness_atoms, witness_weights
    That nu: W1(nu, mu), "tiny_atom" / "gradient_move" / "random_move", its
    atoms and weights.
evaluations : int
)doc";

constexpr const char* kLocalDoc = R"doc(
The W1 Lipschitz certificate of one layer around a given measure mu.

For every nu supported in B_R with W1(nu, mu) <= eps,

    W1(F(nu), F(mu)) <= L_loc(eps) W1(nu, mu),
    L_loc(eps) = sum_h P_h [sum_i mu_i (1 + 2R|a_hi|) S_hi / (1 - eps |a_hi| S_hi)
                            + 3 x_core_h]   (+1 residual),

with P_h = ||W_O^h V_h||, a_hi = K_h^T (Q_h x_i + b_q) / tau and
S_hi = e^{R |a_hi|} / sum_j mu_j e^{<a_hi, x_j>}: how much more the heaviest
point of B_R weighs at x_i than mu's own partition function. It uses mu's
actual attention weights instead of the worst case on B_R, so it stays finite
where the global bounds are astronomical. Dot potential (with biases).

Parameters
----------
model : Model
mu : array_like, shape (n, d), or Measure
eps : float
    > 0.
radius : float, default 0
    R; 0 = mu's own radius (its largest atom norm). mu must lie in B_R.
residual : bool, default False
restarts : int, default 16
    Random candidates of the lower-bound search.
seed : int, default 7

Returns
-------
LocalBoundResult
    upper and best_upper are proved; lower is certified (exact W1 on both
    sides).

Examples
--------
>>> model = measattn.Model.random(4, num_heads=2, bias=True, seed=3)
>>> x = np.random.default_rng(0).normal(size=(10, 4)) / 3
>>> r = measattn.lipschitz_local_bound(model, x, 1e-3)
>>> 0 < r.lower <= r.best_upper <= r.global_upper
True
>>> r.upper_at_zero <= r.upper
True

References
----------
docs/theory.md, "Lipschitz continuity of attention in W1", the local certificate.
)doc";

constexpr const char* kRatioDoc = R"doc(
The ratio W1(F(mu), F(nu)) / W1(mu, nu) of one pair, F(mu) = (Gamma_mu)#mu.

Parameters
----------
model : Model
mu, nu : array_like, shape (n, d) and (m, d), or Measure
    Arrays mean uniform weights.
residual : bool, default False

Returns
-------
float
    Exact (both distances by the exact W1 solver); 0 when W1(mu, nu) = 0. For
    mu, nu in B_R a lower bound on the constant on B_R.

Examples
--------
>>> model = measattn.Model.random(2, seed=0)
>>> x = np.random.default_rng(0).normal(size=(4, 2))
>>> round(measattn.lipschitz_ratio(model, x, x + 0.1), 6)
0.799092
>>> measattn.lipschitz_ratio(model, x, x)
0.0

References
----------
docs/theory.md, "Lipschitz continuity of attention in W1", section 7.
)doc";

constexpr const char* kStackResultDoc = R"doc(
The certified W1 bound L = prod_l L_l(R_{l-1}) of a stack of layers.

Unpacks as the tuple (value, constants, radii).

Attributes
----------
value : float
    The product L (certified).
constants : list of float
    L_l(R_{l-1}): the best W1 bound of layer l on the ball its input lies in.
radii : list of float
    R_0 = radius, R_l = the output radius of layer l on B_{R_{l-1}}.

Examples
--------
>>> model = measattn.Model(np.eye(2), np.eye(2), 0.5 * np.eye(2), np.eye(2), scale=1.0)
>>> value, constants, radii = measattn.lipschitz_stack_upper_bound([model, model], 1.0)
>>> radii
[1.0, 0.5, 0.25]
>>> bool(np.isclose(value, constants[0] * constants[1]))
True
)doc";

constexpr const char* kStackDoc = R"doc(
A certified W1 bound for a stack F_L o ... o F_1 of layers on B_R.

    L <= prod_l L_l(R_{l-1}),   R_0 = R,   R_l = output radius of layer l on B_{R_{l-1}},

with L_l the best W1 bound of lipschitz_upper_bounds (each layer maps
measures in B_{R_{l-1}} into B_{R_l}).

Parameters
----------
layers : sequence of Model
    Layer l's output dimension is layer l+1's input dimension.
radius : float
    R > 0.
residual : bool, default False
    Every layer residual.

Returns
-------
StackBoundResult
    A certified upper bound (unpacks as (value, constants, radii)).

Examples
--------
>>> model = measattn.Model(np.eye(2), np.eye(2), 0.5 * np.eye(2), np.eye(2), scale=1.0)
>>> s = measattn.lipschitz_stack_upper_bound([model, model], 1.0)
>>> s
StackBoundResult(value=..., layers=2)
>>> s.radii
[1.0, 0.5, 0.25]

References
----------
docs/theory.md, "Lipschitz continuity of attention in W1", section 5.
)doc";

constexpr const char* kCastinDoc = R"doc(
Castin, Ablin and Peyre's adversarial token sequence on the sphere of radius R.

With S the symmetric part of A = Q^T K / tau (head 0) and u the unit
eigenvector of its eigenvalue of largest modulus:

    R (u, u/2, ..., u/2) when that eigenvalue is positive,   R (-u, u, ..., u) otherwise,

the tokens along which the token-level Jacobian grows with n.

Parameters
----------
model : Model
n : int
    Tokens (>= 1).
radius : float
    R > 0.

Returns
-------
ndarray, shape (n, d)
    An explicit construction (no search).

Examples
--------
>>> model = measattn.Model.random(2, seed=0)
>>> x = measattn.castin_adversarial_tokens(model, 3, 1.0)
>>> x
array([[ 0.795071, -0.606516],
       [-0.795071,  0.606516],
       [-0.795071,  0.606516]])

References
----------
Castin, Ablin and Peyre, "How smooth is attention?" (2024); docs/theory.md,
"Lipschitz continuity of attention in W1", sections 7 and 8b.
)doc";

constexpr const char* kTokenJacobianResultDoc = R"doc(
||J(X)||_2 of the token map at one X, with a bracket.

Attributes
----------
value : float
    ||J(X) v|| for the final unit v: a certified lower bound on ||J(X)||_2.
lower, upper : float
    The bracket: lower = value (certified); upper = sqrt(value^2 + residual)
    bounds an eigenvalue of J^T J near value^2 (the top one with probability 1).
residual : float
    ||J^T J v - value^2 v||.
iterations : int
    Krylov restarts.
products : int
    Applications of J^T J (one JVP and one VJP each).
method : str
converged : bool
status, message : str

Examples
--------
>>> model = measattn.Model.random(2, seed=0)
>>> x = np.random.default_rng(0).normal(size=(4, 2))
>>> r = measattn.token_jacobian_norm(model, x)
>>> r.status, r.method, r.converged, round(r.value, 6)
('converged', 'lanczos', True, 1.27701)
>>> r.lower <= r.upper
True
)doc";

constexpr const char* kTokenJacobianNormDoc = R"doc(
The spectral norm of the token-level Jacobian at X.

J(X) is the Jacobian of the token map

    X -> (Gamma_{mu_X}(x_i))_{i=1..n},   mu_X = (1/n) sum_j delta_{x_j},

an (n d_out) x (n d) matrix that is never formed: restarted Lanczos on J^T J
(two wanted pairs), each product one exact JVP (forward mode) and one VJP
(reverse mode), stopped on the relative residual.

Parameters
----------
model : Model
tokens : array_like, shape (n, d)
    X (float64).
residual : bool, default False
    The map X -> X + Gamma (J + I).
iterations : int, default 300
    Krylov restarts at most.
tolerance : float, default 1e-10
    Relative residual that stops it.
seed : int, default 7
    The random start.

Returns
-------
TokenJacobianResult
    value: a certified lower bound on ||J(X)||_2 (the norm of J v for a unit
    v); [lower, upper] a bracket of an eigenvalue's square root.

Examples
--------
>>> model = measattn.Model.random(2, seed=0)
>>> x = np.random.default_rng(0).normal(size=(4, 2))
>>> r = measattn.token_jacobian_norm(model, x)
>>> round(r.value, 6)
1.27701
>>> round(float(np.linalg.norm(measattn.token_jacobian(model, x), 2)), 6)
1.27701

References
----------
Kim, Papamakarios and Mnih, "The Lipschitz constant of self-attention" (2021);
docs/theory.md, "Lipschitz continuity of attention in W1", section 8.
)doc";

constexpr const char* kTokenJacobianDoc = R"doc(
The dense token-level Jacobian J(X) of X -> (Gamma_{mu_X}(x_i))_i.

Parameters
----------
model : Model
tokens : array_like, shape (n, d)
residual : bool, default False

Returns
-------
ndarray, shape (n d_out, n d)
    Exact (n JVPs), rows and columns in the row-major vec of X and of the
    output. For small n (it is dense).

Examples
--------
>>> model = measattn.Model(np.eye(2), np.eye(2), np.eye(2), np.eye(2), scale=1.0)
>>> measattn.token_jacobian(model, np.array([[1.0, 0.0]]))
array([[1., 0.],
       [0., 1.]])
>>> measattn.token_jacobian(model, np.zeros((3, 2))).shape
(6, 6)

References
----------
docs/theory.md, "Lipschitz continuity of attention in W1", section 8.
)doc";

constexpr const char* kTokenSearchResultDoc = R"doc(
The largest ||J(X)||_2 a token search found.

Attributes
----------
value : float
    ||J(X)||_2 at the best X (a certified lower bound on it, hence on the
    token-level Lipschitz constant over the searched set).
tokens : ndarray, shape (N, d)
    The best X.
upper, residual : float
    The Lanczos bracket at X.
origin : str
    The winning restart's seed: "castin" (Castin's sequence of the dominant
    sign), "castin_other", "outlier" (Kim's (t e, 0, ..., 0)) or "random".
restart_values : list of float
    The certified value of each restart, in order.
evaluations : int
    Applications of J^T J in all.

Examples
--------
>>> model = measattn.Model.random(2, seed=0)
>>> r = measattn.token_lipschitz_lower_bound(model, tokens=3, restarts=2, steps=10,
...                                          radius=1.0)
>>> r.origin, r.tokens.shape, len(r.restart_values)
('castin', (3, 2), 2)
)doc";

constexpr const char* kTokenSearchDoc = R"doc(
Kim et al.'s empirical lower bound on the token-level Lipschitz constant.

    max_X ||J(X)||_2   over X in R^{N x d} (radius = 0) or B_R^N (radius > 0),

J(X) the Jacobian of X -> (Gamma_{mu_X}(x_i))_i: gradient ascent of the top
singular value over X from restarts (Castin et al.'s sequences, an outlier
start, random starts), each with its own seed, run in parallel and reduced in
restart order.

Parameters
----------
model : Model
tokens : int, default 8
    N.
restarts : int, default 8
steps : int, default 100
    Ascent steps per restart.
step_size : float, default 0.05
radius : float, default 0.0
    R (0 = unconstrained).
seed : int, default 11
residual : bool, default False
threads : int, default 0
    OpenMP threads over restarts (0 = default); no effect on the result.
progress : None, bool or callable, optional
    None or False: nothing. A callable progress(done, total) is called after
    each restart finishes, with the GIL held: (1, restarts), ...,
    (restarts, restarts); an exception it raises stops the search and
    propagates. True: a tqdm bar when tqdm imports, else a line on stderr.
    The result does not depend on it.
communicator : mpi4py communicator, optional (keyword only)
    The ranks that share the restarts (docs/distributed.md): every rank
    passes the same arguments, each runs its share of the restarts, and every
    rank gets the same result, bit-identical to one process (progress then
    counts the calling rank's restarts). None = this process alone.

Returns
-------
TokenSearchResult
    An estimate of the constant from below: value = ||J(X)||_2 at the X found
    (itself certified from below by Lanczos).

Examples
--------
>>> model = measattn.Model.random(2, seed=0)
>>> r = measattn.token_lipschitz_lower_bound(model, tokens=3, restarts=2, steps=10,
...                                          radius=1.0)
>>> round(r.value, 6), r.origin
(1.172577, 'castin')
>>> r.value <= measattn.token_ball_upper_bound(model, 1.0, 3).value
True

References
----------
Kim, Papamakarios and Mnih, "The Lipschitz constant of self-attention" (2021);
docs/theory.md, "Lipschitz continuity of attention in W1", section 8.
)doc";

constexpr const char* kTokenBallBoundDoc = R"doc(
The proved bound token_ball_l2 on ||J(X)||_2 over B_R^n (dot potential).

Attributes
----------
value : float
    The bound (certified).
head_constants : list of float
    L_h = ||A|| R^2 + sqrt(C_h) (1 + R rho) per head.
column_sums : list of float
    C_h = min(n, e^{2 R rho}), a bound on the column sums of the attention matrix.
mean_field : bool
    C_h < n for every head (the regime where the bound no longer grows with n).

Examples
--------
>>> b = measattn.token_ball_upper_bound(measattn.Model.random(2, seed=0), 1.0, 3)
>>> round(b.value, 6), b.mean_field
(5.636781, False)
)doc";

constexpr const char* kTokenBallDoc = R"doc(
token_ball_l2: a proved bound on ||J(X)||_2 for every X in B_R^n.

The token map X -> (Gamma_{mu_X}(x_i))_i with uniform weights and the dot
potential; the bound grows like sqrt(n) and is independent of n past
e^{2 R rho}. Per head, with A = Q^T K / tau, c = K^T b_q / tau,
rho = ||A|| R + ||c|| and C = min(n, e^{2 R rho}):

    L_h = ||A|| R^2 + sqrt(C) (1 + R rho),
    L = min(||W_O|| (sum_h ||V_h||^2 L_h^2)^(1/2), sum_h ||W_O^h V_h|| L_h)   (+1 residual).

Parameters
----------
model : Model
    Dot potential.
radius : float
    R > 0.
tokens : int
    n.
residual : bool, default False
    The map X -> X + Gamma (+1).

Returns
-------
TokenBallBound
    A certified upper bound on the token-level Lipschitz constant on B_R^n.

Examples
--------
>>> model = measattn.Model.random(2, seed=0)
>>> round(measattn.token_ball_upper_bound(model, 1.0, 3).value, 6)
5.636781

References
----------
docs/theory.md, "Lipschitz continuity of attention in W1", section 8b.
)doc";

constexpr const char* kTokenSweepResultDoc = R"doc(
The token-level constant on B_R^n against n.

Attributes
----------
sizes : list of int
lower : list of float
    token_lipschitz_lower_bound per n (estimates from below).
castin : list of float
    ||J|| at Castin's sequence per n (certified lower bounds).
upper : list of float
    token_ball_l2 per n (certified upper bounds; empty unless the potential is dot).
origins : list of str
    Each n's witness: a search seed or "castin_sequence".
exponent_lower, exponent_upper, exponent_castin : float
    Least-squares slopes of log value against log n.
local_exponents : list of float
    Slopes between consecutive sizes (of lower).
evaluations : int

Examples
--------
>>> model = measattn.Model.random(2, seed=0)
>>> s = measattn.token_lipschitz_sweep(model, [2, 4], 1.0, restarts=2, steps=10)
>>> s.sizes, s.origins
([2, 4], ['castin_other', 'castin'])
>>> all(l <= u for l, u in zip(s.lower, s.upper))
True
)doc";

constexpr const char* kTokenSweepDoc = R"doc(
The token-level Lipschitz constant on B_R^n for several n, with its growth.

For each n in sizes: token_lipschitz_lower_bound on B_R^n (lower), ||J|| at
Castin's sequence (castin) and the proved bound token_ball_l2 (upper); then
the fitted exponents p of value ~ n^p (log value against log n).

Parameters
----------
model : Model
sizes : sequence of int
radius : float
    R > 0.
restarts, steps, step_size, seed, residual, threads
    As in token_lipschitz_lower_bound (per size).
progress : None, bool or callable, optional
    As in token_lipschitz_lower_bound, but called after each size:
    (1, len(sizes)), ..., (len(sizes), len(sizes)).
communicator : mpi4py communicator, optional (keyword only)
    As in token_lipschitz_lower_bound (each size's restarts are shared).

Returns
-------
TokenSweepResult
    Estimates from below (lower, castin) and certified bounds (upper).

Examples
--------
>>> model = measattn.Model.random(2, seed=0)
>>> s = measattn.token_lipschitz_sweep(model, [2, 4], 1.0, restarts=2, steps=10)
>>> [round(v, 6) for v in s.lower], round(s.exponent_lower, 6)
([1.315993, 1.134212], -0.214461)

References
----------
Castin, Ablin and Peyre, "How smooth is attention?" (2024); docs/theory.md,
"Lipschitz continuity of attention in W1", sections 8 and 8b.
)doc";

}  // namespace

void bind_lipschitz(py::module_& m) {
  const TokenJacobianOptions jacobian;  // the keywords' defaults (never copies)
  const TokenSearchOptions search;
  register_option_fields("lipschitz_upper_bounds", &option_fields_of<UpperBoundOptions>);
  register_option_fields("lipschitz_lower_bound", &option_fields_of<LipschitzSearchOptions>);
  register_option_fields("token_jacobian_norm", &option_fields_of<TokenJacobianOptions>);
  register_option_fields("token_lipschitz_lower_bound", &option_fields_of<TokenSearchOptions>);
  py::class_<NamedBound>(m, "NamedBound", kNamedBoundDoc)
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

  py::class_<HeadBound>(m, "HeadBound", kHeadBoundDoc)
      .def_readonly("x_part", &HeadBound::x_part)
      .def_readonly("measure_part", &HeadBound::measure_part)
      .def_readonly("x_core", &HeadBound::x_core)
      .def_readonly("measure_core", &HeadBound::measure_core)
      .def_readonly("value_norm", &HeadBound::value_norm)
      .def_readonly("projected_value_norm", &HeadBound::projected_value_norm)
      .def_readonly("rho", &HeadBound::rho)
      .def_readonly("oscillation", &HeadBound::oscillation);

  py::class_<UpperBoundResult>(m, "UpperBoundResult", kUpperBoundResultDoc)
      .def_readonly("radius", &UpperBoundResult::radius)
      .def_readonly("residual", &UpperBoundResult::residual)
      .def_readonly("heads", &UpperBoundResult::heads)
      .def_readonly("bounds", &UpperBoundResult::bounds, "Every bound that applies, W1 first.")
      .def_readonly("best_w1", &UpperBoundResult::best_w1, "The smallest W1 bound.")
      .def_readonly("best_name", &UpperBoundResult::best_name)
      .def_readonly("output_radius", &UpperBoundResult::output_radius,
                    "Radius of a ball containing every output Gamma_mu(x), x, mu in B_R.")
      .def("get", &UpperBoundResult::get, "name"_a, kGetDoc);

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
      "tokens"_a = UpperBoundOptions{}.tokens, kUpperBoundsDoc);

  py::class_<LipschitzWitness>(m, "LipschitzWitness", kWitnessDoc)
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

  py::class_<LipschitzSearchResult>(m, "LipschitzSearchResult", kSearchResultDoc)
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
        ProgressArg progress_arg(kw.contains("progress") ? py::object(kw["progress"]) : py::none(),
                                 "lipschitz search");
        o.progress_callback = progress_arg.callback();
        ModelArg<double> model(pm);
        LipschitzSearchResult r;
        {
          py::gil_scoped_release release;
          r = lipschitz_lower_bound(model.get(), radius, o);
        }
        return r;
      },
      "model"_a, "radius"_a, "residual"_a = LipschitzSearchOptions{}.residual, kLowerBoundDoc);

  py::class_<LipschitzSweepPoint>(m, "LipschitzSweepPoint", kSweepPointDoc)
      .def_readonly("radius", &LipschitzSweepPoint::radius)
      .def_readonly("beta", &LipschitzSweepPoint::beta)
      .def_readonly("best_upper", &LipschitzSweepPoint::best_upper)
      .def_readonly("best_name", &LipschitzSweepPoint::best_name)
      .def_readonly("lower", &LipschitzSweepPoint::lower)
      .def_readonly("search_ratio", &LipschitzSweepPoint::search_ratio)
      .def_readonly("witness_radius", &LipschitzSweepPoint::witness_radius)
      .def_readonly("witness_origin", &LipschitzSweepPoint::witness_origin)
      .def_readonly("gap", &LipschitzSweepPoint::gap)
      .def_readonly("evaluations", &LipschitzSweepPoint::evaluations);

  py::class_<LipschitzSweepResult>(m, "LipschitzSweepResult", kSweepResultDoc)
      .def_readonly("points", &LipschitzSweepResult::points)
      .def_readonly("evaluations", &LipschitzSweepResult::evaluations);

  m.def(
      "lipschitz_sweep",
      [](const PyModel& pm, const std::vector<double>& radii, const std::vector<double>& betas,
         bool residual, const py::kwargs& kw) {
        LipschitzSweepOptions o;
        o.radii = radii;
        o.betas = betas;
        o.search.residual = residual;
        apply_search_options(o.search, kw);
        o.validate();
        ProgressArg progress_arg(kw.contains("progress") ? py::object(kw["progress"]) : py::none(),
                                 "lipschitz sweep");
        o.search.progress_callback = progress_arg.callback();
        ModelArg<double> model(pm);
        LipschitzSweepResult r;
        {
          py::gil_scoped_release release;
          r = lipschitz_sweep(model.get(), o);
        }
        return r;
      },
      "model"_a, "radii"_a, "betas"_a = std::vector<double>{1.0},
      "residual"_a = LipschitzSearchOptions{}.residual, kSweepDoc);

  py::class_<LocalBoundResult>(m, "LocalBoundResult", kLocalResultDoc)
      .def_readonly("radius", &LocalBoundResult::radius)
      .def_readonly("eps", &LocalBoundResult::eps)
      .def_readonly("upper", &LocalBoundResult::upper)
      .def_readonly("upper_at_zero", &LocalBoundResult::upper_at_zero)
      .def_readonly("eps_half", &LocalBoundResult::eps_half)
      .def_readonly("upper_at_eps_half", &LocalBoundResult::upper_at_eps_half)
      .def_readonly("head_measure_terms", &LocalBoundResult::head_measure_terms)
      .def_readonly("x_term", &LocalBoundResult::x_term)
      .def_readonly("global_upper", &LocalBoundResult::global_upper)
      .def_readonly("global_name", &LocalBoundResult::global_name)
      .def_readonly("best_upper", &LocalBoundResult::best_upper)
      .def_readonly("lower", &LocalBoundResult::lower)
      .def_readonly("witness_w1", &LocalBoundResult::witness_w1)
      .def_readonly("witness_origin", &LocalBoundResult::witness_origin)
      .def_property_readonly(
          "witness_atoms",
          [](const LocalBoundResult& r) { return to_numpy(MatrixD(r.witness_atoms)); })
      .def_property_readonly(
          "witness_weights",
          [](const LocalBoundResult& r) { return to_numpy(VectorD(r.witness_weights)); })
      .def_readonly("evaluations", &LocalBoundResult::evaluations);

  m.def(
      "lipschitz_local_bound",
      [](const PyModel& pm, const py::object& mu, double eps, double radius, bool residual,
         int restarts, std::uint64_t seed) {
        LocalBoundOptions o;
        o.eps = eps;
        o.radius = radius;
        o.residual = residual;
        o.restarts = restarts;
        o.seed = seed;
        o.validate();
        ModelArg<double> model(pm);
        MeasureArg<double> a(mu, py::none(), "mu");
        py::gil_scoped_release release;
        return lipschitz_local_bound(model.get(), a.get(), o);
      },
      "model"_a, "mu"_a, "eps"_a, "radius"_a = LocalBoundOptions{}.radius,
      "residual"_a = LocalBoundOptions{}.residual, "restarts"_a = LocalBoundOptions{}.restarts,
      "seed"_a = LocalBoundOptions{}.seed, kLocalDoc);

  m.def(
      "lipschitz_ratio",
      [](const PyModel& pm, const py::object& mu, const py::object& nu, bool residual) {
        ModelArg<double> model(pm);
        MeasureArg<double> a(mu, py::none(), "mu");
        MeasureArg<double> b(nu, py::none(), "nu");
        py::gil_scoped_release release;
        return lipschitz_ratio(model.get(), a.get(), b.get(), residual);
      },
      "model"_a, "mu"_a, "nu"_a, "residual"_a = false, kRatioDoc);

  // Unpacks as the tuple (value, constants, radii) it was before it had a name.
  py::class_<StackBoundResult>(m, "StackBoundResult", kStackResultDoc)
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
      "layers"_a, "radius"_a, "residual"_a = false, kStackDoc);

  m.def(
      "castin_adversarial_tokens",
      [](const PyModel& pm, Index n, double radius) {
        return to_numpy(castin_adversarial_tokens(pm.as<double>(), n, radius));
      },
      "model"_a, "n"_a, "radius"_a, kCastinDoc);

  py::class_<TokenJacobianResult>(m, "TokenJacobianResult", kTokenJacobianResultDoc)
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
      "tolerance"_a = jacobian.tolerance, "seed"_a = jacobian.seed, kTokenJacobianNormDoc);

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
      "model"_a, "tokens"_a, "residual"_a = false, kTokenJacobianDoc);

  py::class_<TokenSearchResult>(m, "TokenSearchResult", kTokenSearchResultDoc)
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
         std::uint64_t seed, bool residual, int threads, const py::object& progress,
         const py::object& communicator) {
        TokenSearchOptions o;
        o.communicator = communicator_arg(communicator);
        o.tokens = tokens;
        o.restarts = restarts;
        o.steps = steps;
        o.step_size = step_size;
        o.radius = radius;
        o.seed = seed;
        o.residual = residual;
        o.threads = threads;
        o.validate();
        ProgressArg progress_arg(progress, "token search");
        o.progress_callback = progress_arg.callback();
        ModelArg<double> model(pm);
        TokenSearchResult r;
        {
          py::gil_scoped_release release;
          r = token_lipschitz_lower_bound(model.get(), o);
        }
        return r;
      },
      // Keywords = TokenSearchOptions' table, defaults from TokenSearchOptions{}.
      "model"_a, "tokens"_a = search.tokens, "restarts"_a = search.restarts,
      "steps"_a = search.steps, "step_size"_a = search.step_size, "radius"_a = search.radius,
      "seed"_a = search.seed, "residual"_a = search.residual, "threads"_a = search.threads,
      "progress"_a = py::none(), py::kw_only(), "communicator"_a = py::none(), kTokenSearchDoc);

  py::class_<TokenBallBound>(m, "TokenBallBound", kTokenBallBoundDoc)
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
      "model"_a, "radius"_a, "tokens"_a, "residual"_a = false, kTokenBallDoc);

  py::class_<TokenSweepResult>(m, "TokenSweepResult", kTokenSweepResultDoc)
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
         double step_size, std::uint64_t seed, bool residual, int threads,
         const py::object& progress, const py::object& communicator) {
        TokenSearchOptions o;
        o.communicator = communicator_arg(communicator);
        o.radius = radius;
        o.restarts = restarts;
        o.steps = steps;
        o.step_size = step_size;
        o.seed = seed;
        o.residual = residual;
        o.threads = threads;
        ProgressArg progress_arg(progress, "token sweep");
        o.progress_callback = progress_arg.callback();
        ModelArg<double> model(pm);
        TokenSweepResult r;
        {
          py::gil_scoped_release release;
          r = token_lipschitz_sweep(model.get(), sizes, o);
        }
        return r;
      },
      // Keywords = TokenSearchOptions' table (tokens replaced by sizes).
      "model"_a, "sizes"_a, "radius"_a, "restarts"_a = search.restarts, "steps"_a = search.steps,
      "step_size"_a = search.step_size, "seed"_a = search.seed, "residual"_a = search.residual,
      "threads"_a = search.threads, "progress"_a = py::none(), py::kw_only(),
      "communicator"_a = py::none(), kTokenSweepDoc);
}

}  // namespace measattn::python
