"""Normalization placements (norm post|pre|none), causal and Sinkhorn flows: the
particles against the equiangular ODEs integrated independently by SciPy, the
decay laws, token 0 leading a causal flow, the Sinkformer kernel, checkpoints
and resume, the CLI's outputs and its refusals (docs/theory.md#equiangular)."""

import json

import numpy as np
import pytest
from scipy.integrate import solve_ivp

import measattn
from conftest import load_npy, run_cli, save_npy


def equiangular(n, d, rho, r0=1.0, seed=0):
    u = np.zeros((n, d))
    for i in range(n):
        u[i, i] = np.sqrt(1 - rho)
        u[i, n] = np.sqrt(rho)
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return r0 * u @ q


def one_minus_rho(x):
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    return float(((u - u.mean(axis=0)) ** 2).sum() / (len(x) - 1))


def scipy_reference(norm, n, beta, rho0, r0, times):
    """The equiangular ODEs written out again, for (1 - rho, r), by DOP853."""
    def rhs(_, y):
        u, r = y
        b = beta * r * r if norm == "none" else beta
        e = np.exp(-b * u)
        c = e / (1 + (n - 1) * e)
        s = n - (n - 1) * u
        g = 1 - (n - 1) * u * c
        du = -2 * c * s * u / (r if norm == "pre" else 1)
        dr = {"post": 0.0, "pre": g, "none": r * g}[norm]
        return [du, dr]
    sol = solve_ivp(rhs, (0, times[-1]), [1 - rho0, 1.0 if norm == "post" else r0],
                    t_eval=times, method="DOP853", rtol=1e-13, atol=1e-300)
    return sol.y[0], sol.y[1]


@pytest.mark.parametrize("norm,T,r0", [("post", 6.0, 1.0), ("pre", 50.0, 1.3), ("none", 3.0, 0.9)])
def test_particles_match_the_equiangular_odes(norm, T, r0):
    n, d, beta, rho0 = 6, 8, 1.5, 0.2
    x = equiangular(n, d, rho0, r0, seed=3)
    r = measattn.flow(measattn.Model.canonical(d, beta), x, time=T, scheme="dopri5",
                      tolerance=1e-12, save_every=4, cluster_tolerance=0, norm=norm)
    assert r.status == "completed"
    u_ref, r_ref = scipy_reference(norm, n, beta, rho0, r0, r.frame_times)
    ours = measattn.equiangular_reference(norm, n, beta, rho0, r.frame_times, r0=r0, steps=2000)
    np.testing.assert_allclose(ours["one_minus_rho"], u_ref, rtol=1e-9)
    np.testing.assert_allclose(ours["norm"], r_ref, rtol=1e-11)
    u = np.array([one_minus_rho(f) for f in r.frames])
    np.testing.assert_allclose(u, u_ref, rtol=1e-8)
    np.testing.assert_allclose(np.linalg.norm(r.frames, axis=2).mean(axis=1), r_ref, rtol=1e-10)


def test_post_exponential_pre_algebraic():
    n, d, beta, rho0 = 5, 7, 1.0, 0.3
    x = equiangular(n, d, rho0, seed=5)
    model = measattn.Model.canonical(d, beta)
    post = measattn.flow(model, x, time=14.0, scheme="dopri5", tolerance=1e-12, save_every=1,
                         norm="post")
    t = post.frame_times
    keep = t >= 7
    rate = np.polyfit(t[keep], np.log([one_minus_rho(f) for f in post.frames[keep]]), 1)[0]
    pre = measattn.flow(model, x, time=2000.0, scheme="dopri5", tolerance=1e-12, save_every=1,
                        norm="pre")
    t = pre.frame_times
    keep = t >= 200
    exponent = np.polyfit(np.log(t[keep]),
                          np.log([one_minus_rho(f) for f in pre.frames[keep]]), 1)[0]
    assert rate == pytest.approx(-2.0, abs=0.01)
    assert exponent == pytest.approx(-2.0, abs=0.05)


