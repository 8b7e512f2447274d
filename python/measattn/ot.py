"""measattn.ot: optimal transport with POT's signatures and return conventions.

``import measattn.ot as ot`` runs code written for POT (``ot.emd``, ``ot.emd2``,
``ot.sinkhorn``, ``ot.sinkhorn2``, ``ot.emd_1d``, ``ot.emd2_1d``, ``ot.wasserstein_1d``,
``ot.sliced_wasserstein_distance``, ``ot.max_sliced_wasserstein_distance``,
``ot.bregman.empirical_sinkhorn2``, ``ot.dist``, ``ot.unif``) on measattn's solvers:
the exact network simplex on a cost matrix (column generation, certified by a sweep of
all reduced costs), stabilized Sinkhorn with iteration caps, warm starts and several
target histograms, and the 1-D quantile formula. Inputs are NumPy arrays or anything
``numpy.asarray`` accepts (PyTorch tensors on the CPU included); float32 inputs give
float32 outputs. docs/ot.md lists every remaining difference from POT.

Weights of different totals raise ValueError naming both totals (POT raises
AssertionError); nothing is renormalized silently.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _measattn

__all__ = [
    "dist", "unif", "emd", "emd2", "emd_1d", "emd2_1d", "wasserstein_1d", "sinkhorn",
    "sinkhorn2", "sinkhorn_knopp", "sinkhorn_log", "sinkhorn_stabilized",
    "sinkhorn_epsilon_scaling", "empirical_sinkhorn2", "sliced_wasserstein_distance",
    "max_sliced_wasserstein_distance", "center_ot_dual", "bregman", "lp",
]

_NOT_CONVERGED = ("Sinkhorn did not converge. You might want to increase the number of "
                  "iterations `numItermax` or the regularization parameter `reg`.")
_MAX_ITER = "numItermax reached before optimality. Try to increase numItermax."


# ---- arrays ----------------------------------------------------------------------

def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach()
    if hasattr(x, "cpu"):
        x = x.cpu()
    if hasattr(x, "numpy"):
        x = x.numpy()
    return np.asarray(x)


def _empty(x: Any) -> bool:
    return x is None or (np.ndim(x) >= 1 and len(x) == 0) or np.ndim(x) == 0 and x is None


def _dtype(*arrays: Any) -> np.dtype:
    """The output dtype: float32 when the first given array is float32, else float64."""
    for x in arrays:
        if x is not None and not _empty(x):
            return np.dtype(np.float32) if _np(x).dtype == np.float32 else np.dtype(np.float64)
    return np.dtype(np.float64)


def _histogram(w: Any, n: int) -> np.ndarray:
    if _empty(w):
        return np.full(n, 1.0 / n)
    return np.asarray(_np(w), dtype=np.float64)


def _cost(M: Any) -> np.ndarray:
    M = np.asarray(_np(M), dtype=np.float64)
    if M.ndim != 2:
        raise ValueError(f"M: expected a 2-D cost matrix, got {M.ndim} dimension(s)")
    return M


def _check_shapes(a: np.ndarray, b: np.ndarray, M: np.ndarray) -> None:
    if a.ndim != 1 or a.shape[0] != M.shape[0] or b.shape[0] != M.shape[1]:
        raise ValueError(f"Dimension mismatch, check dimensions of M with a and b: a {a.shape}, "
                         f"b {b.shape}, M {M.shape}")


def _renamed(e: ValueError) -> ValueError:
    """The library names its argument `cost`; POT's is M."""
    text = str(e)
    if text.startswith("cost:"):
        text = "M:" + text[len("cost:"):]
    return ValueError(text)


def _scalar(x: float, dtype: np.dtype) -> Any:
    return dtype.type(x)


# ---- utilities -------------------------------------------------------------------

def unif(n: int, type_as: Any = None) -> np.ndarray:
    """The uniform histogram of n bins (POT's ot.unif).

        a_i = 1 / n,   i = 1..n

    Parameters
    ----------
    n : int
    type_as : array_like, optional
        float32 when it is float32, else float64.

    Returns
    -------
    numpy.ndarray, shape (n,)

    Examples
    --------
    >>> import measattn.ot as ot
    >>> ot.unif(4)
    array([0.25, 0.25, 0.25, 0.25])
    >>> ot.unif(2, type_as=np.zeros(1, dtype=np.float32)).dtype
    dtype('float32')
    """
    return np.ones((n,), dtype=_dtype(type_as) if type_as is not None else np.float64) / n


