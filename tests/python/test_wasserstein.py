"""measattn wasserstein (CLI) against POT (ot.emd2, ot.sinkhorn2) and SciPy.

POT's ot.emd2 returns the optimal transport cost sum_ij pi_ij M_ij, i.e. W_p^p for
M = ||x - y||^p; measattn's "value" is W_p and "cost" is W_p^p. ot.sinkhorn2
returns <P, M> of the unrounded Sinkhorn plan: measattn's "transport_cost".
"""
import json

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats

from conftest import run_cli, save_npy

ot = pytest.importorskip("ot")


def wasserstein(tmp_path, x, y, a=None, b=None, *extra):
    args = ["wasserstein", save_npy(tmp_path / "x.npy", x), save_npy(tmp_path / "y.npy", y)]
    if a is not None:
        args += ["--wa", save_npy(tmp_path / "a.npy", a)]
    if b is not None:
        args += ["--wb", save_npy(tmp_path / "b.npy", b)]
    proc = run_cli(args + list(extra) + ["--json"], check=True)
    return json.loads(proc.stdout)


def cost_matrix(x, y, p):
    # scipy's cdist takes differences first; ot.dist(metric="euclidean") uses
    # ||x||^2 + ||y||^2 - 2 x.y, whose rounding gives ~1e-8 instead of 0 for
    # coincident atoms and would move the optimum by more than 1e-9.
    return scipy.spatial.distance.cdist(x, y) ** p


