"""Type stubs of measattn's compiled core (measattn._measattn).

Shapes in the docstrings: n queries / atoms, m keys / atoms, d dimension,
E embedding size, H heads, k = E / H. Array arguments accept any real array-like
(converted once); float32 / float64 C-contiguous arrays are used without copies.
Names of optional modules (wasserstein, flow, maxent, lipschitz) exist only when
compiled in: see measattn.available().
"""

from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

ArrayLike = npt.ArrayLike
DTypeLike = Union[str, type, np.dtype, None]
NDArray = npt.NDArray[Any]
Tokens = Union["Measure", ArrayLike]

__version__: str

def set_num_threads(num_threads: int) -> None: ...
def get_num_threads() -> int: ...
def option_fields(function: str) -> List[Tuple[str, Any]]: ...

class Measure:
    """mu = sum_i w_i delta_{x_i}: atoms (n, d), weights (n,) normalized to sum one."""

    def __init__(self, atoms: ArrayLike, weights: Optional[ArrayLike] = None,
                 dtype: DTypeLike = None) -> None: ...
    @staticmethod
    def empirical(atoms: ArrayLike, dtype: DTypeLike = None) -> "Measure": ...
    @property
    def atoms(self) -> NDArray: ...
    @property
    def weights(self) -> NDArray: ...
    @property
    def size(self) -> int: ...
    @property
    def dim(self) -> int: ...
    @property
    def dtype(self) -> np.dtype: ...
    def __len__(self) -> int: ...
    def is_uniform(self) -> bool: ...
    def mean(self) -> NDArray: ...
    def radius(self) -> float: ...
    def merged(self, tolerance: float = 0.0) -> "Measure": ...
    def push_forward(self, images: ArrayLike) -> "Measure": ...
    def astype(self, dtype: DTypeLike) -> "Measure": ...

class Model:
    """One multi-head attention layer (PyTorch nn.MultiheadAttention layout).

    Gamma_mu(x) = W_O [sum_j pi^h_j(x) v^h(x_j)]_h + b_O,
    pi^h_j(x) = softmax_j(G_h(x, x_j) + log w_j), G = <q, kappa> / tau or -||q - kappa||^2 / tau.
    """

    def __init__(self, w_q: ArrayLike, w_k: ArrayLike, w_v: ArrayLike, w_o: ArrayLike,
                 b_q: Optional[ArrayLike] = None, b_k: Optional[ArrayLike] = None,
                 b_v: Optional[ArrayLike] = None, b_o: Optional[ArrayLike] = None,
                 num_heads: int = 1, potential: str = "dot", scale: float = 0.0,
                 dtype: DTypeLike = None) -> None: ...
    w_q: NDArray  # (E, d_q), read-only view
    w_k: NDArray  # (E, d_kv)
    w_v: NDArray  # (E, d_kv)
    w_o: NDArray  # (d_out, E)
    b_q: NDArray  # (E,) or (0,)
    b_k: NDArray
    b_v: NDArray
    b_o: NDArray  # (d_out,) or (0,)
    @property
    def num_heads(self) -> int: ...
    @property
    def potential(self) -> str: ...
    @property
    def scale(self) -> float: ...
    @property
    def tau(self) -> float: ...
    @property
    def embed_dim(self) -> int: ...
    @property
    def head_dim(self) -> int: ...
    @property
    def query_dim(self) -> int: ...
    @property
    def key_dim(self) -> int: ...
    @property
    def out_dim(self) -> int: ...
    @property
    def has_bias(self) -> bool: ...
    @property
    def dtype(self) -> np.dtype: ...
    def validate(self) -> None: ...
    def head(self, h: int) -> dict: ...
    def astype(self, dtype: DTypeLike) -> "Model": ...
    @staticmethod
    def random(dim: int, num_heads: int = 1, bias: bool = True, seed: int = 0,
               potential: str = "dot", dtype: DTypeLike = "float64") -> "Model": ...
    @staticmethod
    def canonical(dim: int, beta: float, dtype: DTypeLike = "float64") -> "Model": ...
    @staticmethod
    def from_torch(module: Any, dtype: DTypeLike = None, potential: str = "dot",
                   scale: float = 0.0) -> "Model": ...
    def to_torch(self, dtype: DTypeLike = None) -> Any: ...
    def parameters(self) -> dict: ...
    def save(self, path: str, dtype: DTypeLike = None) -> None: ...
    def attend(self, tokens: Tokens, weights: Optional[ArrayLike] = None,
               queries: Optional[ArrayLike] = None, causal: bool = False,
               residual: bool = False, normalization: str = "softmax",
               sinkhorn_iters: int = 0, query_block: int = 0, key_block: int = 0,
               dtype: DTypeLike = None) -> NDArray:
        """Gamma_mu(y_i) for each query (default: the tokens); shape (n, d_out)."""
    def head_fields(self, tokens: Tokens, weights: Optional[ArrayLike] = None,
                    queries: Optional[ArrayLike] = None, causal: bool = False,
                    normalization: str = "softmax", sinkhorn_iters: int = 0,
                    query_block: int = 0, key_block: int = 0,
                    dtype: DTypeLike = None) -> NDArray:
        """Per-head fields before W_O; shape (n, E)."""
    def reference(self, tokens: Tokens, weights: Optional[ArrayLike] = None,
                  queries: Optional[ArrayLike] = None, causal: bool = False,
                  residual: bool = False, normalization: str = "softmax",
                  sinkhorn_iters: int = 0, dtype: DTypeLike = None) -> NDArray:
        """The dense Transformer formula (O(n m) memory); shape (n, d_out)."""
    def kernel(self, tokens: Tokens, weights: Optional[ArrayLike] = None,
               queries: Optional[ArrayLike] = None, head: int = 0, causal: bool = False,
               normalization: str = "softmax", sinkhorn_iters: int = 0,
               dtype: DTypeLike = None) -> NDArray:
        """The kernel pi(y_i)_j of one head; shape (n, m), rows sum to one."""
    def self_attention(self, mu: Tokens, weights: Optional[ArrayLike] = None,
                       causal: bool = False, residual: bool = False,
                       normalization: str = "softmax", sinkhorn_iters: int = 0,
                       dtype: DTypeLike = None) -> Measure: ...
    def cross_attention(self, nu: Tokens, mu: Tokens, residual: bool = False,
                        dtype: DTypeLike = None) -> Measure: ...

