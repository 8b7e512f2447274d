"""`measattn maxent`, `measattn entropy` and Sinkhorn attention (docs/theory.md#maxent).

References: SciPy's brentq on the one-dimensional map beta -> E_beta[g] - c,
closed-form Gibbs measures in NumPy, PyTorch's attention weights
(need_weights=True, average_attn_weights=False), and an independent NumPy
log-domain Sinkhorn.
"""

import json
import math
import os

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.special import logsumexp

from conftest import load_npy, run_cli, save_mha_safetensors, save_npy

torch.set_num_threads(2)


def maxent_cli(tmp_path, g, w=None, target=None, beta=None, extra=()):
    args = ["maxent", "--scores", save_npy(tmp_path / "g.npy", g), "--json"]
    if w is not None:
        args += ["--weights", save_npy(tmp_path / "w.npy", w)]
    if target is not None:
        args += ["--target", repr(float(target))]
    if beta is not None:
        args += ["--beta", repr(float(beta))]
    proc = run_cli(args + list(extra), check=True)
    return json.loads(proc.stdout)


def gibbs_np(g, w, beta):
    lw = np.where(w > 0, np.log(np.where(w > 0, w, 1) / w.sum()), -np.inf)
    a = beta * g + lw
    lz = logsumexp(a)
    p = np.exp(a - lz)
    return p, lz


def expected(g, w, beta):
    p, _ = gibbs_np(g, w, beta)
    return float(p @ g)


def test_maxent_matches_brentq_on_random_instances(tmp_path):
    rng = np.random.default_rng(0)
    for trial in range(25):
        m = int(rng.integers(2, 40))
        g = rng.normal(scale=float(rng.choice([0.1, 1.0, 10.0])), size=m)
        w = rng.uniform(0.05, 1.0, size=m)
        if trial % 3 == 0 and m > 3:
            w[1::3] = 0.0
        supp = w > 0
        lo, hi = g[supp].min(), g[supp].max()
        if hi - lo < 1e-9:
            continue
        c = lo + (hi - lo) * rng.uniform(0.02, 0.98)
        r = maxent_cli(tmp_path, g, w, target=c)
        assert r["status"] == "converged"
        f = lambda b: expected(g, w, b) - c  # noqa: E731
        a, b = -1.0, 1.0
        while f(a) > 0:
            a *= 2
        while f(b) < 0:
            b *= 2
        beta_ref = brentq(f, a, b, xtol=1e-15, rtol=1e-15, maxiter=500)
        p_ref, lz = gibbs_np(g, w, beta_ref)
        var = float(p_ref @ (g - p_ref @ g) ** 2)
        tol = 1e-10 * max(1.0, abs(beta_ref)) + 1e-14 * np.abs(g).max() / var
        assert abs(r["beta"] - beta_ref) <= tol, (trial, r["beta"], beta_ref, var)
        p = np.array(r["probabilities"])
        assert np.max(np.abs(p - p_ref)) < 1e-9
        assert np.all(p[~supp] == 0.0)
        assert abs(r["expected_score"] - c) <= 1e-13 * max(1.0, np.abs(g).max())
        ent = -float(np.sum(p_ref[supp] * np.log(p_ref[supp])))
        wn = w / w.sum()
        kl = float(np.sum(p_ref[supp] * np.log(p_ref[supp] / wn[supp])))
        assert abs(r["entropy"] - ent) < 1e-9
        assert abs(r["kl"] - kl) < 1e-9
        assert abs(r["log_partition"] - lz) < 1e-9 * max(1.0, abs(lz))
        assert 0.0 <= r["gap"] < 1e-12
        assert r["score_min"] == lo and r["score_max"] == hi


def test_softmax_target_gives_beta_one(tmp_path):
    rng = np.random.default_rng(1)
    for _ in range(10):
        g = rng.normal(size=17)
        p, _ = gibbs_np(g, np.ones(17), 1.0)
        r = maxent_cli(tmp_path, g, target=float(p @ g))
        assert abs(r["beta"] - 1.0) < 1e-12
        assert r["gap"] < 1e-14


