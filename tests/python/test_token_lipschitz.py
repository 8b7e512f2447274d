"""Token-level Lipschitz constants against PyTorch: the Krylov local constant
against torch's dense Jacobian and torch.linalg.matrix_norm(ord=2) to 1e-10
(random layers with heads, biases, residual; Castin's clustered sequences), the
proved bound token_ball_l2 never beaten, the sqrt(n) law of the hardmax regime,
and `measattn lipschitz --token --sizes`."""

import json

import numpy as np
import pytest
import torch

import measattn
from conftest import run_cli

torch.set_default_dtype(torch.float64)


def torch_layer(model, residual):
    """X (n, d) -> (Gamma_{mu_X}(x_i))_i with uniform weights, in torch."""
    e, h = model.w_q.shape[0], model.num_heads
    k = e // h
    tau = model.scale if model.scale > 0 else np.sqrt(k)
    t = {name: torch.tensor(np.asarray(getattr(model, name)))
         for name in ("w_q", "w_k", "w_v", "w_o", "b_q", "b_k", "b_v", "b_o")}

    def bias(name, size):
        return t[name] if t[name].numel() else torch.zeros(size)

    def f(x):
        q = x @ t["w_q"].T + bias("b_q", e)
        kk = x @ t["w_k"].T + bias("b_k", e)
        v = x @ t["w_v"].T + bias("b_v", e)
        heads = []
        for i in range(h):
            s = slice(i * k, (i + 1) * k)
            p = torch.softmax(q[:, s] @ kk[:, s].T / tau, dim=1)
            heads.append(p @ v[:, s])
        out = torch.cat(heads, dim=1) @ t["w_o"].T + bias("b_o", t["w_o"].shape[0])
        return out + x if residual else out
    return f


def torch_norm(model, x, residual=False):
    jac = torch.autograd.functional.jacobian(torch_layer(model, residual), torch.tensor(x))
    n, d = x.shape
    jac = jac.reshape(n * jac.shape[1], n * d)
    return float(torch.linalg.matrix_norm(jac, ord=2))


def castin_layer(a):
    d = a.shape[0]
    return measattn.Model(np.eye(d), a, np.eye(d), np.eye(d), scale=1.0)


def test_castin_clustered_case():
    m = castin_layer(np.diag([1.0, -0.2]))
    x = measattn.castin_adversarial_tokens(m, 2, 6.0)
    ref = torch_norm(m, x)
    r = measattn.token_jacobian_norm(m, x)
    assert ref == pytest.approx(1.41491, abs=1e-5)
    assert r.value == pytest.approx(ref, rel=1e-10)
    assert r.status == "converged" and r.converged and r.method == "lanczos"
    assert r.lower == r.value and r.lower <= ref * (1 + 1e-13) <= r.upper * (1 + 2e-13)
    assert r.residual <= 1e-10 * r.value ** 2 and r.products > 0


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("radius,n", [(1.0, 100), (6.0, 2), (3.0, 10), (6.0, 40)])
def test_castin_sequences_against_torch(sign, radius, n):
    m = castin_layer(np.diag([sign, -0.2 * sign]))
    x = measattn.castin_adversarial_tokens(m, n, radius)
    ref = torch_norm(m, x)
    r = measattn.token_jacobian_norm(m, x)
    assert r.value == pytest.approx(ref, rel=1e-10)
    assert r.upper >= ref * (1 - 1e-13)


@pytest.mark.parametrize("seed", range(8))
def test_random_layers_against_torch(seed):
    rng = np.random.default_rng(seed)
    d, heads = [(4, 2), (6, 3), (4, 1), (8, 2)][seed % 4]
    m = measattn.Model.random(d, heads, seed % 2 == 1, seed=seed)
    residual = seed % 3 == 0
    x = rng.normal(size=(3 + seed, d)) * (0.5 + seed % 3)
    ref = torch_norm(m, x, residual)
    r = measattn.token_jacobian_norm(m, x, residual=residual, seed=seed)
    assert r.converged, r.message
    assert r.value == pytest.approx(ref, rel=1e-10)
    assert r.lower <= ref * (1 + 1e-13) and r.upper >= ref * (1 - 1e-13)