def random_instance(rng, n, m, d, weighted, kind="normal"):
    x = rng.normal(size=(n, d))
    y = rng.normal(size=(m, d)) + 0.3
    if kind == "duplicates":
        x[n // 2:] = x[: n - n // 2]
        y[: m // 3] = x[: m // 3]  # coincident atoms across the measures
    elif kind == "far":
        x[0] += 1e4
        y[-1] -= 1e4
    a = rng.random(n) + 0.01 if weighted else np.full(n, 1.0 / n)
    b = rng.random(m) + 0.01 if weighted else np.full(m, 1.0 / m)
    return x, y, a / a.sum(), b / b.sum()


CASES = [  # n, m, d, p, weighted, kind
    (1, 1, 1, 1, False, "normal"),
    (1, 7, 3, 2, True, "normal"),
    (9, 1, 16, 1, True, "normal"),
    (13, 29, 2, 1, True, "duplicates"),
    (50, 50, 5, 2, False, "normal"),
    (120, 80, 16, 1, True, "far"),
    (300, 250, 3, 1.5, True, "duplicates"),
    (700, 900, 8, 1, True, "normal"),
    (2000, 1500, 4, 2, True, "normal"),
    (2000, 2000, 8, 1, False, "duplicates"),
]


@pytest.mark.parametrize("n,m,d,p,weighted,kind", CASES)
def test_exact_matches_pot_emd2(tmp_path, n, m, d, p, weighted, kind):
    rng = np.random.default_rng(n * 7 + m + d)
    x, y, a, b = random_instance(rng, n, m, d, weighted, kind)
    ref = ot.emd2(a, b, cost_matrix(x, y, p), numItermax=10**8)
    out = wasserstein(tmp_path, x, y, a, b, "--p", p, "--method", "exact")
    assert out["status"] == "optimal"
    assert out["kind"] == "exact"
    assert out["lower"] == out["value"] == out["upper"]
    assert out["cost"] == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert out["value"] == pytest.approx(ref ** (1.0 / p), rel=1e-9, abs=1e-12)


def test_exact_plan_is_feasible_and_optimal(tmp_path):
    rng = np.random.default_rng(3)
    x, y, a, b = random_instance(rng, 40, 30, 3, True)
    plan_path = tmp_path / "plan.npy"
    out = wasserstein(tmp_path, x, y, a, b, "--plan", plan_path)
    plan = np.load(plan_path)
    assert plan.shape == (40, 30)
    np.testing.assert_allclose(plan.sum(axis=1), a, atol=1e-14)
    np.testing.assert_allclose(plan.sum(axis=0), b, atol=1e-14)
    M = cost_matrix(x, y, 1)
    assert (plan * M).sum() == pytest.approx(ot.emd2(a, b, M), rel=1e-12)
    assert out["marginal_error"] < 1e-13


def test_one_d_matches_scipy_at_a_million_points(tmp_path):
    rng = np.random.default_rng(4)
    n = 10**6
    x = rng.normal(size=n)
    y = rng.exponential(size=n - 1234)
    wa = rng.random(n)
    ref = scipy.stats.wasserstein_distance(x, y)
    out = wasserstein(tmp_path, x[:, None], y[:, None], None, None, "--method", "1d")
    assert out["value"] == pytest.approx(ref, rel=1e-9)
    ref_w = scipy.stats.wasserstein_distance(x, y, wa)
    # SciPy renormalizes unnormalized weights; measattn does so only when asked.
    out_w = wasserstein(tmp_path, x[:, None], y[:, None], wa, None, "--method", "1d",
                        "--mass", "renormalize")
    assert out_w["value"] == pytest.approx(ref_w, rel=1e-9)


@pytest.mark.parametrize("p", [1, 2, 3])
def test_one_d_matches_pot_for_p(tmp_path, p):
    rng = np.random.default_rng(5 + p)
    x, y, a, b = random_instance(rng, 300, 200, 1, True)
    ref = ot.emd2(a, b, cost_matrix(x, y, p))
    out = wasserstein(tmp_path, x, y, a, b, "--p", p, "--method", "1d")
    assert out["value"] == pytest.approx(ref ** (1.0 / p), rel=1e-9)


@pytest.mark.parametrize("n,reg,p", [(200, 0.5, 1), (600, 0.2, 1), (400, 0.3, 2)])
def test_sinkhorn_matches_pot_sinkhorn2(tmp_path, n, reg, p):
    rng = np.random.default_rng(n)
    x, y, a, b = random_instance(rng, n, n - 50, 4, True)
    M = cost_matrix(x, y, p)
    tol = 1e-9
    ref = ot.sinkhorn2(a, b, M, reg, stopThr=tol, numItermax=100000)
    out = wasserstein(tmp_path, x, y, a, b, "--p", p, "--method", "sinkhorn", "--reg", reg,
                      "--tol", tol, "--max-iter", 100000)
    assert out["status"] == "converged"
    assert out["kind"] == "estimate"
    # Same fixed point; both stop at ||P^T 1 - b|| < tol, so agree to ~tol * max(M).
    assert out["transport_cost"] == pytest.approx(float(ref), rel=1e-7)
    exact = ot.emd2(a, b, M)
    assert out["rounded_cost"] >= exact - 1e-12          # certified upper bound on W_p^p
    assert out["lower"] ** p <= exact + 1e-12            # certified lower bound
    assert out["upper"] == pytest.approx(out["rounded_cost"] ** (1.0 / p))


def test_sliced_bounds_bracket_pot(tmp_path):
    rng = np.random.default_rng(6)
    for d in (2, 5, 10):
        x, y, a, b = random_instance(rng, 150, 120, d, True)
        ref = ot.emd2(a, b, cost_matrix(x, y, 1))
        out = wasserstein(tmp_path, x, y, a, b, "--method", "sliced")
        assert out["kind"] == "lower" and out["status"] == "bounds_only"
        assert out["lower"] <= ref + 1e-12 <= out["upper"] + 2e-12
        mean_gap = np.linalg.norm(a @ x - b @ y)
        assert out["lower"] >= mean_gap - 1e-12


def test_human_output(tmp_path):
    x = np.array([[0.0], [1.0]])
    proc = run_cli(["wasserstein", save_npy(tmp_path / "x.npy", x),
                    save_npy(tmp_path / "y.npy", x + 2)], check=True)
    assert "value" in proc.stdout and "2" in proc.stdout and "exact" in proc.stdout


def _expect_bad(args, needle):
    proc = run_cli(["wasserstein"] + [str(a) for a in args])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0], lines[0]


def test_bad_input_exits_2_with_one_line(tmp_path):
    x2 = save_npy(tmp_path / "x2.npy", np.zeros((4, 2)))
    x3 = save_npy(tmp_path / "x3.npy", np.zeros((4, 3)))
    nan = save_npy(tmp_path / "nan.npy", np.array([[0.0, np.nan]]))
    empty = save_npy(tmp_path / "empty.npy", np.zeros((0, 2)))
    neg = save_npy(tmp_path / "neg.npy", np.array([1.0, -1.0, 1.0, 1.0]))
    short = save_npy(tmp_path / "short.npy", np.array([1.0, 1.0]))
    _expect_bad([x2, x3], "dimension")
    _expect_bad([x2, nan], "nan.npy")
    _expect_bad([x2, empty], "empty.npy")
    _expect_bad([x2, x2, "--wa", neg], "--wa")
    _expect_bad([x2, x2, "--wb", short], "--wb")
    _expect_bad([x2, x2, "--p", 0.5], "--p")
    _expect_bad([x2, x2, "--method", "sinkhorn", "--reg", 0], "--reg")
    _expect_bad([x2, x2, "--method", "1d"], "--method")
    _expect_bad([x2, x2, "--method", "nope"], "--method")
    _expect_bad([x2, tmp_path / "missing.npy"], "missing.npy")