def test_beta_mode_and_text_output(tmp_path):
    g = np.array([0.3, -1.2, 2.0, 0.7])
    w = np.array([1.0, 2.0, 0.0, 1.0])
    r = maxent_cli(tmp_path, g, w, beta=-3.5)
    p, lz = gibbs_np(g, w, -3.5)
    assert np.allclose(r["probabilities"], p, atol=1e-15, rtol=0)
    assert abs(r["log_partition"] - lz) < 1e-14
    assert r["gap"] < 1e-15 and r["target"] is None
    text = run_cli(["maxent", "--scores", tmp_path / "g.npy", "--target", "0.5"], check=True)
    for key in ("beta", "probabilities", "expected_score", "entropy", "kl", "log_partition",
                "gap"):
        assert key in text.stdout


def test_targets_near_the_ends_and_huge_scores(tmp_path):
    g = np.array([-1.0, 0.0, 0.5, 2.0])
    r = maxent_cli(tmp_path, g, target=2 - 1e-12)
    assert r["status"] == "converged" and 15 < r["beta"] < 25
    assert all(math.isfinite(x) for x in r["probabilities"])
    big = np.array([1e150, 1e150 + 1e135, 1e150 + 3e135])
    r = maxent_cli(tmp_path, big, target=1e150 + 2e135)
    assert r["status"] == "converged" and math.isfinite(r["log_partition"])
    assert abs(r["expected_score"] - (1e150 + 2e135)) < 1e121


@pytest.mark.parametrize("args,needle", [
    (["--target", "2.0"], "--target"),
    (["--target", "5"], "(-1.2, 2)"),
    (["--target", "nan"], "--target"),
    ([], "--target/--beta"),
    (["--target", "1", "--beta", "1"], "--beta"),
    (["--target", "1", "--max-iterations", "0"], "--max-iterations"),
])
def test_maxent_bad_input(tmp_path, args, needle):
    g = save_npy(tmp_path / "g.npy", [0.3, -1.2, 2.0, 0.7])
    proc = run_cli(["maxent", "--scores", g] + args)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and needle in proc.stderr
    assert proc.stdout == ""


def test_maxent_bad_files(tmp_path):
    g = save_npy(tmp_path / "g.npy", [0.3, -1.2, 2.0])
    save_npy(tmp_path / "neg.npy", [1.0, -1.0, 1.0])
    save_npy(tmp_path / "short.npy", [1.0, 1.0])
    for extra, needle in ((["--weights", tmp_path / "neg.npy"], "neg.npy"),
                          (["--weights", tmp_path / "short.npy"], "short.npy"),
                          (["--weights", tmp_path / "missing.npy"], "missing.npy")):
        proc = run_cli(["maxent", "--scores", g, "--target", "0"] + extra)
        assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    proc = run_cli(["maxent", "--scores", tmp_path / "nope.npy", "--beta", "1"])
    assert proc.returncode == 2 and "nope.npy" in proc.stderr
    # Constant scores: only that target is feasible, with beta = 0.
    k = save_npy(tmp_path / "k.npy", [4.0, 4.0, 4.0])
    r = json.loads(run_cli(["maxent", "--scores", k, "--target", "4", "--json"],
                           check=True).stdout)
    assert r["beta"] == 0.0 and np.allclose(r["probabilities"], 1 / 3)
    proc = run_cli(["maxent", "--scores", k, "--target", "4.5"])
    assert proc.returncode == 2 and "constant" in proc.stderr


# ---- entropy diagnostics against PyTorch ------------------------------------

def make_mha(e, heads, seed, std=None):
    torch.manual_seed(seed)
    m = torch.nn.MultiheadAttention(e, heads, bias=True, batch_first=True, dtype=torch.float64)
    std = std if std is not None else 1.0 / math.sqrt(e)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, std)
    return m.eval()


def torch_weights(m, x, mask=None):
    t = torch.from_numpy(x)[None]
    with torch.no_grad():
        _, w = m(t, t, t, need_weights=True, average_attn_weights=False,
                 attn_mask=None if mask is None else torch.from_numpy(mask))
    return w[0].numpy()  # heads x n x n