def test_ball_bound_is_never_beaten():
    rng = np.random.default_rng(3)
    for t in range(60):
        d, heads, n = 2 + t % 3, 1 + t % 2, 1 + t % 5
        radius = 0.5 + (t % 6)
        m = measattn.Model.random(2 * d, heads, t % 2 == 0, seed=100 + t)
        bound = measattn.token_ball_upper_bound(m, radius, n, residual=t % 4 == 0).value
        ub = measattn.lipschitz_upper_bounds(m, radius, residual=t % 4 == 0, tokens=n)
        assert ub.get("token_ball_l2") == bound
        kinds = {b.name: b.kind for b in ub.bounds}
        assert kinds["token_ball_l2"] == "token_l2_ball"
        for _ in range(4):
            x = rng.normal(size=(n, 2 * d))
            x *= radius * rng.uniform(0, 1, size=(n, 1)) / np.linalg.norm(x, axis=1, keepdims=True)
            assert torch_norm(m, x, t % 4 == 0) <= bound * (1 + 1e-12)
        s = measattn.token_lipschitz_lower_bound(m, tokens=n, radius=radius, restarts=4, steps=10,
                                                 residual=t % 4 == 0, seed=t)
        assert s.value <= bound * (1 + 1e-12)
        assert np.linalg.norm(s.tokens, axis=1).max() <= radius * (1 + 1e-12)
        assert s.origin in ("castin", "castin_other", "outlier", "random")


def test_search_witness_is_recomputed_by_torch():
    m = measattn.Model.random(4, 2, True, seed=9)
    s = measattn.token_lipschitz_lower_bound(m, tokens=5, radius=2.0, restarts=8, steps=30)
    assert s.value == pytest.approx(torch_norm(m, s.tokens), rel=1e-10)
    assert len(s.restart_values) == 8 and max(s.restart_values) == s.value


def test_hardmax_regime_sqrt_n_law():
    # R = 10, A = diag(1, -0.2): Castin's sequence is in the hardmax regime, where
    # every token attends to the first one and ||J|| = ||P (x) I|| -> sqrt(n).
    m = castin_layer(np.diag([1.0, -0.2]))
    r = measattn.token_lipschitz_sweep(m, [2, 4, 8, 16, 32, 64], 10.0, restarts=2, steps=5)
    assert abs(r.exponent_castin - 0.5) <= 0.05
    for n, c, low, up in zip(r.sizes, r.castin, r.lower, r.upper):
        assert c == pytest.approx(np.sqrt(n), rel=1e-6)
        assert c <= low <= up
    # The proved bound: sqrt(n) growth (exponent near 1/2 once it dominates).
    big = [measattn.token_ball_upper_bound(m, 10.0, n).value for n in (10 ** 4, 10 ** 6)]
    assert np.log(big[1] / big[0]) / np.log(100) == pytest.approx(0.5, abs=0.05)


def test_mean_field_regime_saturates():
    m = measattn.Model.random(4, 2, False, seed=5)
    b = [measattn.token_ball_upper_bound(m, 0.3, n) for n in (10 ** 4, 10 ** 6)]
    assert b[0].mean_field and b[0].value == b[1].value


def test_cli_token_sweep(tmp_path):
    model = tmp_path / "m.safetensors"
    castin_layer(np.diag([1.0, -0.2])).save(str(model))
    out = json.loads(run_cli(["lipschitz", "--token", "--model", model, "--radius", "10",
                              "--sizes", "2,4,8,16", "--token-restarts", "2", "--steps", "5",
                              "--csv", tmp_path / "t.csv", "--json"], check=True).stdout)
    assert out["mode"] == "token" and out["sizes"] == [2, 4, 8, 16]
    assert out["upper_name"] == "token_ball_l2"
    assert abs(out["exponent_castin"] - 0.5) < 0.01
    assert all(c <= lo <= up for c, lo, up in zip(out["castin"], out["lower"], out["upper"]))
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[0] == "n,lower,castin,upper" and len(lines) == 5
    text = run_cli(["lipschitz", "--token", "--model", model, "--radius", "10", "--sizes", "2,4",
                    "--token-restarts", "1", "--steps", "2"], check=True).stdout
    assert "token_ball_l2" in text and "exponent of the lower bound" in text


@pytest.mark.parametrize("args,fragment", [
    (["--sizes", "4,2"], "sizes: must be increasing"),
    (["--sizes", "0,2"], "sizes: every size must be >= 1"),
    (["--token-restarts", "0"], "--token-restarts"),
])
def test_cli_token_bad_input(tmp_path, args, fragment):
    model = tmp_path / "m.safetensors"
    castin_layer(np.diag([1.0, -0.2])).save(str(model))
    proc = run_cli(["lipschitz", "--token", "--model", model, "--radius", "1", *args])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
    assert proc.stdout == ""


def test_lipschitz_report_has_the_ball_bound(tmp_path):
    model = tmp_path / "m.safetensors"
    measattn.Model.random(4, 2, True, seed=1).save(str(model))
    out = json.loads(run_cli(["lipschitz", "--model", model, "--radius", "1.5", "--atoms", "3",
                              "--restarts", "2", "--steps", "5", "--json"], check=True).stdout)
    assert out["upper_bound_kinds"]["token_ball_l2"] == "token_l2_ball"
    tl = out["token_level"]
    assert tl["value"] <= tl["token_ball_l2"] and tl["gap_token_ball"] >= 1
