"""PyTorch and Hugging Face modules in: Model.from_torch on the attention
modules of BERT and GPT-2, Transformer.from_torch on nn.TransformerEncoderLayer,
nn.TransformerEncoder and Hugging Face models; results back into torch without
copies. Each against the module's own forward in float64."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import measattn  # noqa: E402

TOL = 1e-10


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_layer(norm_first, activation):
    layer = torch.nn.TransformerEncoderLayer(16, 4, dim_feedforward=24, dropout=0.0,
                                             activation=activation, norm_first=norm_first,
                                             batch_first=True).double().eval()
    x = torch.randn(1, 7, 16, dtype=torch.float64)
    t = measattn.Transformer.from_torch(layer)
    assert t.num_layers == 1 and t.dim == 16 and t.num_heads == 4
    assert t.summary()["norm"] == ("pre" if norm_first else "post")
    with torch.no_grad():
        ref = layer(x)[0].numpy()
    ours = t.forward(x[0].numpy())
    assert ours.shape == (2, 7, 16)
    assert rel(ours[-1], ref) < TOL


def test_encoder_stack_with_final_norm():
    layer = torch.nn.TransformerEncoderLayer(12, 3, dim_feedforward=20, dropout=0.0,
                                             batch_first=True)
    enc = torch.nn.TransformerEncoder(layer, 3, norm=torch.nn.LayerNorm(12)).double().eval()
    for p in enc.parameters():  # distinct layers (TransformerEncoder deep-copies one layer)
        p.data.normal_(0, 0.3)
    x = torch.randn(1, 5, 12, dtype=torch.float64)
    t = measattn.Transformer.from_torch(enc)
    assert t.num_layers == 3
    with torch.no_grad():
        ref = enc(x)[0].numpy()
    assert rel(t.forward(x[0].numpy())[-1], ref) < TOL


def test_encoder_float32_stays_float32():
    layer = torch.nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0).eval()
    t = measattn.Transformer.from_torch(layer)
    assert t.dtype == np.float32
    assert measattn.Transformer.from_torch(layer, dtype="float64").dtype == np.float64


def test_not_a_module():
    with pytest.raises(ValueError, match="module"):
        measattn.Transformer.from_torch(object())


transformers = pytest.importorskip("transformers")


def small_bert():
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=24,
                                  max_position_embeddings=32)
    return transformers.BertModel(cfg).double().eval()


def small_gpt2():
    cfg = transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=4, n_positions=32)
    return transformers.GPT2Model(cfg).double().eval()


def test_hf_models():
    ids = np.array([3, 14, 15, 9, 2, 6], dtype=np.int64)
    for model in (small_bert(), small_gpt2()):
        t = measattn.Transformer.from_torch(model)
        with torch.no_grad():
            ref = model(torch.from_numpy(ids)[None], output_hidden_states=True).hidden_states
        ours = t.forward(ids)
        assert len(ref) == ours.shape[0]
        for a, b in zip(ours, ref):
            assert rel(a, b[0].numpy()) < TOL


def test_bert_attention_module():
    bert = small_bert()
    att = bert.encoder.layer[0].attention  # BertAttention: self + output (dense, LayerNorm)
    model = measattn.Model.from_torch(att)
    x = torch.randn(6, 16, dtype=torch.float64)
    with torch.no_grad():
        ctx = att.self(x[None])[0][0]
        ref = att.output.dense(ctx)
    assert rel(model.attend(x.numpy()), ref.numpy()) < TOL
    # A bare BertSelfAttention has no output projection: W_O = I.
    bare = measattn.Model.from_torch(att.self)
    assert rel(bare.attend(x.numpy()), ctx.numpy()) < TOL


def test_gpt2_attention_module():
    gpt = small_gpt2()
    att = gpt.h[0].attn
    model = measattn.Model.from_torch(att)
    x = torch.randn(6, 16, dtype=torch.float64)
    with torch.no_grad():
        ref = att(x[None])[0][0]
    assert rel(model.attend(x.numpy(), causal=True), ref.numpy()) < TOL


def test_results_go_back_to_torch_without_copies():
    model = measattn.Model.random(8, num_heads=2, seed=1)
    x = np.random.default_rng(0).normal(size=(5, 8))
    out = model.attend(torch.from_numpy(x))  # tensors accepted where arrays are
    t = torch.from_numpy(out)
    assert t.data_ptr() == out.__array_interface__["data"][0]
    assert np.allclose(t.numpy(), model.attend(x))