def entropy_rows(p):
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0.0), axis=-1)


def head_logits(m, x, heads):
    e = x.shape[1]
    k = e // heads
    w = m.in_proj_weight.detach().numpy()
    b = m.in_proj_bias.detach().numpy()
    q = x @ w[:e].T + b[:e]
    kk = x @ w[e:2 * e].T + b[e:2 * e]
    return [q[:, h * k:(h + 1) * k] @ kk[:, h * k:(h + 1) * k].T / math.sqrt(k)
            for h in range(heads)]


@pytest.mark.parametrize("n,heads,weighted,causal", [
    (30, 2, False, False), (57, 4, True, False), (300, 2, False, False), (40, 2, False, True)])
def test_entropy_matches_pytorch_attention_weights(tmp_path, n, heads, weighted, causal):
    e = 8
    rng = np.random.default_rng(n)
    m = make_mha(e, heads, seed=n, std=1.5 / math.sqrt(e))
    x = rng.normal(size=(n, e))
    model = save_mha_safetensors(tmp_path / "m.safetensors", m, heads)
    args = ["entropy", "--model", model, "--tokens", save_npy(tmp_path / "x.npy", x), "--json",
            "--betas", "-2,0,0.5,1,3"]
    mask = np.zeros((n, n))
    w = np.ones(n) / n
    if weighted:
        w = rng.uniform(0.1, 1.0, size=n)
        w /= w.sum()
        args += ["--weights", save_npy(tmp_path / "w.npy", w)]
        mask = mask + np.log(w)[None, :]
    if causal:
        args += ["--causal"]
        mask = mask + np.triu(np.full((n, n), -np.inf), 1)
    r = json.loads(run_cli(args, check=True).stdout)
    ref = torch_weights(m, x, mask if (weighted or causal) else None)
    h_ref = entropy_rows(ref)  # heads x n
    logits = head_logits(m, x, heads)
    assert len(r["heads"]) == heads
    for h, head in enumerate(r["heads"]):
        ent = np.array(head["entropy"])
        assert np.max(np.abs(ent - h_ref[h])) < 1e-11, h
        assert np.allclose(head["effective_tokens"], np.exp(h_ref[h]), rtol=1e-11, atol=0)
        assert abs(head["mean_entropy"] - float(w @ h_ref[h])) < 1e-11
        assert abs(head["min_entropy"] - h_ref[h].min()) < 1e-11
        assert abs(head["max_entropy"] - h_ref[h].max()) < 1e-11
        assert np.allclose(head["expected_logit"], np.sum(ref[h] * np.where(
            np.isfinite(mask), logits[h], 0.0), axis=1), atol=1e-11, rtol=0)
        # Temperature curve: Gibbs measures of beta * logits + mask.
        curve = head["temperature_curve"]
        assert curve["beta"] == [-2.0, 0.0, 0.5, 1.0, 3.0]
        for b, beta in enumerate(curve["beta"]):
            a = beta * logits[h] + mask
            p = np.exp(a - logsumexp(a, axis=1, keepdims=True))
            assert abs(curve["mean_entropy"][b] - float(w @ entropy_rows(p))) < 1e-11
            eg = np.sum(p * np.where(np.isfinite(mask), logits[h], 0.0), axis=1)
            assert abs(curve["mean_expected_logit"][b] - float(w @ eg)) < 1e-11
        # beta = 1 of the curve is the model's own kernel.
        assert abs(curve["mean_entropy"][3] - head["mean_entropy"]) < 1e-12


def test_entropy_plot_and_default_grid(tmp_path):
    m = make_mha(8, 2, seed=3)
    model = save_mha_safetensors(tmp_path / "m.safetensors", m, 2)
    x = save_npy(tmp_path / "x.npy", np.random.default_rng(3).normal(size=(25, 8)))
    png = tmp_path / "curve.png"
    r = json.loads(run_cli(["entropy", "--model", model, "--tokens", x, "--json", "--plot", png],
                           check=True).stdout)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv = (tmp_path / "curve.csv").read_text().splitlines()
    assert csv[0] == "head,beta,mean_entropy,mean_expected_logit" and len(csv) == 1 + 2 * 35
    assert len(r["heads"][0]["temperature_curve"]["beta"]) == 35
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]
    text = run_cli(["entropy", "--model", model, "--tokens", x], check=True).stdout
    assert "mean_H" in text and "temperature curve" in text