def dist(x1: Any, x2: Any = None, metric: str = "sqeuclidean", p: float = 2,
         w: Any = None) -> np.ndarray:
    """Cost matrix between the rows of x1 and x2 (POT's ot.dist).

        M_ij = ||x1_i - x2_j||^2   (metric "sqeuclidean", the default)
        M_ij = ||x1_i - x2_j||     (metric "euclidean")

    Computed as POT does, ||x||^2 + ||y||^2 - 2 <x, y> clipped at 0, with a zero
    diagonal when x2 is x1 (or None); other metrics go to
    scipy.spatial.distance.cdist (p and w passed for the Minkowski metrics).

    Parameters
    ----------
    x1 : array_like, shape (n, d)
    x2 : array_like, shape (m, d), optional
        None = x1.
    metric : str, default "sqeuclidean"
    p : float, default 2
    w : array_like, optional
        cdist's weights.

    Returns
    -------
    numpy.ndarray, shape (n, m)
        float32 for float32 x1, else float64 (exact up to the rounding of the
        expansion above).

    Examples
    --------
    >>> import measattn.ot as ot
    >>> x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> ot.dist(x, x + [1.0, 0.0])
    array([[1., 4., 2.],
           [0., 1., 1.],
           [2., 5., 1.]])
    >>> ot.dist(x, metric="euclidean")[0]
    array([0., 1., 1.])
    """
    same = x2 is None or x2 is x1
    X = _np(x1)
    Y = X if x2 is None else _np(x2)
    dtype = _dtype(X)
    if metric in ("sqeuclidean", "euclidean"):
        Xf, Yf = X.astype(dtype, copy=False), Y.astype(dtype, copy=False)
        c = -2 * (Xf @ Yf.T)
        c += np.einsum("ij,ij->i", Xf, Xf)[:, None]
        c += np.einsum("ij,ij->i", Yf, Yf)[None, :]
        c = np.maximum(c, 0)
        if metric == "euclidean":
            c = np.sqrt(c)
        if same:
            np.fill_diagonal(c, 0)
        return c
    from scipy.spatial.distance import cdist
    if metric.endswith("minkowski"):
        return cdist(X, Y, metric=metric, p=p, w=w)
    return cdist(X, Y, metric=metric, w=w)


def center_ot_dual(alpha0: Any, beta0: Any, a: Any = None, b: Any = None) -> Tuple[Any, Any]:
    """Shifts dual potentials by a constant so that <alpha, a> = <beta, b> (POT's).

        c = (<b, beta0> - <a, alpha0>) / (sum a + sum b),
        alpha = alpha0 + c,   beta = beta0 - c

    The dual objective <alpha, a> + <beta, b> is unchanged when a and b have equal
    totals. a, b: None = uniform.

    Returns
    -------
    (alpha, beta) : tuple of numpy.ndarray

    Examples
    --------
    >>> import measattn.ot as ot
    >>> ot.center_ot_dual(np.array([1.0, 2.0]), np.array([0.0, 0.0]))
    (array([0.25, 1.25]), array([0.75, 0.75]))
    """
    alpha0, beta0 = _np(alpha0), _np(beta0)
    if a is None or b is None:
        a = np.ones(alpha0.shape[0]) / alpha0.shape[0]
        b = np.ones(beta0.shape[0]) / beta0.shape[0]
    c = (np.dot(b, beta0) - np.dot(a, alpha0)) / (np.sum(a) + np.sum(b))
    return alpha0 + c, beta0 - c


# ---- exact ------------------------------------------------------------------------

def _emd(a: np.ndarray, b: np.ndarray, M: np.ndarray, plan: bool, center_dual: bool,
         potentials_init: Any) -> dict:
    _check_shapes(a, b, M)
    Mw = M
    if potentials_init is not None:
        # Warm start through the costs: the same optimal plans for M - u0 - v0.
        u0, v0 = (np.asarray(_np(t), dtype=np.float64) for t in potentials_init)
        Mw = M - u0[:, None] - v0[None, :]
    try:
        r = _measattn._transport_exact(a, b, Mw, plan=True)
    except ValueError as e:
        raise _renamed(e) from None
    u, v = r["f"], r["g"]
    if potentials_init is not None:
        u, v = u + u0, v + v0
        r["cost"] = float(np.sum(r["plan"] * M))
    if center_dual:
        u, v = center_ot_dual(u, v, a, b)
    r["u"], r["v"] = u, v
    if r["status"] == "optimal":
        r["result_code"], r["warning"] = 1, None
    else:
        r["result_code"], r["warning"] = 2, _MAX_ITER
        warnings.warn(_MAX_ITER)
    return r


def emd(a: Any, b: Any, M: Any, numItermax: int = 100000, log: bool = False,
        center_dual: bool = True, numThreads: Union[int, str] = 1,
        check_marginals: bool = True, potentials_init: Any = None) -> Any:
    """Optimal transport plan on a cost matrix (POT's ot.emd).

        G = argmin_{G in Pi(a, b)} <G, M>,   Pi(a, b) = {G >= 0 : G 1 = a, G^T 1 = b}

    Parameters
    ----------
    a : array_like, shape (n,)
        Source histogram; an empty list = uniform.
    b : array_like, shape (m,)
        Target histogram (the same total as a, else ValueError naming both
        totals); an empty list = uniform.
    M : array_like, shape (n, m)
        Cost matrix, any finite real values.
    numItermax, numThreads, check_marginals
        Accepted for POT's signature (the solver has its own certified stopping
        rule).
    log : bool, default False
        Also return {'cost', 'u', 'v', 'warning', 'result_code'}.
    center_dual : bool, default True
        Center the potentials (center_ot_dual).
    potentials_init : (u0, v0), optional
        A warm start: the same optimal plans for M - u0 - v0.

    Returns
    -------
    G : numpy.ndarray, shape (n, m)
        An optimal plan, exact (the network simplex, certified by a sweep of all
        reduced costs); its dtype is a's (then b's, then M's): float32 stays
        float32.
    log : dict
        With log=True: cost = <G, M>, the dual potentials u, v (u_i + v_j <= M_ij),
        result_code 1 (optimal) or 2 (round limit; a warning is issued).

    Examples
    --------
    >>> import measattn.ot as ot
    >>> a, b = [0.5, 0.5], [0.5, 0.5]
    >>> M = [[0.0, 1.0], [1.0, 0.0]]
    >>> ot.emd(a, b, M)
    array([[0.5, 0. ],
           [0. , 0.5]])
    >>> G, log = ot.emd(a, b, M, log=True)
    >>> float(log["cost"]), log["result_code"]
    (0.0, 1)

    References
    ----------
    Bonneel, van de Panne, Paris and Heidrich (2011); POT's ot.emd; docs/ot.md;
    docs/theory.md, "Exact solver".
    """
    dtype = _dtype(a, b, M)
    Mn = _cost(M)
    an, bn = _histogram(a, Mn.shape[0]), _histogram(b, Mn.shape[1])
    r = _emd(an, bn, Mn, True, center_dual, potentials_init)
    G = r["plan"].astype(dtype, copy=False)
    if log:
        return G, {"cost": _scalar(r["cost"], dtype), "u": r["u"].astype(dtype, copy=False),
                   "v": r["v"].astype(dtype, copy=False), "warning": r["warning"],
                   "result_code": r["result_code"]}
    return G


