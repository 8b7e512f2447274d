"""measattn.ot against POT 0.8.2 (Debian's python3-pot): the examples of POT's
documentation and random instances (general, non-metric and negative cost matrices),
dtypes, warm starts, iteration caps and several target histograms."""
import warnings

import numpy as np
import pytest

ot = pytest.importorskip("ot")
import measattn.ot as mot  # noqa: E402


def histogram(rng, n):
    w = rng.random(n) + 0.05
    return w / w.sum()


# ---- the examples of POT's documentation -----------------------------------------

def test_documentation_examples():
    a, b, M = [.5, .5], [.5, .5], [[0., 1.], [1., 0.]]
    np.testing.assert_array_equal(mot.emd(a, b, M), [[0.5, 0.0], [0.0, 0.5]])
    assert mot.emd2(a, b, M) == 0.0
    np.testing.assert_allclose(mot.sinkhorn(a, b, M, 1), [[0.36552929, 0.13447071],
                                                          [0.13447071, 0.36552929]], atol=1e-8)
    assert mot.sinkhorn2(a, b, M, 1) == pytest.approx(0.26894142, abs=1e-8)
    x_a, x_b = [2., 0.], [0., 3.]
    np.testing.assert_array_equal(mot.emd_1d(x_a, x_b, a, b), [[0., 0.5], [0.5, 0.]])
    assert mot.emd2_1d(x_a, x_b, a, b) == 0.5
    assert mot.emd2_1d(x_a, x_b) == 0.5
    X_s = np.reshape(np.arange(2, dtype=np.float64), (2, 1))
    X_t = np.reshape(np.arange(0, 2, dtype=np.float64), (2, 1))
    assert mot.bregman.empirical_sinkhorn2(X_s, X_t, 0.1) == pytest.approx(
        ot.bregman.empirical_sinkhorn2(X_s, X_t, 0.1), rel=1e-12)
    np.testing.assert_array_equal(mot.unif(4), ot.unif(4))


# ---- exact --------------------------------------------------------------------------

@pytest.mark.parametrize("n,m,kind", [(8, 8, "normal"), (60, 45, "uniform"),
                                      (300, 200, "normal"), (400, 500, "metric")])
