"""Checkpoint import against the reference implementations: small randomly
initialized Hugging Face BERT and GPT-2 models (saved with their own
save_pretrained, safetensors) and PyTorch nn.TransformerEncoder(Layer) state
dicts, run in float64; every hidden state agrees to 1e-10 relative. Also the
parameter count, `measattn inspect` and `measattn forward`, and the refusals of
bad checkpoints (exit 2 / ValueError, one line naming the file and the tensor
or config field)."""

import json
import os

import numpy as np
import pytest

import measattn
from conftest import load_npy, run_cli, save_npy

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="Hugging Face transformers is not installed")
safetensors_torch = pytest.importorskip("safetensors.torch")

TOL = 1e-10


def rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def hf_hidden_states(model, ids):
    with torch.no_grad():
        out = model(torch.tensor(np.asarray(ids))[None], output_hidden_states=True)
    return np.stack([h[0].numpy() for h in out.hidden_states])


def make_bert(path, hidden_act="gelu", cls=None, layers=2, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=60, hidden_size=24, num_hidden_layers=layers,
                                  num_attention_heads=4, intermediate_size=40,
                                  max_position_embeddings=32, hidden_act=hidden_act, **kw)
    model = (cls or transformers.BertModel)(cfg).eval()
    model.save_pretrained(str(path), safe_serialization=True)
    return model


def make_gpt2(path, cls=None, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=70, n_embd=24, n_layer=3, n_head=4, n_positions=40,
                                  **kw)
    model = (cls or transformers.GPT2Model)(cfg).eval()
    model.save_pretrained(str(path), safe_serialization=True)
    return model


IDS = [2, 17, 5, 44, 9, 0, 31, 31, 8, 59, 1]


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "gelu_pytorch_tanh", "relu"])
def test_bert_hidden_states_match_transformers(tmp_path, act):
    model = make_bert(tmp_path / "bert", hidden_act=act)
    ref = hf_hidden_states(model.double(), IDS)
    t = measattn.Transformer.load(str(tmp_path / "bert"))
    h = t.forward(np.array(IDS))
    assert h.shape == ref.shape == (3, len(IDS), 24)
    assert h.dtype == np.float64
    assert rel(h, ref) < TOL
    assert t.summary()["activation"] == ("gelu_tanh" if act.startswith("gelu_") else act)


def test_bert_for_masked_lm_prefix_and_heads(tmp_path):
    model = make_bert(tmp_path / "mlm", cls=transformers.BertForMaskedLM)
    ref = hf_hidden_states(model.bert.double(), IDS)
    t = measattn.Transformer.load(str(tmp_path / "mlm"))
    assert rel(t.forward(IDS), ref) < TOL
    # The parameter count: the backbone's parameters (the MLM head ignored).
    assert t.summary()["parameters"] == sum(p.numel() for p in model.bert.parameters())


def test_bert_parameter_count_without_pooler(tmp_path):
    model = make_bert(tmp_path / "bert")
    s = measattn.Transformer.load(str(tmp_path / "bert")).summary()
    expected = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("pooler."))
    assert s["parameters"] == expected
    assert s == {"architecture": "bert", "model_type": "bert", "layers": 2, "heads": 4,
                 "dim": 24, "head_dim": 6, "ff_dim": 40, "vocab_size": 60,
                 "max_positions": 32, "norm": "post", "activation": "gelu", "causal": False,
                 "embedding_norm": True, "final_norm": False, "parameters": expected}


@pytest.mark.parametrize("cls", ["GPT2Model", "GPT2LMHeadModel"])
def test_gpt2_hidden_states_match_transformers(tmp_path, cls):
    model = make_gpt2(tmp_path / "gpt2", cls=getattr(transformers, cls))
    backbone = model if cls == "GPT2Model" else model.transformer
    ref = hf_hidden_states(backbone.double(), IDS)
    t = measattn.Transformer.load(str(tmp_path / "gpt2"))
    h = t.forward(IDS)
    assert h.shape == (4, len(IDS), 24)
    assert rel(h, ref) < TOL
    s = t.summary()
    assert s["causal"] and s["norm"] == "pre" and s["final_norm"]
    assert s["activation"] == "gelu_tanh"
    assert s["parameters"] == sum(p.numel() for p in backbone.parameters())
    # Causal: a prefix's hidden states are those of the full sequence's prefix.
    assert rel(t.forward(IDS[:5]), h[:, :5]) < 1e-13


def test_gpt2_n_inner_and_unscaled_attention(tmp_path):
    model = make_gpt2(tmp_path / "g", n_inner=30, scale_attn_weights=False,
                      activation_function="relu")
    ref = hf_hidden_states(model.double(), IDS)
    t = measattn.Transformer.load(str(tmp_path / "g"))
    assert t.summary()["ff_dim"] == 30
    assert rel(t.forward(IDS), ref) < TOL


