"""The cosine potential G(x, y) = <q(x), kappa(y)> / (||q(x)|| ||kappa(y)|| tau)
against a dense PyTorch reference (torch.nn.functional.normalize on the
projected queries and keys, softmax with log-weights), in float64 to 1e-12;
safetensors metadata, the CLI, zero projections and the W1 bound."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
measattn = pytest.importorskip("measattn")

from conftest import load_npy, run_cli, save_npy  # noqa: E402

torch.set_default_dtype(torch.float64)


def random_model(embed, heads, bias, seed, kdim=None, scale=0.0):
    rng = np.random.default_rng(seed)
    kdim = kdim or embed
    p = dict(w_q=rng.normal(size=(embed, embed)) / np.sqrt(embed),
             w_k=rng.normal(size=(embed, kdim)) / np.sqrt(kdim),
             w_v=rng.normal(size=(embed, kdim)) / np.sqrt(kdim),
             w_o=rng.normal(size=(embed, embed)) / np.sqrt(embed))
    if bias:
        for b in ("b_q", "b_k", "b_v", "b_o"):
            p[b] = rng.normal(size=embed) * 0.5
    return measattn.Model(**p, num_heads=heads, potential="cosine", scale=scale)


def torch_cosine(model, tokens, weights=None, queries=None, causal=False, residual=False):
    """Dense reference: per head softmax(normalize(q) normalize(k)^T / tau + log w) v."""
    P = {k: torch.as_tensor(v) for k, v in model.parameters().items()
         if isinstance(v, np.ndarray)}
    x = torch.as_tensor(tokens)
    y = torch.as_tensor(queries) if queries is not None else x
    m = x.shape[0]
    w = torch.full((m,), 1.0 / m) if weights is None else torch.as_tensor(weights / weights.sum())
    E, H = model.embed_dim, model.num_heads
    k = E // H

    def lin(z, wname, bname):
        out = z @ P[wname].T
        b = P.get(bname)
        return out + b if b is not None else out

    q, kk, v = lin(y, "w_q", "b_q"), lin(x, "w_k", "b_k"), lin(x, "w_v", "b_v")
    heads = []
    for h in range(H):
        sl = slice(h * k, (h + 1) * k)
        qn = torch.nn.functional.normalize(q[:, sl], dim=1)
        kn = torch.nn.functional.normalize(kk[:, sl], dim=1)
        s = qn @ kn.T / model.tau + torch.log(w)[None, :]
        if causal:
            s = s.masked_fill(torch.triu(torch.ones_like(s, dtype=torch.bool), 1), float("-inf"))
        heads.append(torch.softmax(s, dim=1) @ v[:, sl])
    out = lin(torch.cat(heads, dim=1), "w_o", "b_o")
    if residual:
        out = out + y
    return out.numpy()


def rel_err(a, b):
    return np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(b)))


@pytest.mark.parametrize("embed,heads,bias", [(8, 1, True), (12, 3, True), (16, 4, False),
                                              (32, 8, True)])
def test_attend_cosine_equals_torch(embed, heads, bias):
    rng = np.random.default_rng(embed + heads)
    model = random_model(embed, heads, bias, seed=embed * heads)
    assert model.potential == "cosine"
    for n in (1, 9, 130):
        x = rng.normal(size=(n, embed)) * 2
        w = rng.uniform(0.05, 1.0, size=n)
        for causal in (False, True):
            ours = model.attend(x, weights=w, causal=causal)
            ref = torch_cosine(model, x, w, causal=causal)
            assert rel_err(ours, ref) < 1e-12, (n, causal, rel_err(ours, ref))
        ours = model.attend(x, residual=True)
        assert rel_err(ours, torch_cosine(model, x, residual=True)) < 1e-12
        assert rel_err(model.reference(x, weights=w), torch_cosine(model, x, w)) < 1e-12


def test_cross_attention_and_scale():
    rng = np.random.default_rng(3)
    model = random_model(8, 2, True, seed=4, kdim=5, scale=0.3)
    x, y = rng.normal(size=(40, 5)), rng.normal(size=(11, 8))
    assert rel_err(model.attend(x, queries=y), torch_cosine(model, x, queries=y)) < 1e-12


def test_zero_projection_gives_the_weights():
    rng = np.random.default_rng(5)
    m = random_model(6, 2, False, seed=6)
    p = m.parameters()
    p["w_k"] = np.zeros_like(p["w_k"])
    zero = measattn.Model(**p)
    x = rng.normal(size=(10, 6))
    w = rng.uniform(0.1, 1.0, size=10)
    kern = zero.kernel(x, weights=w, head=1)
    assert np.all(np.isfinite(kern))
    np.testing.assert_allclose(kern, np.tile(w / w.sum(), (10, 1)), rtol=0, atol=1e-15)


def test_sinkhorn_normalization_runs_and_is_doubly_stochastic():
    rng = np.random.default_rng(7)
    model = random_model(8, 2, True, seed=8)
    x = rng.normal(size=(25, 8))
    kern = model.kernel(x, normalization="sinkhorn", sinkhorn_iters=200)
    np.testing.assert_allclose(kern.sum(axis=1), 1, atol=1e-12)
    np.testing.assert_allclose(kern.sum(axis=0), 1, atol=1e-6)
    out = model.attend(x, normalization="sinkhorn", sinkhorn_iters=5)
    assert np.all(np.isfinite(out))


def test_safetensors_and_cli_round_trip(tmp_path):
    rng = np.random.default_rng(9)
    model = random_model(8, 2, True, seed=10)
    path = tmp_path / "cos.safetensors"
    model.save(str(path))
    back = measattn.load_model(str(path))
    assert back.potential == "cosine"
    x = rng.normal(size=(20, 8))
    save_npy(tmp_path / "x.npy", x)
    run_cli(["attend", "--model", path, "--tokens", tmp_path / "x.npy",
             "--out", tmp_path / "y.npy"], check=True)
    assert rel_err(load_npy(tmp_path / "y.npy"), torch_cosine(model, x)) < 1e-12


def test_w1_bound_holds_or_is_infinite_with_a_reason():
    rng = np.random.default_rng(11)
    model = random_model(3, 1, True, seed=12)
    p = model.parameters()
    p["b_q"] = p["b_q"] * 10 / np.linalg.norm(p["b_q"])  # q(x) stays away from 0 on B_1
    p["b_k"] = p["b_k"] * 10 / np.linalg.norm(p["b_k"])
    far = measattn.Model(**p)
    ub = measattn.lipschitz_upper_bounds(far, radius=1.0)
    assert np.isfinite(ub.best_w1)
    for _ in range(30):
        a, b = rng.normal(size=(3, 3)), rng.normal(size=(2, 3))
        a /= np.maximum(1, np.linalg.norm(a, axis=1))[:, None]
        b /= np.maximum(1, np.linalg.norm(b, axis=1))[:, None]
        ratio = measattn.lipschitz_ratio(far, measattn.Measure(a), measattn.Measure(b))
        assert ratio <= ub.best_w1 * (1 + 1e-9)
    p["b_q"] = np.zeros(3)  # q(0) = 0: no finite bound
    zero = measattn.Model(**p)
    ub = measattn.lipschitz_upper_bounds(zero, radius=1.0)
    assert np.isinf(ub.best_w1)
    assert all("may vanish" in b.meaning for b in ub.bounds)


def test_cli_lipschitz_reports_cosine(tmp_path):
    model = random_model(4, 2, True, seed=13)
    path = tmp_path / "cos.safetensors"
    model.save(str(path))
    proc = run_cli(["lipschitz", "--model", path, "--radius", "0.5", "--atoms", "2",
                    "--restarts", "2", "--steps", "3", "--json"], check=True)
    report = json.loads(proc.stdout)
    assert report["lower_bound"] <= (report["best_upper"] or float("inf"))