def test_emd_matches_pot_on_random_costs(n, m, kind):
    rng = np.random.default_rng(n + m)
    a, b = histogram(rng, n), histogram(rng, m)
    if kind == "normal":
        M = rng.normal(size=(n, m))  # negative and non-metric
    elif kind == "uniform":
        M = rng.random((n, m))
    else:
        M = ot.dist(rng.normal(size=(n, 3)), rng.normal(size=(m, 3)))
    G0, log0 = ot.emd(a, b, M, log=True)
    G1, log1 = mot.emd(a, b, M, log=True)
    assert log1["cost"] == pytest.approx(log0["cost"], rel=1e-12, abs=1e-14)
    np.testing.assert_allclose(G1, G0, atol=1e-12)  # unique plan for generic costs
    assert log1["result_code"] == 1 and log1["warning"] is None
    # Duals: feasible, optimal, centred as POT's (unique up to a constant here).
    assert np.all(log1["u"][:, None] + log1["v"][None, :] <= M + 1e-10)
    assert a @ log1["u"] + b @ log1["v"] == pytest.approx(log1["cost"], rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(log1["u"], log0["u"], atol=1e-9)
    np.testing.assert_allclose(log1["v"], log0["v"], atol=1e-9)
    assert mot.emd2(a, b, M) == pytest.approx(ot.emd2(a, b, M), rel=1e-12, abs=1e-14)


def test_emd_uniform_defaults_zero_weights_and_unnormalized_equal_mass():
    rng = np.random.default_rng(3)
    M = rng.random((30, 20))
    assert mot.emd2([], [], M) == pytest.approx(ot.emd2([], [], M), rel=1e-12)
    a, b = histogram(rng, 30), histogram(rng, 20)
    a[[2, 7]] = 0
    b[5] = 0
    a /= a.sum()
    b /= b.sum()
    np.testing.assert_allclose(mot.emd(a, b, M), ot.emd(a, b, M), atol=1e-13)
    # Equal totals other than 1: the plan carries that mass (as POT).
    G = mot.emd(3 * a, 3 * b, M)
    np.testing.assert_allclose(G.sum(1), 3 * a, atol=1e-12)
    np.testing.assert_allclose(G, ot.emd(3 * a, 3 * b, M), atol=1e-12)


def test_emd_refuses_different_totals_naming_both():
    M = np.ones((3, 2))
    with pytest.raises(ValueError, match=r"a sums to 1\b.*b sums to 2"):
        mot.emd(np.ones(3) / 3, np.ones(2), M)
    with pytest.raises(ValueError, match=r"Dimension mismatch"):
        mot.emd(np.ones(2) / 2, np.ones(2) / 2, M)
    with pytest.raises(ValueError, match=r"^M: entry \(0, 1\) is not finite"):
        mot.emd2([], [], [[0.0, np.inf], [1.0, 0.0]])


def test_emd2_several_histograms_and_return_matrix():
    rng = np.random.default_rng(4)
    n, m, k = 40, 30, 4
    a = histogram(rng, n)
    B = rng.random((m, k))
    B /= B.sum(0)
    M = rng.normal(size=(n, m))
    np.testing.assert_allclose(mot.emd2(a, B, M), ot.emd2(a, B, M), rtol=1e-12, atol=1e-14)
    cost, lg = mot.emd2(a, B[:, 0].copy(), M, return_matrix=True)
    assert cost == pytest.approx(np.sum(lg["G"] * M), rel=1e-12)
    assert set(lg) == set(ot.emd2(a, B[:, 0].copy(), M, return_matrix=True)[1])


def test_emd_warm_start_through_potentials_init():
    rng = np.random.default_rng(5)
    a, b, M = histogram(rng, 50), histogram(rng, 40), rng.random((50, 40))
    G, lg = mot.emd(a, b, M, log=True)
    G2, lg2 = mot.emd(a, b, M, log=True, potentials_init=(lg["u"], lg["v"]))
    np.testing.assert_allclose(G2, G, atol=1e-13)
    assert lg2["cost"] == pytest.approx(lg["cost"], rel=1e-13)


def test_emd_float32_in_float32_out():
    rng = np.random.default_rng(6)
    a, b, M = histogram(rng, 20), histogram(rng, 15), rng.random((20, 15))
    G, lg = mot.emd(a.astype(np.float32), b.astype(np.float32), M, log=True)
    assert G.dtype == np.float32 and lg["u"].dtype == np.float32
    assert lg["cost"].dtype == np.float32
    assert mot.emd2(a.astype(np.float32), b, M).dtype == np.float32
    assert mot.emd(a, b, M.astype(np.float32)).dtype == np.float64  # type_as = a (as POT)


# ---- Sinkhorn -------------------------------------------------------------------------

METHODS = ["sinkhorn", "sinkhorn_log", "sinkhorn_stabilized", "sinkhorn_epsilon_scaling"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n,m,reg", [(50, 40, 0.05), (200, 300, 0.1), (120, 90, 1.0)])
def test_sinkhorn_matches_pot(method, n, m, reg):
    rng = np.random.default_rng(n * m)
    a, b, M = histogram(rng, n), histogram(rng, m), rng.random((n, m))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        G0, l0 = ot.sinkhorn(a, b, M, reg, method=method, log=True)
    G1, l1 = mot.sinkhorn(a, b, M, reg, method=method, log=True)
    np.testing.assert_allclose(G1, G0, atol=1e-9)
    assert set(l1) == set(l0)
    assert mot.sinkhorn2(a, b, M, reg, method=method) == pytest.approx(
        float(np.sum(G0 * M)), rel=1e-7)
    if method in ("sinkhorn", "sinkhorn_log"):
        # Same iteration, same checks: the same number of iterations and scalings.
        assert l1["niter"] == l0["niter"]
        np.testing.assert_allclose(l1["u"], l0["u"], rtol=1e-9)
        np.testing.assert_allclose(l1["v"], l0["v"], rtol=1e-9)
        np.testing.assert_allclose(l1["err"], l0["err"], rtol=1e-6, atol=1e-15)
    else:
        # Potentials are unique up to alpha + c, beta - c.
        c = np.mean(l1["alpha"] - l0["alpha"])
        np.testing.assert_allclose(l1["alpha"] - c, l0["alpha"], atol=1e-6 * max(1, reg))
        np.testing.assert_allclose(l1["beta"] + c, l0["beta"], atol=1e-6 * max(1, reg))


@pytest.mark.parametrize("method", ["sinkhorn", "sinkhorn_log"])
def test_sinkhorn_iteration_cap_warns_as_pot_and_gives_the_same_iterate(method):
    rng = np.random.default_rng(8)
    a, b, M = histogram(rng, 60), histogram(rng, 50), rng.random((60, 50))
    for cap in (1, 3, 17):
        with pytest.warns(UserWarning) as rec0:
            G0, l0 = ot.sinkhorn(a, b, M, 0.01, method=method, numItermax=cap, log=True)
        with pytest.warns(UserWarning) as rec1:
            G1, l1 = mot.sinkhorn(a, b, M, 0.01, method=method, numItermax=cap, log=True)
        assert [str(w.message) for w in rec1] == [str(w.message) for w in rec0]
        assert l1["niter"] == l0["niter"] == cap - 1
        np.testing.assert_allclose(G1, G0, rtol=1e-9, atol=1e-15)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mot.sinkhorn(a, b, M, 0.01, method=method, numItermax=3, warn=False)


@pytest.mark.parametrize("stop", [1e-3, 1e-6, 1e-12])
def test_sinkhorn_stop_threshold(stop):
    rng = np.random.default_rng(9)
    a, b, M = histogram(rng, 70), histogram(rng, 80), rng.random((70, 80))
    G0, l0 = ot.sinkhorn(a, b, M, 0.05, stopThr=stop, log=True, numItermax=100000)
    G1, l1 = mot.sinkhorn(a, b, M, 0.05, stopThr=stop, log=True, numItermax=100000)
    assert l1["niter"] == l0["niter"]
    assert l1["err"][-1] < stop
    np.testing.assert_allclose(G1, G0, rtol=1e-8, atol=1e-15)


def test_sinkhorn_several_histograms():
    rng = np.random.default_rng(10)
    n, m, k = 50, 40, 3
    a, M = histogram(rng, n), rng.random((n, m))
    B = rng.random((m, k))
    B /= B.sum(0)
    for method in ("sinkhorn", "sinkhorn_log"):
        c0 = ot.sinkhorn2(a, B, M, 0.1, method=method)
        c1 = mot.sinkhorn2(a, B, M, 0.1, method=method)
        assert c1.shape == (k,)
        np.testing.assert_allclose(c1, c0, rtol=1e-8)
        np.testing.assert_allclose(mot.sinkhorn(a, B, M, 0.1, method=method), c0, rtol=1e-8)
    _, lg = mot.sinkhorn2(a, B, M, 0.1, log=True)
    assert lg["u"].shape == (n, k) and lg["v"].shape == (m, k)


def test_sinkhorn_warm_start():
    rng = np.random.default_rng(11)
    a, b, M = histogram(rng, 80), histogram(rng, 70), rng.random((80, 70))
    G, lg = mot.sinkhorn(a, b, M, 0.02, method="sinkhorn_log", log=True, numItermax=100000)
    G2, lg2 = mot.sinkhorn(a, b, M, 0.02, method="sinkhorn_log", log=True,
                           warmstart=(lg["log_u"], lg["log_v"]))
    assert lg2["niter"] == 0  # converged at the first check
    np.testing.assert_allclose(G2, G, atol=1e-10)
    _, ls = mot.sinkhorn(a, b, M, 0.02, method="sinkhorn_stabilized", log=True)
    _, ls2 = mot.sinkhorn(a, b, M, 0.02, method="sinkhorn_stabilized", log=True,
                          warmstart=ls["warmstart"])
    assert ls2["n_iter"] == 0
    # The same warm start as POT's stabilized solver: the same plan.
    G0 = ot.sinkhorn(a, b, M, 0.02, method="sinkhorn_stabilized", warmstart=ls["warmstart"])
    np.testing.assert_allclose(mot.sinkhorn(a, b, M, 0.02, method="sinkhorn_stabilized",
                                            warmstart=ls["warmstart"]), G0, atol=1e-9)


def test_sinkhorn_small_reg_stays_finite():
    rng = np.random.default_rng(12)
    a, b, M = histogram(rng, 40), histogram(rng, 30), 100 * rng.random((40, 30))
    # exp(-M / reg) underflows to 0 everywhere (M / reg up to 1e5): the kernel-based
    # solver of POT returns NaN here; the stabilized iteration keeps the rows exact.
    with pytest.warns(UserWarning, match="did not converge"):
        G, lg = mot.sinkhorn(a, b, M, 1e-3, method="sinkhorn_log", log=True, numItermax=200)
    assert np.all(np.isfinite(G)) and np.all(np.isfinite(lg["log_u"]))
    np.testing.assert_allclose(G.sum(1), a, rtol=1e-12)
    assert lg["err"][-1] < lg["err"][0]


def test_sinkhorn_float32_in_float32_out():
    rng = np.random.default_rng(13)
    a, b, M = histogram(rng, 30), histogram(rng, 20), rng.random((30, 20))
    f32 = [x.astype(np.float32) for x in (a, b, M)]
    G, lg = mot.sinkhorn(*f32, 0.1, log=True)
    assert G.dtype == np.float32 and lg["u"].dtype == np.float32 and lg["v"].dtype == np.float32
    assert mot.sinkhorn2(*f32, 0.1).dtype == np.float32
    np.testing.assert_allclose(G, ot.sinkhorn(*f32, 0.1), rtol=2e-4, atol=1e-7)
    assert mot.sinkhorn(a, b, M, 0.1).dtype == np.float64


def test_sinkhorn_errors():
    M = np.ones((3, 2))
    with pytest.raises(ValueError, match="Unknown method"):
        mot.sinkhorn([], [], M, 1, method="bogus")
    with pytest.raises(ValueError, match=r"mass: .*sums to 1\b.*sums to 3"):
        mot.sinkhorn(np.ones(3) / 3, np.ones(2) * 1.5, M, 1)
    with pytest.raises(ValueError, match="reg"):
        mot.sinkhorn([], [], M, 0)


# ---- 1-D and sliced -------------------------------------------------------------------

@pytest.mark.parametrize("metric,p", [("sqeuclidean", 1), ("euclidean", 1), ("cityblock", 1),
                                      ("minkowski", 3)])
def test_one_d_matches_pot(metric, p):
    rng = np.random.default_rng(14)
    x, y = rng.normal(size=50), rng.exponential(size=70)
    a, b = histogram(rng, 50), histogram(rng, 70)
    assert mot.emd2_1d(x, y, a, b, metric=metric, p=p) == pytest.approx(
        ot.emd2_1d(x, y, a, b, metric=metric, p=p), rel=1e-12)
    np.testing.assert_allclose(mot.emd_1d(x, y, a, b, metric=metric, p=p),
                               ot.emd_1d(x, y, a, b, metric=metric, p=p), atol=1e-15)
    G, lg = mot.emd_1d(x, y, a, b, metric=metric, p=p, log=True)
    assert lg["cost"] == pytest.approx(ot.emd_1d(x, y, a, b, metric=metric, p=p,
                                                 log=True)[1]["cost"], rel=1e-12)
    sp = mot.emd_1d(x, y, a, b, metric=metric, p=p, dense=False)
    np.testing.assert_allclose(sp.toarray(), G, atol=1e-16)


@pytest.mark.parametrize("p", [1, 2, 1.5])
def test_wasserstein_1d_matches_pot(p):
    rng = np.random.default_rng(15)
    u, v = rng.normal(size=60), rng.random(40)
    uw, vw = histogram(rng, 60), histogram(rng, 40)
    assert mot.wasserstein_1d(u, v, uw, vw, p=p) == pytest.approx(
        ot.wasserstein_1d(u, v, uw, vw, p=p), rel=1e-12)
    U, V = rng.normal(size=(60, 5)), rng.normal(size=(40, 5))
    np.testing.assert_allclose(mot.wasserstein_1d(U, V, uw, vw, p=p),
                               ot.wasserstein_1d(U, V, uw, vw, p=p), rtol=1e-12)
    assert mot.wasserstein_1d(u.astype(np.float32), v, p=p).dtype == np.float32


def test_sliced_matches_pot_with_the_same_seed():
    rng = np.random.default_rng(16)
    X, Y = rng.normal(size=(100, 4)), rng.normal(size=(80, 4)) + 0.5
    a, b = histogram(rng, 100), histogram(rng, 80)
    for p in (1, 2):
        assert mot.sliced_wasserstein_distance(X, Y, a, b, 30, p=p, seed=7) == pytest.approx(
            ot.sliced_wasserstein_distance(X, Y, a, b, 30, p=p, seed=7), rel=1e-12)
        assert mot.max_sliced_wasserstein_distance(X, Y, a, b, 30, p=p, seed=7) == \
            pytest.approx(ot.max_sliced_wasserstein_distance(X, Y, a, b, 30, p=p, seed=7),
                          rel=1e-12)
    res, lg = mot.sliced_wasserstein_distance(X, Y, seed=1, log=True)
    res0, lg0 = ot.sliced_wasserstein_distance(X, Y, seed=1, log=True)
    np.testing.assert_allclose(lg["projections"], lg0["projections"], rtol=1e-15)
    np.testing.assert_allclose(lg["projected_emds"], lg0["projected_emds"], rtol=1e-12)


def test_dist_matches_pot():
    rng = np.random.default_rng(17)
    X, Y = rng.normal(size=(20, 3)), rng.normal(size=(15, 3))
    for metric in ("sqeuclidean", "euclidean", "cityblock"):
        np.testing.assert_allclose(mot.dist(X, Y, metric=metric), ot.dist(X, Y, metric=metric),
                                   rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(mot.dist(X), ot.dist(X), atol=1e-13)
    assert mot.dist(X.astype(np.float32)).dtype == np.float32