def emd2(a: Any, b: Any, M: Any, processes: int = 1, numItermax: int = 100000,
         log: bool = False, return_matrix: bool = False, center_dual: bool = True,
         numThreads: Union[int, str] = 1, check_marginals: bool = True,
         potentials_init: Any = None) -> Any:
    """Optimal transport cost on a cost matrix (POT's ot.emd2).

        W = min_{G in Pi(a, b)} <G, M>

    Parameters
    ----------
    a : array_like, shape (n,)
        Empty list = uniform.
    b : array_like, shape (m,) or (m, k)
        A 2-D b gives k costs, one per column (as POT).
    M : array_like, shape (n, m)
    processes, numItermax, numThreads, check_marginals
        Accepted for POT's signature.
    log : bool, default False
        Return [cost, {'u', 'v', 'warning', 'result_code'}] (as POT).
    return_matrix : bool, default False
        Also put the plan in the log as 'G'.
    center_dual : bool, default True
    potentials_init : (u0, v0), optional
        A warm start.

    Returns
    -------
    float (numpy scalar) or list
        The exact optimal cost (certified optimal when result_code is 1), in the
        dtype of a (then b, then M); a list for a 2-D b.

    Examples
    --------
    >>> import measattn.ot as ot
    >>> M = [[0.0, 1.0], [1.0, 0.0]]
    >>> float(ot.emd2([0.5, 0.5], [0.5, 0.5], M))
    0.0
    >>> [float(c) for c in ot.emd2([0.5, 0.5], np.array([[0.5, 1.0], [0.5, 0.0]]), M)]
    [0.0, 0.5]

    References
    ----------
    POT's ot.emd2; docs/ot.md.
    """
    dtype = _dtype(a, b, M)
    Mn = _cost(M)
    an = _histogram(a, Mn.shape[0])
    bn = _histogram(b, Mn.shape[1])

    def one(bk: np.ndarray) -> Any:
        r = _emd(an, bk, Mn, True, center_dual, potentials_init)
        cost = _scalar(r["cost"], dtype)
        if not (log or return_matrix):
            return cost
        d = {"u": r["u"].astype(dtype, copy=False), "v": r["v"].astype(dtype, copy=False),
             "warning": r["warning"], "result_code": r["result_code"]}
        if return_matrix:
            d["G"] = r["plan"].astype(dtype, copy=False)
        return [cost, d]

    if bn.ndim == 1:
        return one(bn)
    return [one(np.ascontiguousarray(bn[:, k])) for k in range(bn.shape[1])]


# ---- 1-D --------------------------------------------------------------------------

def _mass_check(a: np.ndarray, b: np.ndarray) -> None:
    ta, tb = float(np.sum(a)), float(np.sum(b))
    if abs(ta - tb) > 1e-6 * max(abs(ta), abs(tb)):
        raise ValueError(f"mass: the weights have different totals (a sums to {ta:.12g}, b sums "
                         f"to {tb:.12g})")


def _p_of(metric: str, p: float) -> float:
    if metric == "sqeuclidean":
        return 2.0
    if metric in ("euclidean", "cityblock"):
        return 1.0
    if metric == "minkowski":
        return float(p)
    raise ValueError(f"metric: {metric!r} is not a metric of emd_1d (sqeuclidean, euclidean, "
                     "cityblock, minkowski)")


def _monotone(x_a: Any, x_b: Any, a: Any, b: Any, metric: str, p: float) -> Tuple[Any, ...]:
    xa, xb = _np(x_a), _np(x_b)
    dtype = _dtype(xa)
    for name, x in (("x_a", xa), ("x_b", xb)):
        if not (x.ndim == 1 or (x.ndim == 2 and x.shape[1] == 1)):
            raise ValueError(f"{name}: emd_1d should only be used with monodimensional data")
    xa = np.asarray(xa, dtype=np.float64).reshape(-1)
    xb = np.asarray(xb, dtype=np.float64).reshape(-1)
    an, bn = _histogram(a, xa.shape[0]), _histogram(b, xb.shape[0])
    _mass_check(an, bn)
    bn = bn * (np.sum(an) / np.sum(bn))
    pp = _p_of(metric, p)
    r = _measattn.wasserstein(xa[:, None], xb[:, None], an, bn, p=pp, method="1d", plan=True,
                              mass="renormalize")
    total = float(np.sum(an))
    rows, cols, mass = r.plan.rows, r.plan.cols, r.plan.mass * total
    d = np.abs(xa[rows] - xb[cols])
    cost = float(np.sum(mass * (d ** pp if metric != "sqeuclidean" else d * d)))
    return rows, cols, mass, cost, dtype, (xa.shape[0], xb.shape[0])


