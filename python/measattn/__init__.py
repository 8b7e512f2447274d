"""measattn: attention as a map on probability measures, from NumPy and PyTorch.

A measure ``mu = sum_j w_j delta_{x_j}`` is an (m, d) array of atoms with (m,)
weights (uniform by default) or a :class:`Measure`. A :class:`Model` is one
multi-head attention layer in PyTorch ``nn.MultiheadAttention``'s layout;
``model.attend(tokens)`` returns the attention field ``Gamma_mu(x_i)`` for every
token, equal to PyTorch's output to rounding.

Arrays: float64 and float32 C-contiguous arrays are used without copies where
the library allows; other real dtypes and layouts are converted once; wrong
shapes, complex or object arrays raise ValueError. float32 inputs run the
float32 code path (or pass ``dtype=``). Every heavy call releases the GIL, and
Ctrl-C interrupts long computations (KeyboardInterrupt).

Errors: bad input raises ValueError with the library's message (naming the
argument); other failures raise RuntimeError.

Importing measattn does not import torch: :meth:`Model.from_torch` reads the
module's parameters by duck typing.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as _np

from . import _interop, _measattn
from ._measattn import (  # noqa: F401  (re-exported)
    MAX_THREADS,
    Measure,
    Model,
    __version__,
    get_num_threads,
    load_model,
    mpi_enabled,
    save_model,
    set_num_threads,
)

__all__ = [
    "MAX_THREADS",
    "Measure",
    "Model",
    "__version__",
    "get_num_threads",
    "load_model",
    "mpi_enabled",
    "save_model",
    "set_num_threads",
]

# Capabilities compiled into this build (the optional modules of the library).
_OPTIONAL = [
    # wasserstein.hpp
    "wasserstein", "WassersteinResult", "TransportPlan",
    # flow.hpp
    "flow", "FlowResult", "flow_field", "sphere_energy", "cluster_count",
    "orthogonal_start_cosine", "equiangular_reference", "is_canonical",
    # gaussian.hpp
    "GaussianMeasure", "gaussian_attention", "gaussian_flow", "gaussian_w2",
    "gauss_hermite_measure",
    # maxent.hpp
    "gibbs", "GibbsResult", "gibbs_bound", "GibbsBoundResult", "log_partition", "maxent",
    "maxent_at_beta", "MaxEntResult", "attention_entropy", "EntropyResult", "HeadEntropy",
    "default_temperature_grid", "sinkhorn_attention", "SinkhornAttentionResult",
    # lipschitz.hpp
    "lipschitz_upper_bounds", "lipschitz_lower_bound", "lipschitz_ratio",
    "lipschitz_stack_upper_bound", "castin_adversarial_tokens", "token_jacobian_norm",
    "token_jacobian", "token_lipschitz_lower_bound", "token_ball_upper_bound",
    "token_lipschitz_sweep", "TokenBallBound", "TokenSweepResult", "NamedBound", "HeadBound",
    "UpperBoundResult", "StackBoundResult", "LipschitzWitness", "LipschitzSearchResult",
    "TokenJacobianResult", "TokenSearchResult", "lipschitz_sweep", "LipschitzSweepResult",
    "LipschitzSweepPoint", "lipschitz_local_bound", "LocalBoundResult",
    # misspec.hpp
    "misspec", "MisspecResult", "MisspecRow", "expected_gaussian_norm",
    # transformer.hpp
    "Transformer", "TransformerBlock",
]
for _name in _OPTIONAL:
    if hasattr(_measattn, _name):
        globals()[_name] = getattr(_measattn, _name)
        __all__.append(_name)
del _name


if hasattr(_measattn, "_transport_exact"):
    from . import ot  # noqa: F401  (POT-compatible optimal transport: measattn.ot)
    __all__.append("ot")


def available() -> list:
    """Names of the optional capabilities compiled into this build.

    Returns
    -------
    list of str
        The functions and classes of the library's optional modules
        (wasserstein, flow, gaussian, maxent, lipschitz, misspec) that this build has.

    Examples
    --------
    >>> "flow" in measattn.available() and "misspec" in measattn.available()
    True
    """
    return [n for n in _OPTIONAL if hasattr(_measattn, n)]


class LipschitzResult:
    """Both sides of the W1 Lipschitz constant of a layer on B_R (see lipschitz).

    Attributes
    ----------
    upper : UpperBoundResult
        Every certified upper bound; upper.best_w1 is the smallest, named
        upper.best_name.
    lower : LipschitzSearchResult or None
        The search: lower.ratio = W1(F(mu), F(nu)) / W1(mu, nu) of the best pair
        found, both distances exact, so a certified lower bound; None without
        search.
    upper_bound, lower_bound : float
        The two numbers (lower_bound 0 without search).
    gap : float
        upper_bound / lower_bound (inf without search).

    Examples
    --------
    >>> r = measattn.lipschitz(measattn.Model.random(2, seed=0), radius=1.0, search=False)
    >>> r.lower, r.lower_bound, r.gap
    (None, 0.0, inf)
    """

    def __init__(self, upper: Any, lower: Any) -> None:
        self.upper = upper
        self.lower = lower
        self.upper_bound = upper.best_w1
        self.lower_bound = lower.ratio if lower is not None else 0.0
        self.gap = (self.upper_bound / self.lower_bound if self.lower_bound > 0
                    else float("inf"))

    def __repr__(self) -> str:
        return (f"LipschitzResult(lower_bound={self.lower_bound!r}, "
                f"upper_bound={self.upper_bound!r} ({self.upper.best_name}), gap={self.gap:.3g})")


def lipschitz(model: Model, radius: float, residual: bool = False, search: bool = True,
              tokens: int = 0, **options: Any) -> LipschitzResult:
    """The Lipschitz constant of a layer in W1, bracketed from both sides.

    For measures supported in the ball B_R (R = radius),

        lower_bound <= L = sup W1(F(mu), F(nu)) / W1(mu, nu) <= upper_bound,

    F(mu) = (Gamma_mu)#mu (residual: (id + Gamma_mu)#mu).

    Parameters
    ----------
    model : Model
        Self-attention: d_q = d_kv.
    radius : float
        R > 0.
    residual : bool, default False
    search : bool, default True
        Search for a lower bound (else lower_bound = 0).
    tokens : int, default 0
        Number of tokens n the bounds may use (0 = any number).
    **options
        Of lipschitz_lower_bound: atoms, restarts, steps, step_size, nearby,
        seed, threads, progress.

    Returns
    -------
    LipschitzResult
        upper_bound: the smallest certified upper bound of
        lipschitz_upper_bounds (closed forms, O(H d^3)); lower_bound: the best
        ratio found by gradient ascent over pairs of measures, each ratio
        certified by two exact W1 computations.

    Examples
    --------
    >>> model = measattn.Model.random(2, seed=0)
    >>> r = measattn.lipschitz(model, radius=1.0, atoms=3, restarts=2, steps=20, seed=0)
    >>> round(r.lower_bound, 6), round(r.upper_bound, 6), r.upper.best_name
    (2.558557, 124.473512, 'w1_stacked_reach')
    >>> r.lower_bound <= r.upper_bound
    True

    References
    ----------
    Vuckovic, Baratin and Tachet des Combes, "A mathematical theory of
    attention" (2020); Castin, Ablin and Peyre, "How smooth is attention?"
    (2024); docs/theory.md, section "Lipschitz continuity of attention in W1".
    Needs the lipschitz module (see available()).
    """
    if not hasattr(_measattn, "lipschitz_upper_bounds"):
        raise RuntimeError("measattn was built without the lipschitz module")
    upper = _measattn.lipschitz_upper_bounds(model, radius, residual, tokens)
    lower = (_measattn.lipschitz_lower_bound(model, radius, residual, **options)
             if search else None)
    return LipschitzResult(upper, lower)


if hasattr(_measattn, "lipschitz_upper_bounds"):
    __all__ += ["lipschitz", "LipschitzResult"]


# ---- PyTorch interop (duck typing: torch is never imported here) ---------------

def _to_numpy(value: Any) -> Optional[_np.ndarray]:
    """A tensor (any device, with or without grad) or array-like as a NumPy array."""
    if value is None:
        return None
    if hasattr(value, "detach"):
        value = value.detach()
    if hasattr(value, "cpu"):
        value = value.cpu()
    if hasattr(value, "numpy"):
        return _np.asarray(value.numpy())
    return _np.asarray(value)


def _from_torch(module: Any, dtype: Any = None, potential: str = "dot",
                scale: float = 0.0) -> Model:
    """Copies the weights of a PyTorch ``nn.MultiheadAttention`` into a Model.

    Model.from_torch(module, dtype=None, potential="dot", scale=0.0).

    Also accepts the attention modules of Hugging Face models: ``BertAttention``
    (query/key/value and the output projection ``output.dense``; the LayerNorm
    after it belongs to the block), a bare ``BertSelfAttention`` (W_O = I) and
    ``GPT2Attention`` (fused Conv1D ``c_attn``, ``c_proj``; GPT-2 attends
    causally: pass ``causal=True`` to ``attend``).

    Reads ``in_proj_weight`` (or ``q_proj_weight``/``k_proj_weight``/``v_proj_weight``),
    ``in_proj_bias``, ``out_proj.weight``, ``out_proj.bias`` and ``num_heads`` from
    the module (duck typing: any object with these attributes, or with a
    ``state_dict()`` holding these names plus a ``num_heads`` attribute, works).
    ``model.attend(x)`` then equals ``module(x, x, x, need_weights=False)[0]`` for
    one unbatched sequence x (eval mode: dropout is not modelled).

    dtype: None = the parameters' dtype (float32 stays float32; others become
    float64), or "float32" / "float64". potential, scale: see Model (PyTorch's
    attention is potential "dot" with scale 0, i.e. tau = sqrt(head_dim)).

    Raises ValueError for features the model does not have: add_bias_kv
    (bias_k / bias_v) and add_zero_attn.

    Parameters
    ----------
    module : torch.nn.MultiheadAttention or a look-alike
    dtype : {None, "float32", "float64"}
    potential : {"dot", "l2", "cosine"}, default "dot"
    scale : float, default 0.0

    Returns
    -------
    Model
        The same parameters (copied, exact).

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> mha = torch.nn.MultiheadAttention(4, num_heads=2).eval()
    >>> model = measattn.Model.from_torch(mha)
    >>> model.num_heads, model.dtype
    (2, dtype('float32'))
    >>> x = torch.randn(5, 4)
    >>> reference = mha(x, x, x, need_weights=False)[0].detach().numpy()
    >>> bool(np.allclose(model.attend(x.numpy()), reference, rtol=0, atol=1e-6))
    True

    References
    ----------
    docs/python.md, "Models and attention".
    """
    # The attention modules of Hugging Face BERT and GPT-2 (_interop.py).
    hf = _interop.attention_model_from_module(module, dtype)
    if hf is not None:
        return hf
    if getattr(module, "bias_k", None) is not None or getattr(module, "bias_v", None) is not None:
        raise ValueError("module: add_bias_kv (bias_k / bias_v) is not supported")
    if getattr(module, "add_zero_attn", False):
        raise ValueError("module: add_zero_attn is not supported")
    num_heads = getattr(module, "num_heads", None)
    if num_heads is None:
        raise ValueError("module: no num_heads attribute (expected an nn.MultiheadAttention)")

    if hasattr(module, "state_dict"):
        state = {k: _to_numpy(v) for k, v in module.state_dict().items()}
    else:
        state = {}

    def get(name: str) -> Optional[_np.ndarray]:
        if name in state:
            return state[name]
        obj = module
        for part in name.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                return None
        return _to_numpy(obj)

    in_w = get("in_proj_weight")
    if in_w is not None:
        e = in_w.shape[0] // 3
        w_q, w_k, w_v = in_w[:e], in_w[e:2 * e], in_w[2 * e:]
    else:
        w_q, w_k, w_v = get("q_proj_weight"), get("k_proj_weight"), get("v_proj_weight")
        if w_q is None or w_k is None or w_v is None:
            raise ValueError("module: neither in_proj_weight nor q/k/v_proj_weight found")
        e = w_q.shape[0]
    in_b = get("in_proj_bias")
    b_q = b_k = b_v = None
    if in_b is not None:
        b_q, b_k, b_v = in_b[:e], in_b[e:2 * e], in_b[2 * e:]
    w_o = get("out_proj.weight")
    if w_o is None:
        raise ValueError("module: out_proj.weight not found")
    b_o = get("out_proj.bias")
    if dtype is None:
        dtype = "float32" if w_q.dtype == _np.float32 else "float64"
    return Model(w_q, w_k, w_v, w_o, b_q, b_k, b_v, b_o, num_heads=int(num_heads),
                 potential=potential, scale=scale, dtype=dtype)


def _to_torch(self: Model, dtype: Any = None) -> Any:
    """A PyTorch ``nn.MultiheadAttention`` with this model's weights (imports torch).

    Only the dot potential with the default scale has a PyTorch equivalent; the
    module is created with batch_first=False, dropout 0 and the model's biases
    (zero biases where the model has none).

    Parameters
    ----------
    dtype : {None, "float32", "float64"}
        None = the model's.

    Returns
    -------
    torch.nn.MultiheadAttention
        In eval mode, with a copy of the parameters.

    Examples
    --------
    >>> import torch
    >>> model = measattn.Model.random(4, num_heads=2, seed=0)
    >>> mha = model.to_torch()
    >>> x = np.random.default_rng(0).normal(size=(3, 4))
    >>> out = mha(*[torch.from_numpy(x)] * 3, need_weights=False)[0].detach().numpy()
    >>> bool(np.allclose(out, model.attend(x), rtol=0, atol=1e-12))
    True
    """
    import torch  # local: measattn never imports torch at import time

    if self.potential != "dot" or self.scale not in (0.0, self.head_dim ** 0.5):
        raise ValueError("model: only potential 'dot' with the default scale maps to "
                         "nn.MultiheadAttention")
    if self.out_dim != self.embed_dim or self.query_dim != self.embed_dim:
        raise ValueError("model: nn.MultiheadAttention needs query_dim == out_dim == embed_dim")
    tdtype = {None: None, "float32": torch.float32, "float64": torch.float64}.get(
        dtype if dtype is None or isinstance(dtype, str) else _np.dtype(dtype).name)
    if tdtype is None:
        tdtype = torch.float32 if self.dtype == _np.float32 else torch.float64
    e = self.embed_dim
    mha = torch.nn.MultiheadAttention(e, self.num_heads, bias=True, kdim=self.key_dim,
                                      vdim=self.key_dim, dtype=tdtype)
    zeros = _np.zeros(e)
    with torch.no_grad():
        def t(a):
            return torch.as_tensor(_np.array(a), dtype=tdtype)
        if mha.in_proj_weight is not None:
            mha.in_proj_weight.copy_(t(_np.concatenate([self.w_q, self.w_k, self.w_v])))
        else:
            mha.q_proj_weight.copy_(t(self.w_q))
            mha.k_proj_weight.copy_(t(self.w_k))
            mha.v_proj_weight.copy_(t(self.w_v))
        bias = [b if b.size else zeros for b in (self.b_q, self.b_k, self.b_v)]
        mha.in_proj_bias.copy_(t(_np.concatenate(bias)))
        mha.out_proj.weight.copy_(t(self.w_o))
        mha.out_proj.bias.copy_(t(self.b_o if self.b_o.size else zeros))
    return mha.eval()


def _parameters(self: Model) -> dict:
    """The constructor arguments of this model (arrays copied).

    ``Model(**model.parameters())`` rebuilds it, and a changed copy is easy to
    make.

    Returns
    -------
    dict
        w_q, w_k, w_v, w_o, b_q, b_k, b_v, b_o (None for no bias), num_heads,
        potential, scale.

    Examples
    --------
    >>> model = measattn.Model.random(4, num_heads=2, seed=0)
    >>> p = model.parameters()
    >>> p["scale"] = 0.5
    >>> measattn.Model(**p).tau
    0.5
    """
    def opt(a):
        return _np.array(a) if a.size else None
    return dict(w_q=_np.array(self.w_q), w_k=_np.array(self.w_k), w_v=_np.array(self.w_v),
                w_o=_np.array(self.w_o), b_q=opt(self.b_q), b_k=opt(self.b_k),
                b_v=opt(self.b_v), b_o=opt(self.b_o), num_heads=self.num_heads,
                potential=self.potential, scale=self.scale)


Model.from_torch = staticmethod(_from_torch)
if hasattr(_measattn, "Transformer"):
    _measattn.Transformer.from_torch = staticmethod(_interop.transformer_from_torch)
Model.to_torch = _to_torch
Model.parameters = _parameters
