"""measattn's solvers from Python against POT, SciPy, PyTorch and closed forms:
Wasserstein distances, attention flows, maximum entropy, Lipschitz bounds."""

import numpy as np
import pytest

measattn = pytest.importorskip("measattn")


def need(name):
    if not hasattr(measattn, name):
        pytest.skip(f"measattn built without {name}")


# ---- Wasserstein ----------------------------------------------------------------

def test_wasserstein_matches_pot_emd2():
    need("wasserstein")
    ot = pytest.importorskip("ot")
    rng = np.random.default_rng(0)
    for trial in range(12):
        n, m, d = rng.integers(1, 40), rng.integers(1, 40), rng.integers(1, 5)
        x, y = rng.normal(size=(n, d)), rng.normal(size=(m, d)) + 0.5
        a, b = rng.uniform(0.1, 1, n), rng.uniform(0.1, 1, m)
        a, b = a / a.sum(), b / b.sum()
        for p in (1.0, 2.0):
            r = measattn.wasserstein(x, y, a, b, p=p)
            ref = ot.emd2(a, b, ot.dist(x, y, metric="euclidean") ** p) ** (1 / p)
            assert r.kind == "exact" and r.status == "optimal"
            assert r.value == pytest.approx(ref, rel=1e-9, abs=1e-12), (trial, p)
            assert r.lower <= r.value * (1 + 1e-12) and r.value <= r.upper * (1 + 1e-12)
            assert r.cost == pytest.approx(r.value ** p, rel=1e-12)


def test_wasserstein_plan_potentials_and_measures():
    need("wasserstein")
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(7, 2)), rng.normal(size=(5, 2))
    r = measattn.wasserstein(measattn.Measure(x), measattn.Measure(y), p=1, dense_plan=True,
                             potentials=True)
    plan = r.plan
    assert plan.dense.shape == (7, 5)
    np.testing.assert_allclose(plan.dense.sum(axis=1), 1 / 7, atol=1e-12)
    np.testing.assert_allclose(plan.dense.sum(axis=0), 1 / 5, atol=1e-12)
    cost = np.linalg.norm(x[:, None] - y[None], axis=2)
    assert np.sum(plan.dense * cost) == pytest.approx(r.value, rel=1e-10)
    dense = np.zeros((7, 5))
    dense[plan.rows, plan.cols] = plan.mass
    np.testing.assert_allclose(dense, plan.dense, atol=1e-15)
    f, g = r.potentials
    assert np.all(f[:, None] + g[None] <= cost + 1e-9)
    assert f.mean() + g.mean() == pytest.approx(r.value, rel=1e-9)
    # Identity: W(mu, mu) = 0 with the identity plan.
    assert measattn.wasserstein(x, x).value == pytest.approx(0, abs=1e-12)


def test_wasserstein_sinkhorn_and_bounds_vs_pot():
    need("wasserstein")
    ot = pytest.importorskip("ot")
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(30, 3)), rng.normal(size=(25, 3))
    a, b = np.full(30, 1 / 30), np.full(25, 1 / 25)
    M = ot.dist(x, y, metric="euclidean")
    exact = ot.emd2(a, b, M)
    r = measattn.wasserstein(x, y, method="sinkhorn", reg=0.05)
    ref = ot.sinkhorn2(a, b, M, 0.05, numItermax=1000, stopThr=1e-9)
    assert r.transport_cost == pytest.approx(float(ref), rel=1e-6)
    assert r.upper >= exact * (1 - 1e-9) and r.lower <= exact * (1 + 1e-9)
    s = measattn.wasserstein(x, y, method="sliced")
    assert s.lower <= exact * (1 + 1e-9) <= s.upper * (1 + 1e-9)
    # Sinkhorn-only fields: floats for Sinkhorn, None for the other methods.
    for other in (s, measattn.wasserstein(x, y, method="exact")):
        assert other.entropic_cost is None and other.transport_cost is None
        assert other.rounded_cost is None and other.marginal_violation is None
    assert isinstance(r.rounded_cost, float) and isinstance(r.marginal_violation, float)
    one = measattn.wasserstein(x[:, :1], y[:, :1], method="1d")
    scipy_stats = pytest.importorskip("scipy.stats")
    assert one.value == pytest.approx(
        scipy_stats.wasserstein_distance(x[:, 0], y[:, 0]), rel=1e-12)


def test_wasserstein_errors():
    need("wasserstein")
    x = np.zeros((3, 2))
    with pytest.raises(ValueError, match="method"):
        measattn.wasserstein(x, x, method="magic")
    with pytest.raises(ValueError, match="unknown option 'regg'"):
        measattn.wasserstein(x, x, regg=1.0)
    with pytest.raises(ValueError):
        measattn.wasserstein(x, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="p"):
        measattn.wasserstein(x, x, p=0.5)


# ---- Flow -----------------------------------------------------------------------