def test_causal_leader_and_sinkformer_kernel():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(10, 4))
    x[0] = [0.0, 0.0, 1.0, 0.0]
    model = measattn.Model.canonical(4, 1.0)
    for scheme in ["euler", "heun", "rk4", "dopri5"]:
        r = measattn.flow(model, x, time=20.0, steps=200, scheme=scheme, norm="post",
                          causal=True, save_every=20)
        assert all((f[0] == x[0]).all() for f in r.frames), scheme  # bit-identical
        u = r.particles / np.linalg.norm(r.particles, axis=1, keepdims=True)
        assert (u[1:] @ u[0]).min() > 0.999, scheme
    # Causal field = attention with the causal mask (PyTorch convention of attend).
    f = measattn.flow_field(model, x, causal=True)
    np.testing.assert_allclose(f, model.attend(x, causal=True), rtol=0, atol=1e-14)
    # Sinkhorn: the kernel is doubly stochastic, so with V = I the mean of the field
    # is the mean of the tokens (softmax rows alone do not balance the columns).
    f = measattn.flow_field(model, x, normalization="sinkhorn", sinkhorn_iterations=300)
    np.testing.assert_allclose(f.mean(axis=0), x.mean(axis=0), atol=1e-10)
    assert np.abs(measattn.flow_field(model, x).mean(axis=0) - x.mean(axis=0)).max() > 1e-3


def test_interrupted_and_resumed_flows_are_bit_identical(tmp_path):
    rng = np.random.default_rng(9)
    x = rng.normal(size=(12, 3))
    model = measattn.Model.random(3, 1, bias=True, seed=4)
    for kw in [dict(causal=True), dict(norm="pre"),
               dict(normalization="sinkhorn", sinkhorn_iterations=3)]:
        for scheme in ["euler", "rk4", "dopri5"]:
            args = dict(time=2.0, steps=30, scheme=scheme, tolerance=1e-9, save_every=3, **kw)
            full = measattn.flow(model, x, **args)
            path = str(tmp_path / f"ck_{scheme}_{len(kw)}_{sorted(kw)[0]}")

            def stop(done, total):
                if done == 12 and scheme != "dopri5" or scheme == "dopri5" and done > 400:
                    raise RuntimeError("stop")
            with pytest.raises(RuntimeError):
                measattn.flow(model, x, checkpoint_every=5, checkpoint_path=path, progress=stop,
                              **args)
            resumed = measattn.flow(model, x, checkpoint_path=path, resume=True, **args)
            assert resumed.resumed and resumed.resumed_from_step > 0, (kw, scheme)
            assert resumed.particles.tobytes() == full.particles.tobytes(), (kw, scheme)
            assert resumed.frames.tobytes() == full.frames.tobytes(), (kw, scheme)