def emd_1d(x_a: Any, x_b: Any, a: Any = None, b: Any = None, metric: str = "sqeuclidean",
           p: float = 1.0, dense: bool = True, log: bool = False) -> Any:
    """The optimal plan between 1-D samples (POT's ot.emd_1d).

    The monotone (quantile) coupling of mu = sum_i a_i delta_{x_a,i} and
    nu = sum_j b_j delta_{x_b,j}: optimal for every cost |x - y|^p, p >= 1.

    Parameters
    ----------
    x_a : array_like, shape (n,) or (n, 1)
    x_b : array_like, shape (m,) or (m, 1)
    a, b : array_like, optional
        Weights (equal totals); None = uniform.
    metric : {"sqeuclidean", "euclidean", "cityblock", "minkowski"}
        The cost |x - y|^2, |x - y|, |x - y|, |x - y|^p.
    p : float, default 1.0
        For "minkowski".
    dense : bool, default True
        A dense (n, m) array; False: a scipy.sparse coo_matrix.
    log : bool, default False
        Also return {'cost'}.

    Returns
    -------
    G : numpy.ndarray or scipy.sparse.coo_matrix, shape (n, m)
        Exact (at most n + m - 1 non-zero entries).

    Examples
    --------
    >>> import measattn.ot as ot
    >>> G, log = ot.emd_1d([0.0, 1.0], [2.0, 4.0], log=True)
    >>> G
    array([[0.5, 0. ],
           [0. , 0.5]])
    >>> float(log["cost"])
    6.5

    References
    ----------
    docs/theory.md, "One dimension".
    """
    rows, cols, mass, cost, dtype, shape = _monotone(x_a, x_b, a, b, metric, p)
    if dense:
        G: Any = np.zeros(shape, dtype=dtype)
        np.add.at(G, (rows, cols), mass.astype(dtype))
    else:
        from scipy.sparse import coo_matrix
        G = coo_matrix((mass.astype(dtype), (rows, cols)), shape=shape)
    if log:
        return G, {"cost": _scalar(cost, dtype)}
    return G


def emd2_1d(x_a: Any, x_b: Any, a: Any = None, b: Any = None, metric: str = "sqeuclidean",
            p: float = 1.0, dense: bool = True, log: bool = False) -> Any:
    """The optimal cost between 1-D samples (POT's ot.emd2_1d).

        sum_ij G_ij c(x_a,i, x_b,j)   for the monotone plan G (see emd_1d)

    Parameters
    ----------
    x_a, x_b, a, b, metric, p, dense
        As emd_1d.
    log : bool, default False
        Also return {'G'}.

    Returns
    -------
    float (numpy scalar)
        Exact; for the default "sqeuclidean" this is W_2^2.

    Examples
    --------
    >>> import measattn.ot as ot
    >>> float(ot.emd2_1d([0.0, 1.0], [2.0, 4.0]))
    6.5
    >>> float(ot.emd2_1d([0.0, 1.0], [2.0, 4.0], metric="euclidean"))
    2.5
    """
    rows, cols, mass, cost, dtype, shape = _monotone(x_a, x_b, a, b, metric, p)
    if log:
        if dense:
            G: Any = np.zeros(shape, dtype=dtype)
            np.add.at(G, (rows, cols), mass.astype(dtype))
        else:
            from scipy.sparse import coo_matrix
            G = coo_matrix((mass.astype(dtype), (rows, cols)), shape=shape)
        return _scalar(cost, dtype), {"G": G}
    return _scalar(cost, dtype)


def _w1d_column(u: np.ndarray, v: np.ndarray, uw: Optional[np.ndarray],
                vw: Optional[np.ndarray], p: float) -> float:
    a = np.full(u.shape[0], 1.0 / u.shape[0]) if uw is None else uw
    b = np.full(v.shape[0], 1.0 / v.shape[0]) if vw is None else vw
    _mass_check(a, b)
    r = _measattn.wasserstein(u[:, None], v[:, None], a, b, p=float(p), method="1d",
                              mass="renormalize")
    # W_p^p of the measures with the given (equal) total mass.
    return float(r.cost) * float(np.sum(a))


def wasserstein_1d(u_values: Any, v_values: Any, u_weights: Any = None, v_weights: Any = None,
                   p: float = 1, require_sort: bool = True) -> Any:
    """W_p^p between 1-D samples (POT's ot.wasserstein_1d: the p-th power, no root).

        W_p^p(u, v) = int_0^1 |F_u^-1(t) - F_v^-1(t)|^p dt

    Parameters
    ----------
    u_values : array_like, shape (n,) or (n, k)
    v_values : array_like, shape (m,) or (m, k)
        2-D values give the k costs of the columns.
    u_weights, v_weights : array_like, optional
        Equal totals; None = uniform.
    p : float, default 1
        p >= 1.
    require_sort : bool, default True
        Accepted (the samples are always sorted).

    Returns
    -------
    float (numpy scalar) or numpy.ndarray, shape (k,)
        Exact (the quantile formula), in the dtype of u_values.

    Examples
    --------
    >>> import measattn.ot as ot
    >>> u, v = [0.0, 1.0], [2.0, 4.0]
    >>> float(ot.wasserstein_1d(u, v)), float(ot.wasserstein_1d(u, v, p=2))
    (2.5, 6.5)
    >>> ot.wasserstein_1d(np.array([[0.0, 1.0], [1.0, 2.0]]), np.array([[2.0, 1.0], [4.0, 2.0]]))
    array([2.5, 0. ])

    References
    ----------
    docs/theory.md, "One dimension".
    """
    if not p >= 1:
        raise ValueError(f"p: The OT loss is only valid for p>=1, {p} was given")
    u, v = _np(u_values), _np(v_values)
    dtype = _dtype(u)
    u64, v64 = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    uw = None if u_weights is None else np.asarray(_np(u_weights), dtype=np.float64)
    vw = None if v_weights is None else np.asarray(_np(v_weights), dtype=np.float64)
    if u64.ndim == 1:
        return _scalar(_w1d_column(u64, v64, uw, vw, p), dtype)
    out = np.empty(u64.shape[1], dtype=dtype)
    for k in range(u64.shape[1]):
        cu = None if uw is None else (uw if uw.ndim == 1 else uw[:, k])
        cv = None if vw is None else (vw if vw.ndim == 1 else vw[:, k])
        out[k] = _w1d_column(np.ascontiguousarray(u64[:, k]), np.ascontiguousarray(v64[:, k]),
                             cu, cv, p)
    return out


