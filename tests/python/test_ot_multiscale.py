"""The multiscale Sinkhorn (multiscale=True: grid cells, coarse-to-fine epsilon scaling,
kernel truncation with a bound on the neglected mass, O(n + m) memory) against the dense
Sinkhorn, the exact value it brackets, thread counts and bad options."""
import numpy as np
import pytest

import measattn


def _clouds(n, m, d, seed, shift=0.3):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, d)), rng.normal(size=(m, d)) + shift
    wa, wb = rng.random(n) + 0.1, rng.random(m) + 0.1
    return x, y, wa / wa.sum(), wb / wb.sum()


@pytest.mark.parametrize("n,m,d,p,reg", [(150, 170, 3, 1, 0.1), (200, 120, 3, 2, 0.05),
                                         (300, 250, 2, 2, 0.02), (100, 90, 1, 2, 0.05)])
def test_multiscale_matches_dense_and_brackets_the_exact_value(n, m, d, p, reg):
    x, y, wa, wb = _clouds(n, m, d, n + m)
    opts = dict(p=p, method="sinkhorn", reg=reg, max_iterations=100000, tolerance=1e-10)
    dense = measattn.wasserstein(x, y, wa, wb, **opts)
    ms = measattn.wasserstein(x, y, wa, wb, multiscale=True, potentials=True, **opts)
    assert ms.status == "converged" and ms.marginal_violation < 1e-10
    assert ms.transport_cost == pytest.approx(dense.transport_cost, rel=1e-7)
    assert ms.entropic_cost == pytest.approx(dense.entropic_cost, rel=1e-6, abs=1e-8)
    exact = measattn.wasserstein(x, y, wa, wb, p=p, method="exact" if d > 1 else "1d").value
    assert ms.lower <= exact * (1 + 1e-12) and exact <= ms.upper * (1 + 1e-12)
    assert ms.lower <= ms.value <= ms.upper
    assert "multiscale" in ms.message and "neglected" in ms.message
    # The potentials are a feasible dual pair: f is the c-transform of g.
    f, g = ms.potentials
    cost = np.linalg.norm(x[:, None] - y[None], axis=-1) ** p
    np.testing.assert_allclose(f, (cost - g[None]).min(axis=1), rtol=0, atol=1e-12)
    assert np.dot(wa, f) + np.dot(wb, g) <= ms.lower ** p * (1 + 1e-9) + 1e-12


def test_multiscale_with_coarse_levels_and_truncation_agrees_with_dense():
    # n m > 4e6: a coarse level (the cells' centroids) starts the fine one, and small
    # reg makes the truncation skip most cells.
    x, y, wa, wb = _clouds(2100, 2050, 2, 7)
    x, y = x / 4, y / 4
    opts = dict(p=2, method="sinkhorn", reg=0.01, max_iterations=100000, tolerance=1e-7)
    dense = measattn.wasserstein(x, y, wa, wb, **opts)
    ms = measattn.wasserstein(x, y, wa, wb, multiscale=True, **opts)
    assert ms.status == "converged"
    assert ms.transport_cost == pytest.approx(dense.transport_cost, rel=1e-5)
    assert ms.lower <= dense.upper and dense.lower <= ms.upper
    loose = measattn.wasserstein(x, y, wa, wb, multiscale=True, truncation=1e-4, **opts)
    assert loose.transport_cost == pytest.approx(dense.transport_cost, rel=1e-3)


def test_multiscale_is_identical_whatever_the_thread_count():
    x, y, wa, wb = _clouds(1300, 1200, 2, 3)
    opts = dict(p=2, method="sinkhorn", reg=0.02, tolerance=1e-6, multiscale=True,
                potentials=True, epsilon_scaling=0.7)
    before = measattn.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            measattn.set_num_threads(threads)
            results.append(measattn.wasserstein(x, y, wa, wb, **opts))
    finally:
        measattn.set_num_threads(before)
    for r in results[1:]:
        assert r.transport_cost == results[0].transport_cost
        assert (r.lower, r.upper, r.iterations) == (results[0].lower, results[0].upper,
                                                    results[0].iterations)
        np.testing.assert_array_equal(r.potentials[1], results[0].potentials[1])


def test_multiscale_rejects_bad_options_and_plans():
    x, y, _, _ = _clouds(30, 40, 2, 1)
    with pytest.raises(ValueError, match="multiscale: .*no plan"):
        measattn.wasserstein(x, y, method="sinkhorn", multiscale=True, plan=True)
    for bad in (0.0, 1.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="epsilon_scaling"):
            measattn.wasserstein(x, y, method="sinkhorn", multiscale=True, epsilon_scaling=bad)
    for bad in (0.0, 0.01, float("inf")):
        with pytest.raises(ValueError, match="truncation"):
            measattn.wasserstein(x, y, method="sinkhorn", multiscale=True, truncation=bad)
    high = np.random.default_rng(0).normal(size=(20, 9))
    with pytest.raises(ValueError, match="multiscale: .*d <= 8"):
        measattn.wasserstein(high, high + 1, method="sinkhorn", multiscale=True)
    r = measattn.wasserstein(x, y, method="sinkhorn", multiscale=True, reg=0.001,
                             max_iterations=3)
    assert r.status == "iteration_limit" and np.isfinite(r.value) and r.lower <= r.upper


def test_empirical_sinkhorn2_lazy_uses_the_multiscale_solver():
    import measattn.ot as ot
    x, y, wa, wb = _clouds(120, 100, 2, 5)
    dense = ot.empirical_sinkhorn2(x, y, 0.1, wa, wb, stopThr=1e-11, numIterMax=100000)
    lazy = ot.empirical_sinkhorn2(x, y, 0.1, wa, wb, stopThr=1e-11, numIterMax=100000,
                                  isLazy=True)
    assert float(lazy) == pytest.approx(float(dense), rel=1e-8)
    lazy32 = ot.empirical_sinkhorn2(x.astype(np.float32), y.astype(np.float32), 0.1,
                                    isLazy=True)
    assert lazy32.dtype == np.float32
