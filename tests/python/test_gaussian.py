"""Gaussian measures (docs/theory.md#gaussian): the Python API against an
independent NumPy computation on Gauss-Hermite atoms and against the particle
solver, the CLI's JSON, and bad input (ValueError, exit 2 with one line)."""

import json

import numpy as np
import pytest

import measattn
from conftest import run_cli, save_npy

pytestmark = pytest.mark.skipif(not hasattr(measattn, "GaussianMeasure"),
                                reason="gaussian module not built")


def gaussian(d=2, seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    return measattn.GaussianMeasure(rng.normal(scale=0.5, size=d),
                                    scale * (a @ a.T / d + 0.1 * np.eye(d)))


def hermite_atoms(g, points):
    """Tensor-product Gauss-Hermite atoms of g by NumPy (probabilists' rule)."""
    z, w = np.polynomial.hermite_e.hermegauss(points)
    w = w / w.sum()
    grids = np.meshgrid(*[z] * g.dim, indexing="ij")
    zz = np.stack([x.ravel() for x in grids], axis=1)
    ww = np.prod(np.stack(np.meshgrid(*[w] * g.dim, indexing="ij")).reshape(g.dim, -1), axis=0)
    vals, vecs = np.linalg.eigh(g.cov)
    root = vecs @ np.diag(np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    return g.mean + zz @ root, ww


def dense_self_attention(model, x, w):
    """Gamma_mu(x_i) for mu = sum_j w_j delta_{x_j} (dot potential), NumPy."""
    p = model.parameters()
    e, h = model.embed_dim, model.num_heads
    k = e // h
    q = x @ p["w_q"].T + (p["b_q"] if p["b_q"].size else 0)
    kk = x @ p["w_k"].T + (p["b_k"] if p["b_k"].size else 0)
    v = x @ p["w_v"].T + (p["b_v"] if p["b_v"].size else 0)
    heads = []
    for i in range(h):
        s = q[:, i * k:(i + 1) * k] @ kk[:, i * k:(i + 1) * k].T / model.tau + np.log(w)
        s -= s.max(axis=1, keepdims=True)
        pi = np.exp(s)
        pi /= pi.sum(axis=1, keepdims=True)
        heads.append(pi @ v[:, i * k:(i + 1) * k])
    return np.concatenate(heads, axis=1) @ p["w_o"].T + (p["b_o"] if p["b_o"].size else 0)


def weighted_moments(y, w):
    m = w @ y
    c = y - m
    return m, (c * w[:, None]).T @ c


def test_measure_properties_and_validation():
    g = measattn.GaussianMeasure([1, 2], [[2, 0.5], [0.5, 1]])
    assert g.dim == 2 and g.mean.dtype == np.float64 and g.cov.dtype == np.float64
    np.testing.assert_array_equal(g.cov, [[2, 0.5], [0.5, 1]])
    for mean, cov, match in [([], np.zeros((0, 0)), "mean: empty"),
                             ([0.0, np.nan], np.eye(2), "mean:"),
                             ([0.0, 0.0], np.eye(3), "cov: shape 3 x 3"),
                             ([0.0, 0.0], [[1, 0.5], [0, 1]], "cov: not symmetric"),
                             ([0.0, 0.0], [[1, 0], [0, -1]], "cov: not positive semi-definite")]:
        with pytest.raises(ValueError, match=match):
            measattn.GaussianMeasure(mean, cov)


@pytest.mark.parametrize("d,heads", [(1, 1), (2, 2), (3, 1)])
def test_closed_form_against_numpy_on_hermite_atoms(d, heads):
    model = measattn.Model.random(d, heads, bias=True, seed=5)
    g = gaussian(d, seed=d)
    out = measattn.gaussian_attention(model, g)
    x, w = hermite_atoms(g, 16 if d < 3 else 12)
    m, c = weighted_moments(dense_self_attention(model, x, w), w)
    np.testing.assert_allclose(out.mean, m, atol=1e-8)
    np.testing.assert_allclose(out.cov, c, atol=1e-8)


def test_hermite_measure_and_particle_solver():
    model = measattn.Model.random(2, 2, bias=True, seed=7, potential="l2")
    g = gaussian(2, seed=3, scale=0.15)
    mu = measattn.gauss_hermite_measure(g, 20)
    x, w = hermite_atoms(g, 20)
    np.testing.assert_allclose(np.sort(mu.atoms, axis=0), np.sort(x, axis=0), atol=1e-12)
    y = model.attend(mu)
    m, c = weighted_moments(y, mu.weights)
    out = measattn.gaussian_attention(model, g)
    np.testing.assert_allclose(out.mean, m, atol=1e-8)
    np.testing.assert_allclose(out.cov, c, atol=1e-8)
    # Sinkhorn: converged particle Sinkhorn attention on the atoms.
    ys = model.attend(mu, normalization="sinkhorn", sinkhorn_iterations=300)
    m, c = weighted_moments(ys, mu.weights)
    out = measattn.gaussian_attention(model, g, normalization="sinkhorn")
    np.testing.assert_allclose(out.mean, m, atol=1e-8)
    np.testing.assert_allclose(out.cov, c, atol=1e-8)


def test_flow_against_particle_flow():
    model = measattn.Model.random(2, 1, bias=True, seed=11)
    g = gaussian(2, seed=4, scale=0.2)
    out = measattn.gaussian_flow(model, g, 0.5, tolerance=1e-12)
    mu = measattn.gauss_hermite_measure(g, 14)
    r = measattn.flow(model, mu, time=0.5, scheme="dopri5", tolerance=1e-11)
    m, c = weighted_moments(r.particles, r.weights)
    np.testing.assert_allclose(out.mean, m, atol=1e-8)
    np.testing.assert_allclose(out.cov, c, atol=1e-8)
    # Time 0 is the start; a blow-up is an error, not NaN.
    np.testing.assert_array_equal(measattn.gaussian_flow(model, g, 0.0).cov, g.cov)
    g1 = measattn.GaussianMeasure([0.0], [[1.0]])
    with pytest.raises(ValueError, match="time: the flow stopped"):
        measattn.gaussian_flow(measattn.Model.canonical(1, 1.0), g1, 1.0)
    with pytest.raises(ValueError, match="tolerance:"):
        measattn.gaussian_flow(model, g, 1.0, tolerance=0.0)
    with pytest.raises(ValueError, match="normalization: unknown"):
        measattn.gaussian_flow(model, g, 1.0, normalization="x")


def test_w2_bures():
    a = measattn.GaussianMeasure([0.0, 0.0], np.diag([1.0, 4.0]))
    b = measattn.GaussianMeasure([1.0, 0.0], np.diag([9.0, 1.0]))
    assert measattn.gaussian_w2(a, b) == pytest.approx(np.sqrt(1 + 4 + 1), rel=1e-14)
    assert measattn.gaussian_w2(a, a) == pytest.approx(0, abs=1e-7)
    with pytest.raises(ValueError, match="b: dimension"):
        measattn.gaussian_w2(a, measattn.GaussianMeasure([0.0], [[1.0]]))


def test_refuses_cosine_potential():
    model = measattn.Model.random(2, 1, bias=True, seed=1, potential="cosine")
    with pytest.raises(ValueError, match="potential: the Gaussian closed form"):
        measattn.gaussian_attention(model, gaussian(2))


def files(tmp_path, g, seed=3):
    model = str(tmp_path / "m.safetensors")
    measattn.Model.random(g.dim, 2 if g.dim % 2 == 0 else 1, bias=True, seed=seed).save(model)
    return (model, save_npy(tmp_path / "mean.npy", g.mean), save_npy(tmp_path / "cov.npy", g.cov))


def test_cli_json_matches_python(tmp_path):
    g = gaussian(2, seed=9)
    model, mean, cov = files(tmp_path, g)
    m = measattn.Model.random(2, 2, bias=True, seed=3)  # the model saved in the file
    out = json.loads(run_cli(["gaussian", "--model", model, "--mean", mean, "--cov", cov,
                              "--json"], check=True).stdout)
    py = measattn.gaussian_attention(m, g)
    np.testing.assert_allclose(out["mean"], py.mean, rtol=0, atol=1e-15)
    np.testing.assert_allclose(out["cov"], py.cov, rtol=0, atol=1e-15)
    assert out["normalization"] == "softmax" and out["residual"] is False
    flow = json.loads(run_cli(["gaussian", "--model", model, "--mean", mean, "--cov", cov,
                               "--time", 0.5, "--normalization", "sinkhorn", "--json"],
                              check=True).stdout)
    pyf = measattn.gaussian_flow(m, g, 0.5, normalization="sinkhorn")
    np.testing.assert_allclose(flow["cov"], pyf.cov, rtol=0, atol=1e-15)
    assert flow["status"] == "completed" and flow["steps"] > 0 and flow["time"] == 0.5
    text = run_cli(["gaussian", "--model", model, "--mean", mean, "--cov", cov],
                   check=True).stdout
    assert text.startswith("mean ") and "\ncov " in text


@pytest.mark.parametrize("what,args,start", [
    ("asym", None, "--cov: {cov}: not symmetric"),
    ("shape", None, "--cov: {cov}: shape 3 x 3, expected 2 x 2"),
    ("time", ["--time", "-1"], "--time: must be finite and >= 0"),
    ("residual", ["--time", "1", "--residual"], "--residual: the flow has no residual"),
    ("norm", ["--normalization", "nope"], "--normalization: unknown normalization"),
    ("dim", None, "--mean: {mean}: dimension 3 differs"),
])
def test_cli_bad_input(tmp_path, what, args, start):
    g = gaussian(2, seed=1)
    model, mean, cov = files(tmp_path, g)
    if what == "asym":
        save_npy(cov, [[1.0, 0.5], [0.0, 1.0]])
    elif what == "shape":
        save_npy(cov, np.eye(3))
    elif what == "dim":
        save_npy(mean, np.zeros(3))
        save_npy(cov, np.eye(3))
    proc = run_cli(["gaussian", "--model", model, "--mean", mean, "--cov", cov, *(args or [])])
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("measattn: error: " + start.format(mean=mean, cov=cov)), lines[0]