def _projections(d: int, n_projections: int, seed: Any, dtype: np.dtype) -> np.ndarray:
    """Random unit directions (d, L), drawn as POT's NumPy backend draws them."""
    if isinstance(seed, np.random.RandomState):
        proj = seed.randn(d, n_projections)
    else:
        if seed is not None:
            np.random.seed(seed)
        proj = np.random.randn(d, n_projections)
    proj = proj.astype(dtype, copy=False)
    return proj / np.sqrt(np.sum(proj ** 2, 0, keepdims=True))


def _sliced(X_s: Any, X_t: Any, a: Any, b: Any, n_projections: int, p: float,
            projections: Any, seed: Any) -> Tuple[np.ndarray, np.ndarray, np.dtype]:
    Xs, Xt = _np(X_s), _np(X_t)
    dtype = _dtype(Xs)
    if Xs.shape[1] != Xt.shape[1]:
        raise ValueError(f"X_s and X_t must have the same number of dimensions {Xs.shape[1]} "
                         f"and {Xt.shape[1]} respectively given")
    proj = (_projections(Xs.shape[1], n_projections, seed, dtype) if projections is None
            else _np(projections))
    emds = wasserstein_1d(Xs @ proj, Xt @ proj, a, b, p=p)
    return np.asarray(emds), proj, dtype


def sliced_wasserstein_distance(X_s: Any, X_t: Any, a: Any = None, b: Any = None,
                                n_projections: int = 50, p: float = 2, projections: Any = None,
                                seed: Any = None, log: bool = False) -> Any:
    """The sliced Wasserstein distance (POT's ot.sliced_wasserstein_distance).

        SW_p = ( (1/L) sum_l W_p^p(theta_l#mu, theta_l#nu) )^(1/p)

    over L random unit directions theta_l, drawn exactly as POT's NumPy backend
    draws them (the same directions, and the same value, for the same seed).

    Parameters
    ----------
    X_s : array_like, shape (n, d)
    X_t : array_like, shape (m, d)
    a, b : array_like, optional
        Weights; None = uniform.
    n_projections : int, default 50
    p : float, default 2
    projections : array_like, shape (d, L), optional
        Given directions instead of random ones.
    seed : int or numpy.random.RandomState, optional
    log : bool, default False
        Also return {'projections', 'projected_emds'}.

    Returns
    -------
    float (numpy scalar)
        A Monte Carlo estimate of SW_p (each 1-D term is exact); SW_p <= W_p.

    Examples
    --------
    >>> import measattn.ot as ot
    >>> x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> round(float(ot.sliced_wasserstein_distance(x, x + [1.0, 0.0], seed=0)), 6)
    0.737475

    References
    ----------
    Bonneel, Rabin, Peyre and Pfister (2015); docs/ot.md.
    """
    emds, proj, dtype = _sliced(X_s, X_t, a, b, n_projections, p, projections, seed)
    res = _scalar((np.sum(emds) / emds.shape[0]) ** (1.0 / p), dtype)
    if log:
        return res, {"projections": proj, "projected_emds": emds}
    return res


def max_sliced_wasserstein_distance(X_s: Any, X_t: Any, a: Any = None, b: Any = None,
                                    n_projections: int = 50, p: float = 2,
                                    projections: Any = None, seed: Any = None,
                                    log: bool = False) -> Any:
    """The max-sliced Wasserstein distance over random directions (POT's
    ot.max_sliced_wasserstein_distance).

        max_l W_p(theta_l#mu, theta_l#nu)

    Parameters
    ----------
    X_s, X_t, a, b, n_projections, p, projections, seed, log
        As sliced_wasserstein_distance.

    Returns
    -------
    float (numpy scalar)
        A certified lower bound on W_p(mu, nu) (projections are 1-Lipschitz);
        measattn.wasserstein(..., method="sliced") also searches for the best
        direction and gives an upper bound.

    Examples
    --------
    >>> import measattn.ot as ot
    >>> x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> round(float(ot.max_sliced_wasserstein_distance(x, x + [1.0, 0.0], seed=0)), 6)
    0.999965

    References
    ----------
    Deshpande et al. (2019); docs/theory.md, "Certified bounds".
    """
    emds, proj, dtype = _sliced(X_s, X_t, a, b, n_projections, p, projections, seed)
    res = _scalar(np.max(emds) ** (1.0 / p), dtype)
    if log:
        return res, {"projections": proj, "projected_emds": emds}
    return res


# ---- Sinkhorn ---------------------------------------------------------------------

_METHODS = ("sinkhorn", "sinkhorn_log", "sinkhorn_stabilized", "sinkhorn_epsilon_scaling")


