"""`measattn attend` against PyTorch's nn.MultiheadAttention (docs/theory.md#attention).

Every comparison runs the CLI on files written here and PyTorch in float64
(float32 for the --dtype f32 path) on the same weights; relative error is
max|out - ref| / max|ref|.
"""

import math

import numpy as np
import pytest
import torch

from conftest import load_npy, run_cli, save_mha_safetensors, save_npy

torch.set_num_threads(2)


def make_mha(e, heads, bias=True, kdim=None, seed=0, dtype=torch.float64, std=None):
    """An nn.MultiheadAttention with random N(0, std^2) weights (std = 1/sqrt(E) by default)."""
    torch.manual_seed(seed)
    m = torch.nn.MultiheadAttention(e, heads, bias=bias, batch_first=True, kdim=kdim, vdim=kdim,
                                    dtype=dtype)
    std = std if std is not None else 1.0 / math.sqrt(e)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, std)
    return m.eval()


def torch_attention(m, queries, tokens, mask=None):
    q = torch.from_numpy(np.asarray(queries))[None]
    k = torch.from_numpy(np.asarray(tokens))[None]
    with torch.no_grad():
        out, _ = m(q, k, k, need_weights=False,
                   attn_mask=None if mask is None else torch.from_numpy(mask))
    return out[0].numpy()


def rel_err(out, ref):
    return float(np.max(np.abs(out - ref)) / max(np.max(np.abs(ref)), 1e-300))


def causal_mask(n, m=None):
    m = n if m is None else m
    mask = np.zeros((n, m))
    mask[np.triu_indices(n, 1, m)] = -np.inf
    return mask


def attend(tmp_path, model, tokens, weights=None, queries=None, extra=(), out_name="out.npy",
           token_dtype=None):
    """Runs the CLI on a saved model path and arrays; returns the output array."""
    args = ["attend", "--model", model, "--tokens",
            save_npy(tmp_path / "tokens.npy", tokens, token_dtype)]
    if weights is not None:
        args += ["--weights", save_npy(tmp_path / "weights.npy", weights, token_dtype)]
    if queries is not None:
        args += ["--queries", save_npy(tmp_path / "queries.npy", queries, token_dtype)]
    out = tmp_path / out_name
    proc = run_cli(args + list(extra) + ["--out", out], check=True)
    assert proc.stderr == ""
    return load_npy(out)


@pytest.mark.parametrize("e,heads,n,bias", [
    (8, 1, 1, True), (8, 2, 2, False), (16, 2, 7, True), (24, 3, 64, False),
    (32, 4, 150, True), (32, 8, 500, True), (40, 5, 333, False), (64, 8, 500, False),
])
def test_self_attention_matches_torch(tmp_path, e, heads, n, bias):
    m = make_mha(e, heads, bias, seed=e + n)
    x = np.random.default_rng(n).standard_normal((n, e))
    model = save_mha_safetensors(tmp_path / "m.safetensors", m, heads)
    out = attend(tmp_path, model, x)
    assert out.dtype == np.float64 and out.shape == (n, e)
    assert rel_err(out, torch_attention(m, x, x)) <= 1e-12


@pytest.mark.parametrize("e,heads,kdim,n,m_queries,bias", [
    (16, 2, None, 40, 9, True),     # in_proj layout, queries differ from the tokens
    (16, 4, None, 1, 5, False),
    (12, 3, 7, 60, 25, True),       # kdim = vdim != E: q/k/v_proj_weight layout
    (8, 8, 20, 200, 31, False),
    (32, 1, 5, 3, 100, True),
])
def test_cross_attention_matches_torch(tmp_path, e, heads, kdim, n, m_queries, bias):
    m = make_mha(e, heads, bias, kdim=kdim, seed=3 * n + m_queries)
    rng = np.random.default_rng(n * m_queries)
    x = rng.standard_normal((n, kdim or e))
    y = rng.standard_normal((m_queries, e))
    model = save_mha_safetensors(tmp_path / "m.safetensors", m, heads)
    out = attend(tmp_path, model, x, queries=y)
    assert out.shape == (m_queries, e)
    assert rel_err(out, torch_attention(m, y, x)) <= 1e-12
    # Token weights change a cross-attention output as the additive log-weight mask.
    w = rng.uniform(0.05, 3.0, n)
    out_w = attend(tmp_path, model, x, weights=w, queries=y)
    mask = np.broadcast_to(np.log(w / w.sum()), (m_queries, n)).copy()
    assert rel_err(out_w, torch_attention(m, y, x, mask)) <= 1e-12