def load_model(path: str, dtype: DTypeLike = "float64") -> Model: ...
def save_model(path: str, model: Model, dtype: DTypeLike = None) -> None: ...

# ---- wasserstein ----------------------------------------------------------------

class TransportPlan:
    rows: NDArray  # (nnz,) int64
    cols: NDArray  # (nnz,) int64
    mass: NDArray  # (nnz,)
    dense: Optional[NDArray]  # (n, m) when dense_plan=True
    marginal_error: float
    def __len__(self) -> int: ...

class WassersteinResult:
    value: float
    kind: str  # "exact" | "lower" | "upper" | "estimate"
    lower: float
    upper: float
    cost: float
    p: float
    method: str
    status: str  # "optimal" | "converged" | "iteration_limit" | "bounds_only"
    message: str
    iterations: int
    plan: Optional[TransportPlan]
    potentials: Optional[Tuple[NDArray, NDArray]]
    entropic_cost: float
    transport_cost: float
    rounded_cost: float
    marginal_violation: float
    def __float__(self) -> float: ...

def wasserstein(a: Tokens, b: Tokens, wa: Optional[ArrayLike] = None,
                wb: Optional[ArrayLike] = None, p: float = 1.0, method: str = "auto",
                dtype: DTypeLike = None, **options: Any) -> WassersteinResult:
    """W_p(mu, nu)^p = min_{pi in Pi(wa, wb)} sum_ij pi_ij ||a_i - b_j||^p."""

# ---- flow -----------------------------------------------------------------------

class FlowResult:
    particles: NDArray  # (n, d)
    weights: NDArray  # (n,)
    frames: NDArray  # (F, n, d)
    frame_times: NDArray
    frame_steps: NDArray
    energies: NDArray
    cluster_counts: NDArray
    time: float
    steps: int
    rejected: int
    evaluations: int
    status: str
    message: str
    resumed: bool
    resumed_from_step: int

def flow(model: Model, tokens: Tokens, weights: Optional[ArrayLike] = None,
         time: float = 1.0, steps: int = 10, scheme: str = "euler", tolerance: float = 1e-6,
         max_steps: int = 1000000, initial_step: float = 0.0, sphere: bool = False,
         field: str = "attention", save_every: int = 0, cluster_tolerance: float = 1e-2,
         checkpoint_every: int = 0, checkpoint_path: str = "", resume: bool = False,
         progress: bool = False, query_block: int = 0, key_block: int = 0,
         dtype: DTypeLike = None) -> FlowResult:
    """dx_i/dt = Gamma_{mu_t}(x_i) from the tokens (n, d) to time T."""
def flow_field(model: Model, particles: ArrayLike, weights: Optional[ArrayLike] = None,
               sphere: bool = False, field: str = "attention",
               dtype: DTypeLike = None) -> NDArray: ...
def sphere_energy(particles: ArrayLike, beta: float,
                  weights: Optional[ArrayLike] = None) -> float: ...
def cluster_count(particles: ArrayLike, tolerance: float, max_points: int = 20000) -> int: ...
def orthogonal_start_cosine(n: int, beta: float, t: float, steps: int = 100000) -> float: ...
def is_canonical(model: Model) -> Tuple[bool, Optional[float]]: ...

# ---- maxent ---------------------------------------------------------------------

class GibbsResult:
    probabilities: NDArray
    log_partition: float
    expected_score: float
    entropy: float
    kl: float

class GibbsBound:
    objective: float
    log_partition: float
    gap: float

class MaxEntResult:
    beta: float
    probabilities: NDArray
    expected_score: float
    target: float
    residual: float
    entropy: float
    kl: float
    log_partition: float
    variance: float
    score_min: float
    score_max: float
    beta_lower: float
    beta_upper: float
    iterations: int
    status: str
    message: str