def _run_sinkhorn(an: np.ndarray, Bn: np.ndarray, Mn: np.ndarray, reg: float, log_u0: Any,
                  numItermax: int, stopThr: float, plan: bool) -> List[dict]:
    try:
        return _measattn._transport_sinkhorn(an, Bn, Mn, log_u0, plan, reg=float(reg),
                                             max_iterations=int(numItermax),
                                             tolerance=float(stopThr))
    except ValueError as e:
        raise _renamed(e) from None


def _sinkhorn(a: Any, b: Any, M: Any, reg: float, method: str, numItermax: int,
              stopThr: float, warn: bool, warmstart: Any, plan: bool,
              **kwargs: Any) -> Tuple[List[dict], dict, np.dtype, bool, np.ndarray]:
    method = method.lower()
    if method not in _METHODS:
        raise ValueError("Unknown method '%s'." % method)
    dtype = _dtype(M)
    Mn = _cost(M)
    n, m = Mn.shape
    an = _histogram(a, n)
    bn = _histogram(b, m)
    multi = bn.ndim == 2
    _check_shapes(an, bn, Mn)
    Bn = bn if multi else bn[:, None]
    k = Bn.shape[1]
    # Starting scalings as POT: u = 1/n (sinkhorn, stabilized), log u = 0 (sinkhorn_log);
    # warmstart is (log u, log v) for sinkhorn / sinkhorn_log, (alpha, beta) otherwise.
    log_u0: Any
    if warmstart is not None:
        w0 = np.asarray(_np(warmstart[0]), dtype=np.float64)
        if method in ("sinkhorn_stabilized", "sinkhorn_epsilon_scaling"):
            w0 = w0 / reg - math.log(n)
        log_u0 = w0 if w0.ndim == 2 else w0[:, None]
    elif method == "sinkhorn_log":
        log_u0 = None
    else:
        log_u0 = np.full((n, 1), -math.log(n))
    if method == "sinkhorn_epsilon_scaling":
        # Decreasing regularizations down to reg, each warm-started by the previous
        # potentials (f / reg_t); numInnerItermax iterations per intermediate stage.
        eps0 = float(kwargs.get("epsilon0", 1e4))
        inner = int(kwargs.get("numInnerItermax", 100))
        stages = []
        e = eps0
        while e > reg * 1.5 and len(stages) < 60:
            stages.append(e)
            e /= 4.0
        f0 = None if log_u0 is None else log_u0 * reg
        for e in stages:
            start = None if f0 is None else f0 / e
            rs = _run_sinkhorn(an, Bn, Mn, e, start, inner, stopThr, False)
            f0 = np.stack([r["f"] for r in rs], 1)
            f0 = np.where(np.isfinite(f0), f0, 0.0)
        log_u0 = None if f0 is None else f0 / reg
    results = _run_sinkhorn(an, Bn, Mn, reg, log_u0, numItermax, stopThr, plan and not multi)
    if warn and any(r["status"] != "converged" for r in results):
        warnings.warn(_NOT_CONVERGED)
    with np.errstate(over="ignore", under="ignore", divide="ignore"):
        lu = np.stack([r["f"] for r in results], 1) / reg
        lv = np.stack([r["g"] for r in results], 1) / reg
    if not multi:
        lu, lv = lu[:, 0], lv[:, 0]
    errs = [float(e) for e in results[0]["errors"]] if k == 1 else [
        float(np.sqrt(sum(r["errors"][min(t, len(r["errors"]) - 1)] ** 2 for r in results)))
        for t in range(max(len(r["errors"]) for r in results))]
    niter = max(int(r["iterations"]) for r in results) - 1
    with np.errstate(over="ignore", under="ignore"):
        u, v = np.exp(lu), np.exp(lv)
    if method == "sinkhorn":
        lg = {"err": errs, "niter": niter, "u": u, "v": v}
    elif method == "sinkhorn_log":
        lg = {"err": errs, "niter": niter, "log_u": lu, "log_v": lv, "u": u, "v": v}
    elif method == "sinkhorn_stabilized":
        alpha, beta = reg * lu, reg * lv
        lg = {"err": errs, "n_iter": niter, "logu": np.zeros_like(lu), "logv": np.zeros_like(lv),
              "alpha": alpha, "beta": beta}
    else:
        alpha, beta = reg * lu, reg * lv
        lg = {"err": errs, "niter": niter, "alpha": alpha, "beta": beta}
    for key, val in list(lg.items()):
        if isinstance(val, np.ndarray):
            lg[key] = val.astype(dtype, copy=False)
    lg["warmstart"] = (lg["alpha"], lg["beta"]) if "alpha" in lg else None
    if lg["warmstart"] is None:
        del lg["warmstart"]
    costs = np.array([r["cost"] for r in results], dtype=dtype)
    return results, lg, dtype, multi, costs