@pytest.mark.parametrize("e,heads,n,seed", [(8, 2, 5, 0), (16, 4, 120, 1), (32, 8, 400, 2)])
def test_weights_are_a_log_mask(tmp_path, e, heads, n, seed):
    m = make_mha(e, heads, True, seed=seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, e))
    w = rng.uniform(0.0, 5.0, n)
    w[rng.integers(n)] = 0.0  # a zero weight removes a key, its query stays
    w[0] = 1.0
    model = save_mha_safetensors(tmp_path / "m.safetensors", m, heads)
    out = attend(tmp_path, model, x, weights=w)
    with np.errstate(divide="ignore"):
        mask = np.broadcast_to(np.log(w), (n, n)).copy()
    assert rel_err(out, torch_attention(m, x, x, mask)) <= 1e-12


@pytest.mark.parametrize("e,heads,n,weighted", [(8, 1, 1, False), (16, 2, 50, False),
                                                  (16, 4, 200, True), (24, 8, 3, True)])
def test_causal_matches_masked_torch(tmp_path, e, heads, n, weighted):
    m = make_mha(e, heads, True, seed=n)
    rng = np.random.default_rng(n + 7)
    x = rng.standard_normal((n, e))
    w = rng.uniform(0.1, 2.0, n) if weighted else None
    model = save_mha_safetensors(tmp_path / "m.safetensors", m, heads)
    out = attend(tmp_path, model, x, weights=w, extra=["--causal"])
    mask = causal_mask(n)
    if weighted:
        mask = mask + np.log(w)[None, :]
    assert rel_err(out, torch_attention(m, x, x, mask)) <= 1e-12
    if n > 1:  # the first query sees only the first token, so differs from full attention
        full = torch_attention(m, x, x)
        assert np.max(np.abs(out[0] - full[0])) > 1e-6


def test_residual_adds_the_query(tmp_path):
    m = make_mha(16, 4, True, seed=5)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((30, 16))
    y = rng.standard_normal((11, 16))
    model = save_mha_safetensors(tmp_path / "m.safetensors", m, 4)
    out = attend(tmp_path, model, x, extra=["--residual"])
    assert rel_err(out, x + torch_attention(m, x, x)) <= 1e-12
    out = attend(tmp_path, model, x, queries=y, extra=["--residual", "--causal"])
    ref = y + torch_attention(m, y, x, causal_mask(11, 30))
    assert rel_err(out, ref) <= 1e-12


def test_scale_metadata(tmp_path):
    """scale = tau replaces sqrt(head_dim): emulated in torch by scaling W_q, b_q."""
    e, heads, tau = 16, 2, 0.7
    m = make_mha(e, heads, True, seed=9)
    x = np.random.default_rng(9).standard_normal((25, e))
    model = save_mha_safetensors(tmp_path / "m.safetensors", m, heads, scale=tau)
    out = attend(tmp_path, model, x)
    factor = math.sqrt(e // heads) / tau
    with torch.no_grad():
        m.in_proj_weight[:e] *= factor
        m.in_proj_bias[:e] *= factor
    assert rel_err(out, torch_attention(m, x, x)) <= 1e-12


def test_l2_potential_matches_numpy(tmp_path):
    """G(x,y) = -||q(x) - k(y)||^2 / tau, checked against a direct NumPy evaluation."""
    e, heads, n = 12, 3, 40
    m = make_mha(e, heads, True, seed=4)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((n, e))
    w = rng.uniform(0.5, 1.5, n)
    model = save_mha_safetensors(tmp_path / "m.safetensors", m, heads, potential="l2")
    out = attend(tmp_path, model, x, weights=w)
    sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    wq, wk, wv = np.split(sd["in_proj_weight"], 3)
    bq, bk, bv = np.split(sd["in_proj_bias"], 3)
    q, k, v = x @ wq.T + bq, x @ wk.T + bk, x @ wv.T + bv
    hd = e // heads
    fields = []
    for h in range(heads):
        s = slice(h * hd, (h + 1) * hd)
        g = -((q[:, None, s] - k[None, :, s]) ** 2).sum(-1) / math.sqrt(hd) + np.log(w / w.sum())
        p = np.exp(g - g.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        fields.append(p @ v[:, s])
    ref = np.concatenate(fields, 1) @ sd["out_proj.weight"].T + sd["out_proj.bias"]
    assert rel_err(out, ref) <= 1e-12


@pytest.mark.parametrize("e,heads,n,bias,kdim", [(16, 4, 100, True, None), (8, 2, 37, False, None),
                                                  (12, 3, 50, True, 5)])
def test_float32_path_matches_torch_float32(tmp_path, e, heads, n, bias, kdim):
    m = make_mha(e, heads, bias, kdim=kdim, seed=n, dtype=torch.float32)
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, kdim or e)).astype(np.float32)
    y = x if kdim is None else rng.standard_normal((17, e)).astype(np.float32)
    model = save_mha_safetensors(tmp_path / "m.safetensors", m, heads, dtype=np.float32)
    out = attend(tmp_path, model, x, queries=None if kdim is None else y,
                 extra=["--dtype", "f32"], token_dtype=np.float32)
    assert out.dtype == np.float32
    assert rel_err(out.astype(np.float64), torch_attention(m, y, x).astype(np.float64)) <= 1e-5
    # An F64 model file computed in float32 gives the same answer to float precision.
    model64 = save_mha_safetensors(tmp_path / "m64.safetensors", m, heads, dtype=np.float64)
    out64 = attend(tmp_path, model64, x, queries=None if kdim is None else y,
                   extra=["--dtype", "f32"], token_dtype=np.float32, out_name="o64.npy")
    assert np.array_equal(out, out64)


