"""measattn's Python module against PyTorch: attention, kernels, model I/O.

Uses the module the way a researcher would: build an nn.MultiheadAttention,
copy it with Model.from_torch, compare outputs in float64 to 1e-12.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
measattn = pytest.importorskip("measattn")

from conftest import save_mha_safetensors  # noqa: E402

torch.set_default_dtype(torch.float64)


def make_mha(embed, heads, bias=True, kdim=None, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    mha = torch.nn.MultiheadAttention(embed, heads, bias=bias, kdim=kdim, vdim=kdim,
                                      dtype=dtype)
    # Non-zero biases (PyTorch initializes them to zero) so that they are tested.
    with torch.no_grad():
        for name, p in mha.named_parameters():
            if "bias" in name:
                p.normal_(0, 0.5)
    return mha.eval()


def torch_attend(mha, x, y=None, mask=None, need_weights=False):
    q = torch.as_tensor(y if y is not None else x)
    kv = torch.as_tensor(x)
    with torch.no_grad():
        out, w = mha(q, kv, kv, attn_mask=mask, need_weights=need_weights,
                     average_attn_weights=False)
    return out.numpy(), (None if w is None else w.numpy())


def rel_err(a, b):
    return np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(b)))


@pytest.mark.parametrize("embed,heads,bias", [(8, 1, True), (16, 4, True), (12, 3, False),
                                              (32, 8, True)])
def test_attend_equals_torch_float64(embed, heads, bias):
    rng = np.random.default_rng(embed * 10 + heads)
    mha = make_mha(embed, heads, bias=bias, seed=heads)
    model = measattn.Model.from_torch(mha)
    assert model.num_heads == heads and model.embed_dim == embed and model.dtype == np.float64
    for n in (1, 7, 130):
        x = rng.normal(size=(n, embed)) * 2
        ours = model.attend(x)
        ref, _ = torch_attend(mha, x)
        assert ours.shape == (n, embed) and ours.dtype == np.float64
        assert rel_err(ours, ref) < 1e-12, (n, rel_err(ours, ref))


def test_cross_attention_and_kdim():
    rng = np.random.default_rng(1)
    mha = make_mha(16, 2, kdim=5, seed=3)
    model = measattn.Model.from_torch(mha)
    assert (model.query_dim, model.key_dim) == (16, 5)
    x = rng.normal(size=(40, 5))
    y = rng.normal(size=(9, 16))
    ours = model.attend(x, queries=y)
    ref, _ = torch_attend(mha, x, y)
    assert ours.shape == (9, 16)
    assert rel_err(ours, ref) < 1e-12


def test_weights_are_an_additive_log_bias():
    rng = np.random.default_rng(2)
    mha = make_mha(12, 3, seed=4)
    model = measattn.Model.from_torch(mha)
    x = rng.normal(size=(25, 12))
    w = rng.uniform(0.1, 3.0, size=25)
    ours = model.attend(x, weights=w)
    mask = torch.as_tensor(np.tile(np.log(w / w.sum()), (25, 1)))
    ref, _ = torch_attend(mha, x, mask=mask)
    assert rel_err(ours, ref) < 1e-12
    # The same through a Measure.
    mu = measattn.Measure(x, w)
    assert rel_err(model.attend(mu), ref) < 1e-12


def test_causal_equals_torch_causal_mask():
    rng = np.random.default_rng(3)
    mha = make_mha(8, 2, seed=5)
    model = measattn.Model.from_torch(mha)
    x = rng.normal(size=(30, 8))
    mask = torch.triu(torch.full((30, 30), float("-inf")), diagonal=1)
    ref, _ = torch_attend(mha, x, mask=mask)
    assert rel_err(model.attend(x, causal=True), ref) < 1e-12


def test_kernel_equals_torch_attention_weights():
    rng = np.random.default_rng(4)
    mha = make_mha(12, 3, seed=6)
    model = measattn.Model.from_torch(mha)
    x = rng.normal(size=(17, 12))
    _, weights = torch_attend(mha, x, need_weights=True)  # (heads, n, n)
    for h in range(3):
        k = model.kernel(x, head=h)
        assert k.shape == (17, 17)
        np.testing.assert_allclose(k.sum(axis=1), 1.0, atol=1e-14)
        assert np.max(np.abs(k - weights[h])) < 1e-12


def test_residual_reference_and_head_fields():
    rng = np.random.default_rng(5)
    model = measattn.Model.random(8, 2, bias=True, seed=11)
    x = rng.normal(size=(20, 8))
    out = model.attend(x)
    assert np.max(np.abs(model.attend(x, residual=True) - (x + out))) < 1e-12
    assert rel_err(model.reference(x), out) < 1e-12
    heads = model.head_fields(x)
    assert heads.shape == (20, 8)
    recon = heads @ model.w_o.T + model.b_o
    assert rel_err(recon, out) < 1e-12


def test_measure_properties_of_attention():
    """Permutation equivariance, duplication invariance, merging of equal tokens."""
    rng = np.random.default_rng(6)
    model = measattn.Model.random(6, 2, seed=3)
    x = rng.normal(size=(12, 6))
    out = model.attend(x)
    perm = rng.permutation(12)
    assert rel_err(model.attend(x[perm]), out[perm]) < 1e-12
    assert rel_err(model.attend(np.repeat(x, 3, axis=0))[::3], out) < 1e-12
    # Token 0 twice with weights a and b acts as one token of weight a + b.
    w = np.full(12, 1.0)
    w[0] = 0.3
    x2 = np.vstack([x, x[:1]])
    w2 = np.append(w, 0.7)
    assert rel_err(model.attend(x2, weights=w2)[:12], model.attend(x)) < 1e-12
    # F(mu) as a measure: atoms = the field at the atoms, weights kept.
    f = model.self_attention(measattn.Measure(x))
    assert isinstance(f, measattn.Measure) and f.size == 12
    assert rel_err(f.atoms, out) < 1e-12
    y = rng.normal(size=(4, 6))
    g = model.cross_attention(measattn.Measure(y), measattn.Measure(x))
    assert rel_err(g.atoms, model.attend(x, queries=y)) < 1e-12


def test_float32_path():
    rng = np.random.default_rng(7)
    mha = make_mha(16, 4, seed=8)
    model = measattn.Model.from_torch(mha)
    x32 = rng.normal(size=(50, 16)).astype(np.float32)
    out32 = model.attend(x32)
    assert out32.dtype == np.float32
    ref, _ = torch_attend(mha, x32.astype(np.float64))
    assert rel_err(out32.astype(np.float64), ref) < 1e-5
    # A float32 model from a float32 module, and dtype= forcing float64.
    m32 = measattn.Model.from_torch(mha.to(torch.float32))
    assert m32.dtype == np.float32
    assert model.attend(x32, dtype="float64").dtype == np.float64
    with torch.no_grad():
        t32 = mha(*(torch.as_tensor(x32),) * 3, need_weights=False)[0].numpy()
    assert rel_err(m32.attend(x32).astype(np.float64), t32.astype(np.float64)) < 1e-5


def test_from_torch_round_trip_and_to_torch():
    mha = make_mha(12, 3, seed=9)
    model = measattn.Model.from_torch(mha)
    sd = {k: v.numpy() for k, v in mha.state_dict().items()}
    np.testing.assert_array_equal(np.concatenate([model.w_q, model.w_k, model.w_v]),
                                  sd["in_proj_weight"])
    np.testing.assert_array_equal(np.concatenate([model.b_q, model.b_k, model.b_v]),
                                  sd["in_proj_bias"])
    np.testing.assert_array_equal(model.w_o, sd["out_proj.weight"])
    np.testing.assert_array_equal(model.b_o, sd["out_proj.bias"])
    back = model.to_torch()
    for k, v in back.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), sd[k])
    # Model(**parameters()) rebuilds the same model.
    again = measattn.Model(**model.parameters())
    np.testing.assert_array_equal(again.w_o, model.w_o)
    assert again.num_heads == 3


def test_from_torch_rejects_unsupported_features():
    mha = torch.nn.MultiheadAttention(8, 2, add_bias_kv=True)
    with pytest.raises(ValueError, match="add_bias_kv"):
        measattn.Model.from_torch(mha)
    mha = torch.nn.MultiheadAttention(8, 2, add_zero_attn=True)
    with pytest.raises(ValueError, match="add_zero_attn"):
        measattn.Model.from_torch(mha)


def test_save_and_load_model(tmp_path):
    rng = np.random.default_rng(10)
    mha = make_mha(16, 4, seed=10)
    x = rng.normal(size=(20, 16))
    ref, _ = torch_attend(mha, x)
    # A file written from PyTorch's state dict (as a researcher would) ...
    path = save_mha_safetensors(tmp_path / "mha.safetensors", mha, num_heads=4)
    model = measattn.load_model(str(path))
    assert rel_err(model.attend(x), ref) < 1e-12
    # ... and the module's own save, in float64 and float32.
    model.save(str(tmp_path / "again.safetensors"))
    again = measattn.load_model(str(tmp_path / "again.safetensors"))
    np.testing.assert_array_equal(again.w_q, model.w_q)
    np.testing.assert_array_equal(again.b_o, model.b_o)
    measattn.save_model(str(tmp_path / "f32.safetensors"), model, dtype="float32")
    f32 = measattn.load_model(str(tmp_path / "f32.safetensors"), dtype="float32")
    assert f32.dtype == np.float32
    np.testing.assert_array_equal(f32.w_k, model.w_k.astype(np.float32))
    # An l2 model with a scale keeps both.
    l2 = measattn.Model.random(8, 2, potential="l2", seed=1)
    l2 = measattn.Model(**{**l2.parameters(), "scale": 3.5})
    l2.save(str(tmp_path / "l2.safetensors"))
    back = measattn.load_model(str(tmp_path / "l2.safetensors"))
    assert back.potential == "l2" and back.scale == 3.5


def test_load_model_errors(tmp_path):
    with pytest.raises(ValueError, match="nope.safetensors"):
        measattn.load_model(str(tmp_path / "nope.safetensors"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x01\x00")
    with pytest.raises(ValueError, match="bad.safetensors"):
        measattn.load_model(str(bad))


def test_canonical_model():
    model = measattn.Model.canonical(4, 2.0)
    assert model.num_heads == 1 and model.tau == pytest.approx(0.5)
    np.testing.assert_array_equal(model.w_q, np.eye(4))
    x = np.random.default_rng(0).normal(size=(6, 4))
    logits = 2.0 * x @ x.T
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    assert rel_err(model.attend(x), p @ x) < 1e-12


def test_import_does_not_import_torch():
    env = dict(os.environ)
    code = "import sys, measattn; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_quickstart_example_runs():
    from conftest import REPO_ROOT
    script = REPO_ROOT / "examples" / "python_quickstart.py"
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=dict(os.environ), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "max |measattn - torch|" in proc.stdout