class HeadEntropy:
    entropy: NDArray
    effective_tokens: NDArray
    expected_score: NDArray
    mean_entropy: float
    min_entropy: float
    max_entropy: float
    mean_effective_tokens: float
    curve_entropy: NDArray
    curve_expected_score: NDArray

class EntropyResult:
    betas: List[float]
    heads: List[HeadEntropy]

class SinkhornAttentionResult:
    f: NDArray
    g: NDArray
    column_error: float
    iterations: int
    status: str
    message: str

def gibbs(scores: ArrayLike, weights: Optional[ArrayLike] = None) -> GibbsResult: ...
def log_partition(scores: ArrayLike, weights: Optional[ArrayLike] = None) -> float: ...
def gibbs_bound(scores: ArrayLike, candidate: ArrayLike,
                weights: Optional[ArrayLike] = None) -> GibbsBound: ...
def maxent(scores: ArrayLike, target: float, weights: Optional[ArrayLike] = None,
           beta_tolerance: float = 1e-14, max_iterations: int = 200) -> MaxEntResult: ...
def maxent_at_beta(scores: ArrayLike, beta: float,
                   weights: Optional[ArrayLike] = None) -> MaxEntResult: ...
def default_temperature_grid() -> List[float]: ...
def attention_entropy(model: Model, tokens: Tokens, weights: Optional[ArrayLike] = None,
                      betas: Optional[Sequence[float]] = None, causal: bool = False,
                      query_block: int = 0, key_block: int = 0) -> EntropyResult: ...
def sinkhorn_attention(model: Model, tokens: Tokens, weights: Optional[ArrayLike] = None,
                       head: int = 0, iterations: int = 100, tolerance: float = 0.0,
                       block: int = 0) -> SinkhornAttentionResult: ...

# ---- lipschitz ------------------------------------------------------------------

class NamedBound:
    name: str
    value: float
    kind: str
    meaning: str

class HeadBound:
    x_part: float
    measure_part: float
    x_core: float
    measure_core: float
    value_norm: float
    projected_value_norm: float
    rho: float
    oscillation: float

class UpperBounds:
    radius: float
    residual: bool
    heads: List[HeadBound]
    bounds: List[NamedBound]
    best_w1: float
    best_name: str
    output_radius: float
    def get(self, name: str) -> float: ...

class LipschitzWitness:
    mu_atoms: NDArray
    nu_atoms: NDArray
    mu_weights: NDArray
    nu_weights: NDArray
    f_mu_atoms: NDArray
    f_nu_atoms: NDArray
    w1_input: float
    w1_output: float
    origin: str
    restart: int

class LipschitzSearchResult:
    ratio: float
    witness: LipschitzWitness
    restart_ratios: List[float]
    evaluations: int
    status: str
    message: str

class TokenJacobianResult:
    value: float
    iterations: int
    status: str

class TokenSearchResult:
    value: float
    tokens: NDArray
    evaluations: int

def lipschitz_upper_bounds(model: Model, radius: float, residual: bool = False,
                           tokens: int = 0) -> UpperBounds: ...
def lipschitz_lower_bound(model: Model, radius: float, residual: bool = False,
                          **options: Any) -> LipschitzSearchResult: ...
def lipschitz_ratio(model: Model, mu: Tokens, nu: Tokens, residual: bool = False) -> float: ...
def lipschitz_stack_upper_bound(layers: Sequence[Model], radius: float,
                                residual: bool = False) -> Tuple[float, List[float], List[float]]: ...
def castin_adversarial_tokens(model: Model, n: int, radius: float) -> NDArray: ...
def token_jacobian_norm(model: Model, tokens: ArrayLike, residual: bool = False,
                        iterations: int = 300, tolerance: float = 1e-12,
                        seed: int = 7) -> TokenJacobianResult: ...
def token_jacobian(model: Model, tokens: ArrayLike, residual: bool = False) -> NDArray: ...
def token_lipschitz_lower_bound(model: Model, tokens: int = 8, restarts: int = 8,
                                steps: int = 100, step_size: float = 0.05, radius: float = 0.0,
                                seed: int = 11, residual: bool = False,
                                threads: int = 0) -> TokenSearchResult: ...

# ---- misspec --------------------------------------------------------------------

class MisspecRow:
    parameter: float
    w1_input: float
    w1_output: float
    bound: float
    a_priori: float
    max_ratio: float

class MisspecResult:
    kind: str
    radius: float
    lipschitz: float
    bound_name: str
    rows: List[MisspecRow]
    output_rate: float
    input_rate: float
    violated: bool

def misspec(model: Model, tokens: Tokens, weights: Optional[ArrayLike] = None,
            kind: str = "sample", sizes: Optional[Sequence[int]] = None,
            sigmas: Optional[Sequence[float]] = None, eps: Optional[Sequence[float]] = None,
            repeats: int = 3, radius: float = 0.0, adversarial: bool = True,
            residual: bool = False, seed: int = 1) -> MisspecResult:
    """W1(F(mu'), F(mu)) <= L(R) W1(mu', mu) next to the realized deviation."""
def expected_gaussian_norm(d: int) -> float: ...