# ---- invariances of attention as a map on measures (docs/theory.md#attention) ----------------

@pytest.fixture(scope="module")
def invariance_setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inv")
    m = make_mha(16, 4, True, seed=11)
    model = save_mha_safetensors(tmp / "m.safetensors", m, 4)
    x = np.random.default_rng(11).standard_normal((40, 16))
    return model, x


def test_permutation_permutes_outputs(tmp_path, invariance_setup):
    model, x = invariance_setup
    w = np.random.default_rng(1).uniform(0.1, 1.0, len(x))
    perm = np.random.default_rng(2).permutation(len(x))
    out = attend(tmp_path, model, x, weights=w)
    out_p = attend(tmp_path, model, x[perm], weights=w[perm])
    assert rel_err(out_p, out[perm]) <= 1e-12


@pytest.mark.parametrize("repeat", [2, 5])
def test_duplicating_every_token_changes_nothing(tmp_path, invariance_setup, repeat):
    model, x = invariance_setup
    out = attend(tmp_path, model, x)
    out_rep = attend(tmp_path, model, np.repeat(x, repeat, axis=0))
    assert rel_err(out_rep, np.repeat(out, repeat, axis=0)) <= 1e-12
    out_tile = attend(tmp_path, model, np.tile(x, (repeat, 1)))
    assert rel_err(out_tile, np.tile(out, (repeat, 1))) <= 1e-12


@pytest.mark.parametrize("a,b", [(0.3, 0.7), (1.0, 1.0), (2.5, 0.01)])
def test_identical_tokens_merge_weights(tmp_path, invariance_setup, a, b):
    model, x = invariance_setup
    rng = np.random.default_rng(3)
    w = rng.uniform(0.2, 1.0, len(x))
    w[5] = a + b
    out = attend(tmp_path, model, x, weights=w)
    split_x = np.insert(x, 6, x[5], axis=0)  # token 5 twice, weights a and b
    split_w = np.insert(w, 6, b)
    split_w[5] = a
    out_split = attend(tmp_path, model, split_x, weights=split_w)
    assert rel_err(np.delete(out_split, 6, axis=0), out) <= 1e-12
    assert rel_err(out_split[6], out[5]) <= 1e-12


def test_huge_logits_stay_finite(tmp_path):
    """Logits of magnitude ~1e6: outputs are finite and equal PyTorch's (max-shifted) softmax."""
    e, heads, n = 8, 2, 60
    m = make_mha(e, heads, True, seed=12, std=1.0)
    x = np.random.default_rng(12).standard_normal((n, e)) * 300.0
    model = save_mha_safetensors(tmp_path / "m.safetensors", m, heads)
    q = x @ m.in_proj_weight.detach().numpy()[:e].T
    k = x @ m.in_proj_weight.detach().numpy()[e:2 * e].T
    assert np.max(np.abs(q[:, :4] @ k[:, :4].T)) / 2.0 > 1e6
    for extra in ([], ["--causal"]):
        out = attend(tmp_path, model, x, extra=extra)
        assert np.all(np.isfinite(out))
        mask = causal_mask(n) if extra else None
        assert rel_err(out, torch_attention(m, x, x, mask)) <= 1e-9
    out32 = attend(tmp_path, model, x, extra=["--dtype", "f32"], out_name="o32.npy")
    assert np.all(np.isfinite(out32))


def test_sinkhorn_options_pass_through(tmp_path, invariance_setup):
    model, x = invariance_setup
    out = attend(tmp_path, model, x, extra=["--normalization", "sinkhorn", "--sinkhorn-iters", "5"])
    assert out.shape == x.shape and np.all(np.isfinite(out))
    # Zero iterations beyond softmax is standard attention.
    out0 = attend(tmp_path, model, x, extra=["--normalization", "sinkhorn",
                                             "--sinkhorn-iters", "0"], out_name="o0.npy")
    assert rel_err(out0, attend(tmp_path, model, x, out_name="o1.npy")) <= 1e-12


def test_help_lists_the_options():
    proc = run_cli(["attend", "--help"])
    assert proc.returncode == 0
    for option in ("--model", "--tokens", "--weights", "--queries", "--causal", "--residual",
                   "--dtype", "--normalization", "--sinkhorn-iters", "--out"):
        assert option in proc.stdout