def sinkhorn(a: Any, b: Any, M: Any, reg: float, method: str = "sinkhorn",
             numItermax: int = 1000, stopThr: float = 1e-9, verbose: bool = False,
             log: bool = False, warn: bool = True, warmstart: Any = None,
             **kwargs: Any) -> Any:
    """Entropic optimal transport plan (POT's ot.sinkhorn).

        G = argmin_{G in Pi(a, b)} <G, M> + reg sum_ij G_ij log G_ij
          = diag(u) exp(-M / reg) diag(v)

    Parameters
    ----------
    a : array_like, shape (n,)
    b : array_like, shape (m,) or (m, k)
        A 2-D b gives the k transport costs <G_k, M> instead of a plan (as POT).
    M : array_like, shape (n, m)
    reg : float
        reg > 0, in the units of M.
    method : {"sinkhorn", "sinkhorn_log", "sinkhorn_stabilized", "sinkhorn_epsilon_scaling"}
        The same fixed point, computed by one stabilized solver (docs/ot.md).
    numItermax : int, default 1000
    stopThr : float, default 1e-9
        Stop when ||G^T 1 - b||_2 < stopThr (POT's rule).
    verbose : bool
        Accepted.
    log : bool, default False
        Also return POT's log keys ('err', 'niter', 'u', 'v'; 'log_u', 'log_v';
        'alpha', 'beta', 'warmstart' by method).
    warn : bool, default True
        Warn when numItermax is reached.
    warmstart : (log u, log v) or (alpha, beta), optional

    Returns
    -------
    numpy.ndarray, shape (n, m)
        The entropic plan (an estimate: its marginals match a exactly and b to
        stopThr), in the dtype of M.

    Examples
    --------
    >>> import measattn.ot as ot
    >>> ot.sinkhorn([0.5, 0.5], [0.5, 0.5], [[0.0, 1.0], [1.0, 0.0]], 1.0)
    array([[0.365529, 0.134471],
           [0.134471, 0.365529]])

    References
    ----------
    Cuturi, "Sinkhorn distances" (2013); Schmitzer (2019); docs/ot.md;
    docs/theory.md, "Entropic OT (Sinkhorn)".
    """
    results, lg, dtype, multi, costs = _sinkhorn(a, b, M, reg, method, numItermax, stopThr,
                                                 warn, warmstart, True, **kwargs)
    out = costs if multi else results[0]["plan"].astype(dtype, copy=False)
    return (out, lg) if log else out


def sinkhorn2(a: Any, b: Any, M: Any, reg: float, method: str = "sinkhorn",
              numItermax: int = 1000, stopThr: float = 1e-9, verbose: bool = False,
              log: bool = False, warn: bool = True, warmstart: Any = None,
              **kwargs: Any) -> Any:
    """The transport cost of the entropic plan (POT's ot.sinkhorn2).

        <G, M>,   G = sinkhorn(a, b, M, reg)

    Parameters
    ----------
    a, b, M, reg, method, numItermax, stopThr, verbose, log, warn, warmstart
        As sinkhorn; a 2-D b (m, k) gives k costs.

    Returns
    -------
    float (numpy scalar) or numpy.ndarray, shape (k,)
        An estimate of the unregularized cost min <G, M> (within about
        reg log(n m) of it at convergence); measattn.wasserstein(...,
        method="sinkhorn") also gives certified bounds.

    Examples
    --------
    >>> import measattn.ot as ot
    >>> M = [[0.0, 1.0], [1.0, 0.0]]
    >>> round(float(ot.sinkhorn2([0.5, 0.5], [0.5, 0.5], M, 1.0)), 6)
    0.268941
    >>> ot.sinkhorn2([0.5, 0.5], np.array([[0.5, 1.0], [0.5, 0.0]]), M, 1.0)
    array([0.268941, 0.5     ])
    """
    results, lg, dtype, multi, costs = _sinkhorn(a, b, M, reg, method, numItermax, stopThr,
                                                 warn, warmstart, False, **kwargs)
    out = costs if multi else _scalar(costs[0], dtype)
    return (out, lg) if log else out


def sinkhorn_knopp(a: Any, b: Any, M: Any, reg: float, numItermax: int = 1000,
                   stopThr: float = 1e-9, verbose: bool = False, log: bool = False,
                   warn: bool = True, warmstart: Any = None, **kwargs: Any) -> Any:
    """ot.sinkhorn(..., method='sinkhorn').

    Examples
    --------
    >>> import measattn.ot as ot
    >>> ot.sinkhorn_knopp([0.5, 0.5], [0.5, 0.5], [[0.0, 1.0], [1.0, 0.0]], 1.0)[0]
    array([0.365529, 0.134471])
    """
    return sinkhorn(a, b, M, reg, "sinkhorn", numItermax, stopThr, verbose, log, warn,
                    warmstart, **kwargs)


def sinkhorn_log(a: Any, b: Any, M: Any, reg: float, numItermax: int = 1000,
                 stopThr: float = 1e-9, verbose: bool = False, log: bool = False,
                 warn: bool = True, warmstart: Any = None, **kwargs: Any) -> Any:
    """ot.sinkhorn(..., method='sinkhorn_log').

    Examples
    --------
    >>> import measattn.ot as ot
    >>> G, log = ot.sinkhorn_log([0.5, 0.5], [0.5, 0.5], [[0.0, 1.0], [1.0, 0.0]], 1.0, log=True)
    >>> G[0], sorted(log)
    (array([0.365529, 0.134471]), ['err', 'log_u', 'log_v', 'niter', 'u', 'v'])
    """
    return sinkhorn(a, b, M, reg, "sinkhorn_log", numItermax, stopThr, verbose, log, warn,
                    warmstart, **kwargs)


def sinkhorn_stabilized(a: Any, b: Any, M: Any, reg: float, numItermax: int = 1000,
                        tau: float = 1e3, stopThr: float = 1e-9, warmstart: Any = None,
                        verbose: bool = False, print_period: int = 20, log: bool = False,
                        warn: bool = True, **kwargs: Any) -> Any:
    """ot.sinkhorn(..., method='sinkhorn_stabilized'); tau is not used (absorption is
    automatic).

    Examples
    --------
    >>> import measattn.ot as ot
    >>> ot.sinkhorn_stabilized([0.5, 0.5], [0.5, 0.5], [[0.0, 1.0], [1.0, 0.0]], 1.0)[0]
    array([0.365529, 0.134471])
    """
    return sinkhorn(a, b, M, reg, "sinkhorn_stabilized", numItermax, stopThr, verbose, log,
                    warn, warmstart, **kwargs)


