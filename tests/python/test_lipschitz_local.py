"""The local certificate around a measure (lipschitz_local_bound; docs/theory.md,
section 6c), against an independent NumPy evaluation of its formula from a
PyTorch layer's weights, and through the CLI (`lipschitz --local`)."""
import json

import numpy as np
import pytest
import torch

import measattn
from conftest import run_cli, save_mha_safetensors, save_npy


def local_bound_numpy(mha, x, w, radius, eps):
    """L_loc(eps) of docs/theory.md 6c from nn.MultiheadAttention's weights."""
    e = mha.embed_dim
    heads = mha.num_heads
    k = e // heads
    wq, wk, wv = mha.in_proj_weight.detach().double().numpy().reshape(3, e, e)
    bq = mha.in_proj_bias.detach().double().numpy()[:e]
    wo = mha.out_proj.weight.detach().double().numpy()
    tau = np.sqrt(k)
    total = 0.0
    for h in range(heads):
        rows = slice(h * k, (h + 1) * k)
        q, kk, v = wq[rows], wk[rows], wv[rows]
        p = np.linalg.norm(wo[:, rows] @ v, 2)
        a_mat = q.T @ kk / tau
        x_core = np.linalg.norm(a_mat, 2) * radius ** 2
        a = (x @ q.T + bq[rows]) @ kk / tau  # a_i, rows
        norms = np.linalg.norm(a, axis=1)
        logits = a @ x.T + np.log(w)[None, :]
        top = logits.max(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        s = np.exp(radius * norms - lse)
        assert np.all(eps * norms * s < 1)
        total += p * (np.sum(w * (1 + 2 * radius * norms) * s / (1 - eps * norms * s))
                      + 3 * x_core)
    return total


@pytest.mark.parametrize("heads,radius,eps", [(1, 0.5, 1e-2), (2, 1.0, 1e-3), (4, 2.0, 1e-5)])
def test_local_bound_is_its_formula(heads, radius, eps):
    torch.manual_seed(heads)
    mha = torch.nn.MultiheadAttention(8, heads, dtype=torch.float64)
    model = measattn.Model.from_torch(mha)
    rng = np.random.default_rng(heads)
    x = rng.normal(size=(20, 8))
    x *= radius * rng.uniform(0.2, 1.0, size=(20, 1)) / np.linalg.norm(x, axis=1, keepdims=True)
    w = rng.uniform(0.1, 1.0, size=20)
    w /= w.sum()
    r = measattn.lipschitz_local_bound(model, measattn.Measure(x, w), eps, radius=radius)
    assert r.upper == pytest.approx(local_bound_numpy(mha, x, w, radius, eps), rel=1e-10)
    assert r.upper_at_zero == pytest.approx(local_bound_numpy(mha, x, w, radius, 0.0), rel=1e-10)
    assert r.global_upper == measattn.lipschitz_upper_bounds(model, radius).best_w1
    assert r.best_upper == min(r.upper, r.global_upper)
    # The witness is a measure in B_R within eps, and its ratio is the lower bound.
    assert 0 < r.witness_w1 <= eps
    assert np.linalg.norm(r.witness_atoms, axis=1).max() <= radius * (1 + 1e-12)
    nu = measattn.Measure(r.witness_atoms, r.witness_weights)
    assert measattn.lipschitz_ratio(model, nu, measattn.Measure(x, w)) == r.lower
    assert 0 < r.lower <= r.best_upper


def test_cli_local(tmp_path):
    torch.manual_seed(7)
    mha = torch.nn.MultiheadAttention(4, 2, dtype=torch.float64)
    layer = save_mha_safetensors(tmp_path / "m.safetensors", mha, num_heads=2)
    x = np.random.default_rng(7).normal(size=(9, 4)) / 2
    tokens = save_npy(tmp_path / "x.npy", x)
    proc = run_cli(["lipschitz", "--local", "--model", layer, "--tokens", tokens, "--eps",
                    "1e-3", "--json"], check=True)
    report = json.loads(proc.stdout)
    direct = measattn.lipschitz_local_bound(measattn.Model.from_torch(mha), x, 1e-3)
    assert report["mode"] == "local"
    assert report["local_upper"] == direct.upper
    assert report["lower_bound"] == direct.lower
    assert report["radius"] == direct.radius == np.linalg.norm(x, axis=1).max()
    assert report["lower_bound"] <= report["best_upper"] <= report["global_upper"]
    text = run_cli(["lipschitz", "--local", "--model", layer, "--tokens", tokens, "--eps",
                    "1e-3"], check=True).stdout
    assert "local upper (W1)" in text and "lower bound (W1)" in text


@pytest.mark.parametrize("args,message", [
    (["--eps", "0"], "--eps: must be positive and finite"),
    (["--eps", "1e-3", "--radius", "0.01"], "--radius: mu has an atom of norm"),
    ([], "--eps: must be positive and finite"),
    (["--eps", "1e-3", "--csv", "t.csv"], "--witness/--csv/--plot: not with --local"),
])
def test_cli_local_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    torch.manual_seed(8)
    mha = torch.nn.MultiheadAttention(4, 1, dtype=torch.float64)
    layer = save_mha_safetensors(tmp_path / "m.safetensors", mha, num_heads=1)
    tokens = save_npy(tmp_path / "x.npy", np.random.default_rng(8).normal(size=(5, 4)))
    proc = run_cli(["lipschitz", "--local", "--model", layer, "--tokens", tokens, *args])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "t.csv").exists()


def test_cli_tokens_without_local_is_refused(tmp_path):
    torch.manual_seed(9)
    mha = torch.nn.MultiheadAttention(4, 1, dtype=torch.float64)
    layer = save_mha_safetensors(tmp_path / "m.safetensors", mha, num_heads=1)
    tokens = save_npy(tmp_path / "x.npy", np.zeros((3, 4)))
    proc = run_cli(["lipschitz", "--model", layer, "--radius", "1", "--tokens", tokens])
    assert proc.returncode == 2
    assert "only with --local" in proc.stderr