def test_flow_euler_is_a_weight_shared_residual_network():
    need("flow")
    rng = np.random.default_rng(3)
    model = measattn.Model.random(6, 2, seed=2)
    x = rng.normal(size=(20, 6))
    r = measattn.flow(model, x, time=2.0, steps=5, save_every=1)
    y = x.copy()
    for _ in range(5):
        y = y + 0.4 * model.attend(y)
    assert r.status == "completed" and r.steps == 5 and r.time == pytest.approx(2.0)
    np.testing.assert_allclose(r.particles, y, rtol=1e-12, atol=1e-12)
    assert r.frames.shape == (6, 20, 6)
    np.testing.assert_array_equal(r.frames[0], x)


def test_flow_one_step_equals_torch_residual_block():
    need("flow")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(8, 2, dtype=torch.float64).eval()
    x = np.random.default_rng(4).normal(size=(10, 8))
    with torch.no_grad():
        t = torch.as_tensor(x)
        ref = (t + mha(t, t, t, need_weights=False)[0]).numpy()
    r = measattn.flow(measattn.Model.from_torch(mha), x, time=1.0, steps=1)
    assert np.max(np.abs(r.particles - ref)) < 1e-12


def test_flow_orthogonal_start_closed_form():
    need("flow")
    n, beta, t = 3, 1.5, 1.0
    x = np.eye(n)
    r = measattn.flow(measattn.Model.canonical(n, beta), x, time=t, steps=200, scheme="rk4",
                      sphere=True)
    gamma = measattn.orthogonal_start_cosine(n, beta, t)
    cos = r.particles @ r.particles.T
    off = cos[~np.eye(n, dtype=bool)]
    np.testing.assert_allclose(off, gamma, atol=1e-8)



def test_one_status_vocabulary_for_iteration_caps():
    """Every iteration or step cap reads "iteration_limit" (measattn/status.hpp)."""
    rng = np.random.default_rng(8)
    if hasattr(measattn, "flow"):
        model = measattn.Model.random(3, 1, seed=4)
        r = measattn.flow(model, rng.normal(size=(6, 3)), time=2.0, scheme="dopri5",
                          tolerance=1e-12, max_steps=3)
        assert r.status == "iteration_limit" and r.time < 2.0
    if hasattr(measattn, "maxent"):
        r = measattn.maxent(np.array([0.0, 1.0, 2.0]), 1.9999, max_iterations=1)
        assert r.status == "iteration_limit" and r.message
    if hasattr(measattn, "sinkhorn_attention"):
        model = measattn.Model.random(4, 1, seed=5)
        r = measattn.sinkhorn_attention(model, rng.normal(size=(8, 4)), iterations=2)
        assert r.status == "iteration_limit"
        r = measattn.sinkhorn_attention(model, rng.normal(size=(8, 4)), iterations=500,
                                        tolerance=1e-6)
        assert r.status == "converged"
    if hasattr(measattn, "wasserstein"):
        x, y = rng.normal(size=(20, 2)), rng.normal(size=(20, 2))
        r = measattn.wasserstein(x, y, method="sinkhorn", max_iterations=1)
        assert r.status == "iteration_limit"
    if hasattr(measattn, "token_jacobian_norm"):
        model = measattn.Model.random(3, 1, seed=6)
        r = measattn.token_jacobian_norm(model, rng.normal(size=(4, 3)), iterations=1,
                                         tolerance=1e-300)
        assert r.status == "iteration_limit" and "iteration cap" in r.message
        r = measattn.token_jacobian_norm(model, rng.normal(size=(4, 3)))
        assert r.status in ("converged", "iteration_limit") and r.message


# ---- Maximum entropy ----------------------------------------------------------

