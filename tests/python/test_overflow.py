"""Overflow stories of the numeric paths (issue 14, items 3-6 and 8): huge and tiny
magnitudes, large p, tiny regularization. Every result is finite and lies inside its
own bounds, or the call is refused with exit 2 / ValueError naming the field.
"""
import json
import math

import numpy as np
import pytest

from conftest import run_cli, save_npy

measattn = pytest.importorskip("measattn")

SCALES = [1e-300, 1e-150, 1e-20, 1.0, 1e20, 1e150, 1e300]


def cli_json(args, timeout=60):
    proc = run_cli(list(args) + ["--json"], timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def inside(r, rel=1e-9):
    assert math.isfinite(r["value"]) and math.isfinite(r["lower"]), r
    assert r["lower"] <= r["value"] * (1 + rel) + 1e-300, r
    if r["upper"] is not None:
        assert r["value"] <= r["upper"] * (1 + rel), r


def bottleneck(x, y, na, nb):
    """W_inf for uniform measures with integer multiplicities na, nb (max flow)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_flow
    c = np.sqrt(((x[:, None] - y[None]) ** 2).sum(-1))
    n, m = c.shape
    vals = np.unique(c)

    def feasible(t):
        s, t_ = n + m, n + m + 1
        rows = [s] * n + list(range(n, n + m))
        cols = list(range(n)) + [t_] * m
        cap = [na] * n + [nb] * m
        ii, jj = np.nonzero(c <= t)
        rows += list(ii)
        cols += list(n + jj)
        cap += [10 ** 6] * len(ii)
        g = csr_matrix((np.array(cap, dtype=np.int32), (rows, cols)), shape=(n + m + 2,) * 2)
        return maximum_flow(g, s, t_).flow_value == na * n

    lo, hi = 0, len(vals) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if feasible(vals[mid]):
            hi = mid
        else:
            lo = mid + 1
    return vals[lo]


# ---- Wasserstein ------------------------------------------------------------------

def test_wasserstein_large_p_finishes_and_tends_to_w_inf(tmp_path):
    pytest.importorskip("scipy")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((50, 2)), rng.standard_normal((40, 2)) + 0.5
    xp, yp = save_npy(tmp_path / "x.npy", x), save_npy(tmp_path / "y.npy", y)
    w_inf = bottleneck(x, y, 4, 5)
    values = []
    for p in [1, 2, 10, 100, 1000, 1e4, 1e6]:
        r = cli_json(["wasserstein", xp, yp, "--p", str(p)], timeout=30)
        inside(r)
        values.append(r["value"])
        assert r["value"] <= w_inf * (1 + 1e-9), (p, r)  # W_p <= W_inf
    assert all(u <= v * (1 + 1e-9) for u, v in zip(values, values[1:]))  # monotone in p
    assert values[-1] == pytest.approx(w_inf, rel=1e-4)
    proc = run_cli(["wasserstein", xp, yp, "--p", "1e300"])
    assert proc.returncode == 2 and "p: at most" in proc.stderr


def test_wasserstein_moderate_p_matches_pot():
    ot = pytest.importorskip("ot")
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((20, 3)), rng.standard_normal((15, 3))
    a, b = np.full(20, 1 / 20), np.full(15, 1 / 15)
    c = np.sqrt(((x[:, None] - y[None]) ** 2).sum(-1))
    for p in [3.0, 6.0, 12.0]:
        ref = ot.emd2(a, b, (c / c.max()) ** p) ** (1 / p) * c.max()
        r = measattn.wasserstein(x, y, p=p)
        assert r.value == pytest.approx(ref, rel=1e-7)
        assert r.lower <= r.value <= r.upper


@pytest.mark.parametrize("method", ["exact", "sliced", "sinkhorn"])
def test_wasserstein_huge_coordinates(tmp_path, method):
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((6, 3)), rng.standard_normal((5, 3))
    ref = measattn.wasserstein(x, y).value
    r = cli_json(["wasserstein", save_npy(tmp_path / "x.npy", x * 1e154),
                  save_npy(tmp_path / "y.npy", y * 1e154), "--method", method])
    inside(r)
    assert r["lower"] <= ref * 1e154 * (1 + 1e-9)
    if r["upper"] is not None:
        assert ref * 1e154 <= r["upper"] * (1 + 1e-9)
    if method == "exact":
        assert r["value"] == pytest.approx(ref * 1e154, rel=1e-12)


def test_sinkhorn_tiny_reg_stays_in_its_bracket(tmp_path):
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((30, 3)), rng.standard_normal((30, 3))
    exact = measattn.wasserstein(x, y).value
    r = cli_json(["wasserstein", save_npy(tmp_path / "x.npy", x), save_npy(tmp_path / "y.npy", y),
                  "--method", "sinkhorn", "--reg", "1e-300"])
    inside(r)
    assert r["lower"] <= exact * (1 + 1e-9) and exact <= r["upper"] * (1 + 1e-9)
    assert "raised" in r["message"]


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("p", [1.0, 2.0, 7.0])
def test_wasserstein_hostile_magnitudes(scale, p):
    rng = np.random.default_rng(int(p * 10))
    x, y = rng.standard_normal((7, 2)), rng.standard_normal((6, 2))
    a = np.array([0, 5e-324, 1, 2, 0.5, 1, 1])
    b = np.array([1, 0, 1, 2, 1, 3])
    ref = measattn.wasserstein(x, y, a / a.sum(), b / b.sum(), p=p).value
    for method in ["exact", "sliced", "sinkhorn"]:
        try:
            r = measattn.wasserstein(x * scale, y * scale, a, b, p=p, method=method)
        except ValueError:
            continue
        for v in (r.value, r.lower):
            assert math.isfinite(v), (method, r)
        assert r.lower <= r.value * (1 + 1e-9) and r.value <= r.upper * (1 + 1e-9), (method, r)
        assert r.lower <= ref * scale * (1 + 1e-6), (method, r)
        assert ref * scale <= r.upper * (1 + 1e-6), (method, r)
        if method == "exact":
            assert r.value == pytest.approx(ref * scale, rel=1e-9)


# ---- Lipschitz ----------------------------------------------------------------------

def small_model(scale_q=1.0, scale_v=1.0):
    m = measattn.Model.random(4, 1, bias=False, seed=3)
    return measattn.Model(np.asarray(m.w_q) * scale_q, np.asarray(m.w_k),
                          np.asarray(m.w_v) * scale_v, np.asarray(m.w_o) * scale_v)


@pytest.mark.parametrize("radius", ["1e100", "1e200", "1e300"])
def test_lipschitz_huge_radius_is_refused(tmp_path, radius):
    path = str(tmp_path / "m.safetensors")
    small_model().save(path)
    proc = run_cli(["lipschitz", "--model", path, "--radius", radius], timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "radius" in proc.stderr and "double" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="radius"):
        measattn.lipschitz_lower_bound(small_model(), float(radius), restarts=1, steps=2, atoms=2)


def test_lipschitz_huge_weights_refused_or_bracketed(tmp_path):
    path = str(tmp_path / "m.safetensors")
    small_model(scale_v=1e100).save(path)
    proc = run_cli(["lipschitz", "--model", path, "--radius", "1"], timeout=60)
    assert proc.returncode == 2 and "model" in proc.stderr, proc.stderr
    # Huge queries: logits up to 1e100, still representable; the upper bound is +inf.
    small_model(scale_q=1e100).save(path)
    r = cli_json(["lipschitz", "--model", path, "--radius", "1", "--restarts", "2",
                  "--steps", "3"])
    assert math.isfinite(r["lower_bound"]) and r["lower_bound"] > 0
    assert r["best_upper"] is None  # +inf (JSON null), with the reason in the meaning
    assert "+inf" in r["upper_bound_meanings"]["w1_combined"]


def test_lipschitz_upper_bounds_overflow_to_inf_not_nan():
    up = measattn.lipschitz_upper_bounds(small_model(), 1e3)
    for b in up.bounds:
        assert not math.isnan(b.value)
        if b.value == math.inf:
            assert "overflows double" in b.meaning
    assert up.best_w1 == math.inf and up.best_name


@pytest.mark.parametrize("scale", SCALES)
def test_token_jacobian_norm_hostile_magnitudes(scale):
    m = small_model()
    x = np.random.default_rng(4).standard_normal((5, 4)) * scale
    try:
        r = measattn.token_jacobian_norm(m, x)
    except ValueError as e:
        assert "tokens" in str(e)
        return
    assert math.isfinite(r.value) and r.value >= 0


# ---- Attention, entropy, maxent ---------------------------------------------------------

def tokens(scale, n=5, d=4, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)) * scale


def test_attend_huge_tokens_is_refused_in_python_and_cli(tmp_path):
    m = small_model()
    for s in (1e154, 1e300):
        with pytest.raises(ValueError, match="tokens: the attention output is not finite"):
            m.attend(tokens(s))
    with pytest.raises(ValueError, match="float32"):
        m.attend(tokens(1e30).astype(np.float32))
    path = str(tmp_path / "m.safetensors")
    m.save(path)
    t = save_npy(tmp_path / "t.npy", tokens(1e154))
    for extra in ([], ["--normalization", "sinkhorn"]):
        proc = run_cli(["attend", "--model", path, "--tokens", t, "--out", tmp_path / "o.npy"]
                       + extra)
        assert proc.returncode == 2 and "not finite" in proc.stderr, proc.stderr
        assert not (tmp_path / "o.npy").exists()


def test_entropy_huge_tokens_is_refused(tmp_path):
    m = small_model()
    path = str(tmp_path / "m.safetensors")
    m.save(path)
    proc = run_cli(["entropy", "--model", path, "--tokens", save_npy(tmp_path / "t.npy",
                                                                     tokens(1e154))])
    assert proc.returncode == 2, proc.stdout
    assert "nan" not in proc.stdout and "logits" in proc.stderr
    with pytest.raises(ValueError, match="tokens: the attention logits"):
        measattn.attention_entropy(m, tokens(1e154))


@pytest.mark.parametrize("scale", SCALES)
def test_attention_functions_hostile_magnitudes(scale):
    m = small_model()
    x = tokens(scale)
    w = np.array([0, 5e-324, 1, 2, 1])
    for call in (lambda: m.attend(x), lambda: measattn.attention_entropy(m, x, w),
                 lambda: measattn.attention_entropy(m, x)):
        try:
            out = call()
        except ValueError as e:
            assert "tokens" in str(e) or "weights" in str(e)
            continue
        if isinstance(out, np.ndarray):
            assert np.all(np.isfinite(out))
        else:
            for h in out.heads:
                assert np.all(np.isfinite(h.entropy)) and np.isfinite(h.mean_entropy)
                assert np.all(np.isfinite(h.expected_score))


def test_gibbs_extreme_scores_are_finite():
    r = measattn.gibbs(np.array([1e308, -1e308, 0.0]))
    assert r.entropy == 0 and r.kl == pytest.approx(math.log(3))
    assert np.array_equal(r.probabilities, [1, 0, 0])
    for scale in SCALES:
        g = np.random.default_rng(1).standard_normal(6) * scale
        w = np.array([0, 5e-324, 1, 2, 1, 1])
        r = measattn.gibbs(g, w)
        for v in (r.entropy, r.kl, r.log_partition, r.expected_score):
            assert math.isfinite(v), (scale, r)
        assert np.all(np.isfinite(r.probabilities))


# ---- Flow ---------------------------------------------------------------------------

def test_flow_tolerance_below_double_is_refused(tmp_path):
    m = small_model()
    path = str(tmp_path / "m.safetensors")
    m.save(path)
    proc = run_cli(["flow", "--model", path, "--tokens", save_npy(tmp_path / "t.npy", tokens(1)),
                    "--time", "1", "--scheme", "dopri5", "--tol", "1e-300",
                    "--out", tmp_path / "out"], timeout=60)
    assert proc.returncode == 2 and "1e-14" in proc.stderr, proc.stderr
    assert proc.stderr.startswith("measattn: error: --tol: "), proc.stderr  # the flag, not the field
    with pytest.raises(ValueError, match="tolerance: must be >= 1e-14"):
        measattn.flow(m, tokens(1), scheme="dopri5", tolerance=1e-300)
    r = measattn.flow(m, tokens(1), scheme="dopri5", tolerance=1e-14)
    assert np.all(np.isfinite(r.particles))


def test_wasserstein_large_p_cost_is_the_pth_power_of_the_value(tmp_path):
    """cost = value^p even when the normalized-unit cost underflows (p = 1000 on distances
    of size 2: value^p ~ 1e285 is representable and must not come back as 0)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((50, 3)), rng.standard_normal((40, 3))
    for method in ["exact", "sinkhorn"]:
        r = measattn.wasserstein(a, b, p=1000.0, method=method)
        assert math.isfinite(r.value) and r.value > 1
        log_cost = 1000 * math.log(r.value)
        if log_cost < 709:
            assert math.log(r.cost) == pytest.approx(log_cost, rel=1e-12), (method, r.cost)
        else:  # past the double range: +inf (documented), never 0
            assert r.cost == math.inf, (method, r.cost, r.value)
    j = json.loads(run_cli(["wasserstein", save_npy(tmp_path / "a.npy", a),
                            save_npy(tmp_path / "b.npy", b), "--p", "1000", "--json"],
                           check=True).stdout)
    if 1000 * math.log(j["value"]) < 709:
        assert math.log(j["cost"]) == pytest.approx(1000 * math.log(j["value"]), rel=1e-12)
    else:
        assert j["cost"] is None  # +inf prints as null
    # A pair whose W_p^p is representable: distances below 2 (the case that gave 0).
    r = measattn.wasserstein(a * 0.3, b * 0.3, p=1000.0, method="exact")
    assert 0 < r.cost < math.inf and math.log(r.cost) == pytest.approx(
        1000 * math.log(r.value), rel=1e-12)


# ---- analyze ----------------------------------------------------------------------------

def test_analyze_zero_weights_and_tiny_tokens(tmp_path):
    m = small_model()
    path = str(tmp_path / "m.safetensors")
    m.save(path)
    x = tokens(1, n=6)
    w = save_npy(tmp_path / "w.npy", [1, 0, 2, 0, 1, 1])
    proc = run_cli(["analyze", "--model", path, "--tokens", save_npy(tmp_path / "t.npy", x),
                    "--weights", w, "--out", tmp_path / "a1"], timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "scores are constant" not in proc.stderr
    proc = run_cli(["analyze", "--model", path,
                    "--tokens", save_npy(tmp_path / "tiny.npy", x * 1e-300),
                    "--out", tmp_path / "a2"], timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = (tmp_path / "a2" / "report.md").read_text()
    assert " nan" not in report.lower()


# ---- misspec ---------------------------------------------------------------------------

@pytest.mark.parametrize("scale", SCALES)
def test_misspec_hostile_magnitudes(scale):
    m = small_model()
    x = tokens(scale, n=6)
    for kind in ("sample", "noise", "corrupt"):
        try:
            r = measattn.misspec(m, x, kind=kind, repeats=1)
        except ValueError as e:
            assert "tokens" in str(e)
            continue
        assert not r.violated
        for row in r.rows:
            for v in (row.w1_input, row.w1_output, row.max_ratio):
                assert math.isfinite(v), (kind, row)
            assert not math.isnan(row.bound)  # +inf allowed: L overflows at large R
            assert row.w1_output <= row.bound * (1 + 1e-9) + 1e-12


def test_unnormalized_flow_field_refuses_overflow_like_the_cli():
    """Python's flow_field makes the CLI's checks: beta > 700, and exp(beta <x, y>) past
    the double range for particles off the sphere, are ValueErrors, never inf."""
    x = np.random.default_rng(3).standard_normal((5, 3))
    with pytest.raises(ValueError, match="^beta: "):
        measattn.flow_field(measattn.Model.canonical(3, 800.0), x / np.linalg.norm(x, axis=1,
                                                                                keepdims=True),
                            sphere=True, field="unnormalized")
    with pytest.raises(ValueError, match="^particles: "):
        measattn.flow_field(measattn.Model.canonical(3, 10.0), x * 1e3, sphere=True,
                            field="unnormalized")
    f = measattn.flow_field(measattn.Model.canonical(3, 10.0), x, sphere=True,
                            field="unnormalized")
    assert np.isfinite(f).all()