def test_cli_outputs_and_resume(tmp_path):
    x = save_npy(tmp_path / "eq.npy", equiangular(6, 8, 0.2, seed=1))
    base = ["flow", "--builtin", "sa", "--beta", 1, "--tokens", x]
    run_cli([*base, "--time", 200, "--scheme", "dopri5", "--tol", 1e-11, "--norm", "pre",
             "--save-every", 2, "--no-plot", "--out", tmp_path / "pre"], check=True)
    s = json.loads((tmp_path / "pre" / "summary.json").read_text())
    assert s["norm"] == "pre" and s["sphere"] is False
    assert s["equiangular_start"]["rho0"] == pytest.approx(0.2, abs=1e-12)
    rows = np.genfromtxt(tmp_path / "pre" / "cosines.csv", delimiter=",", names=True)
    np.testing.assert_allclose(rows["one_minus_cosine"], rows["reference_one_minus_cosine"],
                               rtol=1e-7)
    assert [f["one_minus_cosine"] for f in s["frames"]] == pytest.approx(
        list(rows["one_minus_cosine"]), rel=1e-15)
    # --norm post is --sphere: the same final particles, and --sphere alone writes what it
    # wrote before (no clustering columns, no cosines.csv).
    for flags, out in [(["--sphere"], "s"), (["--norm", "post"], "p")]:
        run_cli([*base, "--time", 2, "--steps", 20, *flags, "--no-plot", "--out", tmp_path / out],
                check=True)
    assert (tmp_path / "s" / "final.npy").read_bytes() == (tmp_path / "p" / "final.npy").read_bytes()
    assert not (tmp_path / "s" / "cosines.csv").exists()
    sphere = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert "norm" not in sphere and "one_minus_cosine" not in sphere["frames"][0]
    # Causal and Sinkhorn flows resume from their checkpoints (the last one at step 8 of 10).
    r = save_npy(tmp_path / "r.npy", np.random.default_rng(2).normal(size=(15, 3)))
    for flags in [["--causal", "--norm", "post"],
                  ["--normalization", "sinkhorn", "--sinkhorn-iterations", 4]]:
        args = ["flow", "--builtin", "sa", "--beta", 1, "--tokens", r, "--time", 2, "--steps", 10,
                "--scheme", "rk4", *flags, "--save-every", 2, "--no-plot"]
        run_cli([*args, "--out", tmp_path / "full"], check=True)
        run_cli([*args, "--checkpoint-every", 4, "--out", tmp_path / "ck"], check=True)
        run_cli([*args, "--checkpoint-every", 4, "--resume", "--out", tmp_path / "ck"], check=True)
        res = json.loads((tmp_path / "ck" / "summary.json").read_text())
        assert res["resumed"] and res["resumed_from_step"] == 8
        for name in ["final.npy", "trajectory.npy"]:
            assert (tmp_path / "ck" / name).read_bytes() == (tmp_path / "full" / name).read_bytes()
        full = json.loads((tmp_path / "full" / "summary.json").read_text())
        if "--causal" in flags:
            assert "one_minus_cosine_to_first" in full["frames"][-1]
            start = load_npy(r)[0] / np.linalg.norm(load_npy(r)[0])
            assert np.abs(load_npy(tmp_path / "full" / "final.npy")[0] - start).max() < 1e-15


@pytest.mark.parametrize("flags,flag", [
    (["--norm", "mid"], "--norm"),
    (["--norm", "pre", "--sphere"], "--norm"),
    (["--normalization", "bogus"], "--normalization"),
    (["--normalization", "sinkhorn"], "--sinkhorn-iterations"),
    (["--normalization", "sinkhorn", "--sinkhorn-iterations", 2, "--causal"], "--normalization"),
    (["--sinkhorn-iterations", -1], "--sinkhorn-iterations"),
    (["--norm", "pre", "--unnormalized"], "--unnormalized"),
])
def test_cli_refusals(tmp_path, flags, flag):
    x = save_npy(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(5, 3)))
    proc = run_cli(["flow", "--builtin", "sa", "--beta", 1, "--tokens", x, "--time", 1, "--steps",
                    4, *flags, "--out", tmp_path / "o"])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"measattn: error: {flag}:"), proc.stderr
    assert not (tmp_path / "o").exists()


def test_pre_norm_token_at_the_origin_and_python_refusals():
    x = np.random.default_rng(3).normal(size=(5, 3))
    x[2] = 0
    model = measattn.Model.canonical(3, 2.0)
    r = measattn.flow(model, x, time=0.1, steps=1, norm="pre")
    assert np.isfinite(r.particles).all()
    u = np.where(np.linalg.norm(x, axis=1, keepdims=True) > 0,
                 x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300), 0)
    np.testing.assert_allclose(r.particles[2], 0.1 * u.mean(axis=0), atol=1e-15)
    with pytest.raises(ValueError, match="norm: unknown normalization placement"):
        measattn.flow(model, x, norm="middle")
    with pytest.raises(ValueError, match="norm: pre contradicts sphere"):
        measattn.flow(model, x, norm="pre", sphere=True)
    with pytest.raises(ValueError, match="normalization: sinkhorn attention does not support"):
        measattn.flow(model, x, causal=True, normalization="sinkhorn")
    with pytest.raises(ValueError, match="rho0"):
        measattn.equiangular_reference("pre", 4, 1.0, -0.5, [1.0])