def test_entropy_bad_input_writes_nothing(tmp_path):
    m = make_mha(8, 2, seed=4)
    model = save_mha_safetensors(tmp_path / "m.safetensors", m, 2)
    x = save_npy(tmp_path / "x.npy", np.zeros((5, 8)))
    bad = save_npy(tmp_path / "bad.npy", np.zeros((5, 3)))
    png = tmp_path / "p.png"
    cases = [
        (["--tokens", bad, "--plot", png], "bad.npy"),
        (["--tokens", x, "--plot", tmp_path / "nodir" / "p.png"], "--plot"),
        (["--tokens", x, "--betas", "1,x", "--plot", png], "--betas"),
        (["--tokens", x, "--weights", save_npy(tmp_path / "w.npy", [1, 1, 1]), "--plot", png],
         "w.npy"),
    ]
    for args, needle in cases:
        proc = run_cli(["entropy", "--model", model] + args)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and needle in proc.stderr, proc.stderr
        assert not png.exists()


# ---- Sinkhorn attention through `attend` --------------------------------------

def sinkhorn_np(logits, w, iters):
    lw = np.log(w)
    f = -logsumexp(logits + lw[None, :], axis=1)
    g = np.zeros_like(w)
    for _ in range(iters):
        g = -logsumexp(logits + (lw + f)[:, None], axis=0)
        f = -logsumexp(logits + (lw + g)[None, :], axis=1)
    return np.exp(f[:, None] + logits + (lw + g)[None, :])


def test_attend_sinkhorn_against_numpy(tmp_path):
    n, e, heads = 60, 8, 2
    rng = np.random.default_rng(7)
    m = make_mha(e, heads, seed=7, std=2.0 / math.sqrt(e))
    model = save_mha_safetensors(tmp_path / "m.safetensors", m, heads)
    x = rng.normal(size=(n, e))
    w = rng.uniform(0.2, 1.0, size=n)
    w /= w.sum()
    xs, ws = save_npy(tmp_path / "x.npy", x), save_npy(tmp_path / "w.npy", w)
    logits = head_logits(m, x, heads)
    wv = m.in_proj_weight.detach().numpy()[2 * e:]
    bv = m.in_proj_bias.detach().numpy()[2 * e:]
    v = x @ wv.T + bv
    k = e // heads
    out_w = m.out_proj.weight.detach().numpy()
    out_b = m.out_proj.bias.detach().numpy()
    for iters in (0, 1, 10, 200):
        out = tmp_path / f"o{iters}.npy"
        run_cli(["attend", "--model", model, "--tokens", xs, "--weights", ws, "--out", out,
                 "--normalization", "sinkhorn", "--sinkhorn-iters", iters], check=True)
        kernels = [sinkhorn_np(logits[h], w, iters) for h in range(heads)]
        fields = np.concatenate([kernels[h] @ v[:, h * k:(h + 1) * k] for h in range(heads)], 1)
        ref = fields @ out_w.T + out_b
        assert np.max(np.abs(load_npy(out) - ref)) < 1e-11 * np.max(np.abs(ref))
        for kern in kernels:
            assert np.allclose(kern.sum(axis=1), 1.0, atol=1e-13)
            col = w @ kern
            if iters == 200:
                assert np.max(np.abs(col - w)) < 1e-12
    soft = tmp_path / "soft.npy"
    run_cli(["attend", "--model", model, "--tokens", xs, "--weights", ws, "--out", soft],
            check=True)
    # Zero iterations is softmax: the head fields are bit-identical (same code);
    # the output projection may be fused differently on the softmax path.
    diff = np.max(np.abs(load_npy(soft) - load_npy(tmp_path / "o0.npy")))
    assert diff <= 1e-15 * np.max(np.abs(load_npy(soft)))