def torch_encoder(norm_first, activation, layers=None, final_norm=False, seed=0):
    torch.manual_seed(seed)
    layer = torch.nn.TransformerEncoderLayer(d_model=16, nhead=4, dim_feedforward=28,
                                             dropout=0.0, activation=activation,
                                             batch_first=True, norm_first=norm_first)
    if layers is None:
        module = layer
    else:
        norm = torch.nn.LayerNorm(16) if final_norm else None
        module = torch.nn.TransformerEncoder(layer, num_layers=layers, norm=norm,
                                             enable_nested_tensor=False)
    # Non-trivial LayerNorm parameters.
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return module.eval().double()


def encoder_states(module, x, layers):
    """Hidden states of a torch encoder (input, then each layer's output)."""
    xt = torch.tensor(x)[None]
    states = [x]
    with torch.no_grad():
        if layers is None:
            states.append(module(xt)[0].numpy())
        else:
            h = xt
            for i, layer in enumerate(module.layers):
                h = layer(h)
                out = h
                if i == len(module.layers) - 1 and module.norm is not None:
                    out = module.norm(h)
                states.append(out[0].numpy())
            np.testing.assert_allclose(states[-1], module(xt)[0].numpy(), rtol=1e-12, atol=1e-12)
    return np.stack(states)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("layers,final_norm", [(None, False), (3, False), (2, True)])
def test_torch_encoder_state_dicts(tmp_path, norm_first, activation, layers, final_norm):
    module = torch_encoder(norm_first, activation, layers, final_norm)
    meta = {"d_model": "16", "nhead": "4", "dim_feedforward": "28",
            "norm_first": str(norm_first).lower(), "activation": activation,
            "layer_norm_eps": "1e-05"}
    path = tmp_path / "enc.safetensors"
    state = {k: v.contiguous() for k, v in module.state_dict().items()}
    safetensors_torch.save_file(state, str(path), metadata=meta)
    x = np.random.default_rng(1).normal(size=(9, 16))
    ref = encoder_states(module, x, layers)
    t = measattn.Transformer.load(str(path))
    h = t.forward(x)
    assert h.shape == ref.shape
    assert rel(h, ref) < TOL
    s = t.summary()
    assert s["norm"] == ("pre" if norm_first else "post")
    assert s["final_norm"] == final_norm
    assert s["parameters"] == sum(p.numel() for p in module.parameters())
    # The same from a directory with config.json.
    d = tmp_path / "dir"
    d.mkdir()
    safetensors_torch.save_file(state, str(d / "model.safetensors"))
    config = {"model_type": "torch_encoder", "d_model": 16, "nhead": 4, "dim_feedforward": 28,
              "norm_first": norm_first, "activation": activation, "layer_norm_eps": 1e-5}
    (d / "config.json").write_text(json.dumps(config))
    assert np.array_equal(measattn.Transformer.load(str(d)).forward(x), h)


def test_blocks_expose_attention_as_model(tmp_path):
    make_bert(tmp_path / "bert")
    t = measattn.Transformer.load(str(tmp_path / "bert"))
    h = t.forward(IDS)
    block = t.blocks[1]
    assert isinstance(block.attention, measattn.Model)
    assert block.attention.num_heads == 4 and block.norm == "post"
    x = t.attention_input(1, h[1])
    assert np.array_equal(x, h[1])  # post-LN
    assert rel(t.block_forward(1, h[1]), h[2]) < 1e-14
    assert np.array_equal(block.forward(h[1]), t.block_forward(1, h[1]))
    # The existing functions apply to the block's attention.
    field = block.attention.attend(x)
    assert field.shape == (len(IDS), 24) and np.all(np.isfinite(field))
    e = t.embed(np.array(IDS, dtype=np.int32))
    assert np.array_equal(e, h[0])
    # torch tensors are accepted where arrays are.
    assert np.array_equal(t.forward(torch.tensor(IDS)), h)
    part = t.forward(IDS, layers=(1, 2))
    assert part.shape == (2, len(IDS), 24)
    assert np.array_equal(part, h[1:3])


def test_float32_load(tmp_path):
    model = make_bert(tmp_path / "bert")
    t = measattn.Transformer.load(str(tmp_path / "bert"), dtype="float32")
    h = t.forward(IDS)
    assert h.dtype == np.float32
    ref = hf_hidden_states(model.float(), IDS)
    assert rel(h.astype(np.float64), ref.astype(np.float64)) < 1e-5