def sinkhorn_epsilon_scaling(a: Any, b: Any, M: Any, reg: float, numItermax: int = 100,
                             epsilon0: float = 1e4, numInnerItermax: int = 100,
                             tau: float = 1e3, stopThr: float = 1e-9, warmstart: Any = None,
                             verbose: bool = False, print_period: int = 10,
                             log: bool = False, warn: bool = True, **kwargs: Any) -> Any:
    """ot.sinkhorn(..., method='sinkhorn_epsilon_scaling'): decreasing
    regularizations from epsilon0 down to reg, each warm-started by the previous
    potentials.

    Examples
    --------
    >>> import measattn.ot as ot
    >>> ot.sinkhorn_epsilon_scaling([0.5, 0.5], [0.5, 0.5], [[0.0, 1.0], [1.0, 0.0]], 1.0)[0]
    array([0.365529, 0.134471])
    """
    return sinkhorn(a, b, M, reg, "sinkhorn_epsilon_scaling", numItermax, stopThr, verbose,
                    log, warn, warmstart, epsilon0=epsilon0, numInnerItermax=numInnerItermax,
                    **kwargs)


def empirical_sinkhorn2(X_s: Any, X_t: Any, reg: float, a: Any = None, b: Any = None,
                        metric: str = "sqeuclidean", numIterMax: int = 10000,
                        stopThr: float = 1e-9, isLazy: bool = False, batchSize: Any = 100,
                        verbose: bool = False, log: bool = False, warn: bool = True,
                        **kwargs: Any) -> Any:
    """sinkhorn2 on the cost matrix of two samples (POT's
    ot.bregman.empirical_sinkhorn2).

        <G, M>,   M = dist(X_s, X_t, metric),   G = sinkhorn(a, b, M, reg)

    Parameters
    ----------
    X_s : array_like, shape (n, d)
    X_t : array_like, shape (m, d)
    reg : float
    a, b : array_like, optional
        None = uniform.
    metric : str, default "sqeuclidean"
    numIterMax : int, default 10000
    stopThr : float, default 1e-9
    isLazy : bool, default False
        True (with metric "sqeuclidean" or "euclidean" and log=False): the kernel is
        never stored, O(n + m) memory: measattn.wasserstein(method="sinkhorn",
        multiscale=True) for d <= 8 (grid cells, coarse-to-fine epsilon scaling,
        truncation with a bound of 1e-12 on the neglected mass), online=True above.
        Otherwise the cost matrix and the kernel are stored.
    batchSize, verbose
        Accepted and not used.
    log, warn
        As sinkhorn2.

    Returns
    -------
    float (numpy scalar)
        An estimate of the transport cost (see sinkhorn2).

    Examples
    --------
    >>> import measattn.ot as ot
    >>> x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> round(float(ot.bregman.empirical_sinkhorn2(x, x + [1.0, 0.0], 1.0)), 6)
    1.423487
    """
    if isLazy and not log and metric in ("sqeuclidean", "euclidean"):
        xs, xt = np.asarray(X_s), np.asarray(X_t)
        if xs.ndim != 2 or xt.ndim != 2 or xs.shape[1] != xt.shape[1]:
            raise ValueError("X_s, X_t: must be 2-D arrays with the same number of columns")
        dtype = np.result_type(xs.dtype, xt.dtype, np.float32)
        wa = np.full(len(xs), 1.0 / len(xs)) if a is None else np.asarray(a, dtype=np.float64)
        wb = np.full(len(xt), 1.0 / len(xt)) if b is None else np.asarray(b, dtype=np.float64)
        lazy = dict(online=True) if xs.shape[1] > 8 else dict(multiscale=True)
        r = _measattn.wasserstein(np.asarray(xs, dtype=np.float64),
                                  np.asarray(xt, dtype=np.float64), wa, wb,
                                  p=2.0 if metric == "sqeuclidean" else 1.0, method="sinkhorn",
                                  reg=float(reg), tolerance=float(stopThr),
                                  max_iterations=int(numIterMax), **lazy)
        if warn and r.status == "iteration_limit":
            warnings.warn(_NOT_CONVERGED)
        return np.asarray(r.transport_cost, dtype=dtype)[()]
    M = dist(X_s, X_t, metric=metric)
    n, m = M.shape
    a = np.full(n, 1.0 / n, dtype=M.dtype) if a is None else a
    b = np.full(m, 1.0 / m, dtype=M.dtype) if b is None else b
    return sinkhorn2(a, b, M, reg, numItermax=numIterMax, stopThr=stopThr, verbose=verbose,
                     log=log, warn=warn, **kwargs)


class _Namespace:
    """ot.bregman / ot.lp: the same functions under POT's submodule names."""

    def __init__(self, names: Sequence[str]) -> None:
        for name in names:
            setattr(self, name, globals()[name])


bregman = _Namespace(["sinkhorn", "sinkhorn2", "sinkhorn_knopp", "sinkhorn_log",
                      "sinkhorn_stabilized", "sinkhorn_epsilon_scaling", "empirical_sinkhorn2"])
lp = _Namespace(["emd", "emd2", "emd_1d", "emd2_1d", "wasserstein_1d", "center_ot_dual"])