def test_gibbs_and_maxent_vs_scipy():
    need("gibbs")
    special = pytest.importorskip("scipy.special")
    rng = np.random.default_rng(5)
    g = rng.normal(size=50) * 3
    w = rng.uniform(0.1, 1, 50)
    r = measattn.gibbs(g, w)
    wn = w / w.sum()
    np.testing.assert_allclose(r.probabilities, special.softmax(g + np.log(wn)), rtol=1e-12)
    assert r.log_partition == pytest.approx(special.logsumexp(g, b=wn), rel=1e-13)
    assert measattn.log_partition(g, w) == pytest.approx(r.log_partition, rel=1e-14)
    b = measattn.gibbs_bound(g, np.full(50, 1.0), w)
    assert b.gap >= 0 and b.objective <= r.log_partition
    target = 0.3 * g.max() + 0.7 * np.average(g, weights=wn)
    me = measattn.maxent(g, target, w)
    assert me.status == "converged"
    assert me.expected_score == pytest.approx(target, rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(me.probabilities,
                               special.softmax(me.beta * g + np.log(wn)), rtol=1e-9)
    at1 = measattn.maxent_at_beta(g, 1.0, w)
    np.testing.assert_allclose(at1.probabilities, r.probabilities, rtol=1e-12)
    with pytest.raises(ValueError, match="target"):
        measattn.maxent(g, g.max() + 1, w)


def test_attention_entropy_matches_the_kernel():
    need("attention_entropy")
    rng = np.random.default_rng(6)
    model = measattn.Model.random(8, 2, seed=4)
    x = rng.normal(size=(30, 8))
    res = measattn.attention_entropy(model, x, betas=[0.5, 1.0, 2.0])
    assert len(res.heads) == 2 and list(res.betas) == [0.5, 1.0, 2.0]
    for h, head in enumerate(res.heads):
        k = model.kernel(x, head=h)
        ent = -np.sum(np.where(k > 0, k * np.log(np.where(k > 0, k, 1)), 0), axis=1)
        np.testing.assert_allclose(head.entropy, ent, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(head.effective_tokens, np.exp(ent), rtol=1e-10)
        assert head.mean_entropy == pytest.approx(ent.mean(), rel=1e-10)
        assert head.curve_entropy[1] == pytest.approx(ent.mean(), rel=1e-10)


# ---- Lipschitz ------------------------------------------------------------------

def test_lipschitz_bounds_bracket_realized_ratios():
    need("lipschitz_upper_bounds")
    ot = pytest.importorskip("ot")
    rng = np.random.default_rng(7)
    model = measattn.Model.random(4, 1, bias=False, seed=3)
    R = 1.0
    up = measattn.lipschitz_upper_bounds(model, R)
    assert up.best_w1 > 0 and np.isfinite(up.best_w1)
    assert up.best_w1 <= min(b.value for b in up.bounds if b.kind == "w1") + 1e-12
    low = measattn.lipschitz_lower_bound(model, R, restarts=3, steps=10, atoms=3)
    assert 0 < low.ratio <= up.best_w1
    # An independent ratio with POT for random pairs in B_R.
    for _ in range(5):
        x = rng.normal(size=(6, 4))
        y = rng.normal(size=(6, 4))
        x /= np.maximum(1, np.linalg.norm(x, axis=1))[:, None]
        y /= np.maximum(1, np.linalg.norm(y, axis=1))[:, None]
        a = b = np.full(6, 1 / 6)
        fx, fy = model.attend(x), model.attend(y)
        ratio = ot.emd2(a, b, ot.dist(fx, fy, metric="euclidean")) / \
            ot.emd2(a, b, ot.dist(x, y, metric="euclidean"))
        ours = measattn.lipschitz_ratio(model, measattn.Measure(x), measattn.Measure(y))
        assert ours == pytest.approx(ratio, rel=1e-8)
        assert ratio <= up.best_w1 * (1 + 1e-12)


# ---- Mis-specified inputs -------------------------------------------------------

def test_misspec_bounds_hold():
    need("misspec")
    special = pytest.importorskip("scipy.special")
    rng = np.random.default_rng(8)
    model = measattn.Model.random(3, 1, bias=False, seed=5)
    x = rng.normal(size=(12, 3))
    x /= np.linalg.norm(x, axis=1).max()
    up = measattn.lipschitz_upper_bounds(model, 1.0)
    for kind in ("noise", "corrupt", "sample"):
        r = measattn.misspec(model, x, kind=kind, sigmas=[0.01, 0.1], eps=[0.05, 0.2],
                             sizes=[4, 16], repeats=2)
        assert r.kind == kind and len(r.rows) == 2 and not r.violated
        assert r.lipschitz >= up.best_w1 * (1 - 1e-12) or r.radius != 1.0
        for row in r.rows:
            assert row.w1_output <= row.bound * (1 + 1e-9)
            assert row.max_ratio <= 1 + 1e-9
        # Kind-specific numbers: None where not computed.
        assert (r.output_rate is None) == (r.input_rate is None) == (kind != "sample")
        assert all((row.a_priori is None) == (kind == "sample") for row in r.rows)
    d = 5
    ref = np.sqrt(2) * np.exp(special.gammaln((d + 1) / 2) - special.gammaln(d / 2))
    assert measattn.expected_gaussian_norm(d) == pytest.approx(ref, rel=1e-13)


def test_result_names_follow_the_cpp_structs():
    """*Result names as in C++: UpperBoundResult, StackBoundResult, GibbsBoundResult;
    a StackBoundResult still unpacks as (value, constants, radii)."""
    need("lipschitz_upper_bounds")
    layers = [measattn.Model.random(3, 1, seed=s) for s in (1, 2)]
    up = measattn.lipschitz_upper_bounds(layers[0], 1.0)
    assert type(up).__name__ == "UpperBoundResult" and up.best_w1 > 0
    s = measattn.lipschitz_stack_upper_bound(layers, 1.0)
    assert type(s).__name__ == "StackBoundResult" and len(s) == 3
    value, constants, radii = s
    assert value == s.value == s[0] and constants == s.constants and radii == s.radii
    assert len(constants) == 2 and len(radii) == 3
    assert value == pytest.approx(constants[0] * constants[1], rel=1e-12)
    assert type(measattn.lipschitz(layers[0], 1.0, search=False)).__name__ == "LipschitzResult"
    if hasattr(measattn, "gibbs_bound"):
        b = measattn.gibbs_bound(np.array([0.0, 1.0]), np.array([0.5, 0.5]))
        assert type(b).__name__ == "GibbsBoundResult" and b.gap >= 0
