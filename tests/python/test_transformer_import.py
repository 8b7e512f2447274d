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
    assert np.array_equal(t.forward(IDS, layers=(1, None)), h[1:])
    with pytest.raises(ValueError, match="last_layer"):
        t.forward(IDS, layers=(0, -1))  # no Python-style negative indices
    with pytest.raises(ValueError, match="last_layer"):
        t.forward(IDS, layers=(0, 3))


def test_float32_load(tmp_path):
    model = make_bert(tmp_path / "bert")
    t = measattn.Transformer.load(str(tmp_path / "bert"), dtype="float32")
    h = t.forward(IDS)
    assert h.dtype == np.float32
    ref = hf_hidden_states(model.float(), IDS)
    assert rel(h.astype(np.float64), ref.astype(np.float64)) < 1e-5


# ---- the CLI ---------------------------------------------------------------------------


def test_inspect_text_and_json(tmp_path):
    model = make_gpt2(tmp_path / "gpt2", cls=transformers.GPT2LMHeadModel)
    proc = run_cli(["inspect", tmp_path / "gpt2", "--json"], check=True)
    j = json.loads(proc.stdout)
    assert j["architecture"] == "gpt2" and j["layers"] == 3 and j["heads"] == 4
    assert j["dim"] == 24 and j["head_dim"] == 6 and j["ff_dim"] == 96
    assert j["causal"] and j["norm"] == "pre" and j["vocab_size"] == 70
    assert j["max_positions"] == 40
    assert j["parameters"] == sum(p.numel() for p in model.transformer.parameters())
    t = measattn.Transformer.load(str(tmp_path / "gpt2"))
    assert {k: v for k, v in j.items() if k != "path"} == t.summary()
    text = run_cli(["inspect", tmp_path / "gpt2"], check=True).stdout
    for word in ["gpt2", "layers", "heads", "pre-LN", "causal", "parameters",
                 str(j["parameters"])]:
        assert word in text


@pytest.mark.parametrize("dtype", ["f64", "f32"])
def test_forward_cli_matches_transformers(tmp_path, dtype):
    model = make_bert(tmp_path / "bert", layers=3)
    ids = tmp_path / "ids.npy"
    np.save(ids, np.array(IDS, dtype=np.int64))
    out = tmp_path / "out"
    run_cli(["forward", "--model", tmp_path / "bert", "--input-ids", ids, "--dtype", dtype,
             "--out", out], check=True)
    h = load_npy(out / "hidden_states.npy")
    assert h.dtype == (np.float64 if dtype == "f64" else np.float32)
    ref = hf_hidden_states(model.double(), IDS)
    assert h.shape == ref.shape == (4, len(IDS), 24)
    assert rel(h.astype(np.float64), ref) < (TOL if dtype == "f64" else 1e-5)
    s = json.loads((out / "summary.json").read_text())
    assert s["n"] == len(IDS) and s["shape"] == [4, len(IDS), 24]
    assert s["layers"] == {"first": 0, "last": 3} and s["dtype"] == dtype
    assert s["model"]["architecture"] == "bert" and s["input_ids"] == IDS
    assert len(s["entries"]) == 4
    # Python API, same numbers (f64), and a slice of layers; rerun into the same DIR.
    t = measattn.Transformer.load(str(tmp_path / "bert"))
    if dtype == "f64":
        assert np.array_equal(h, t.forward(IDS))
    run_cli(["forward", "--model", tmp_path / "bert", "--input-ids", ids, "--layers", "1:3",
             "--dtype", dtype, "--out", out], check=True)
    part = load_npy(out / "hidden_states.npy")
    assert part.shape == (3, len(IDS), 24)
    assert np.array_equal(part, h[1:4])


def test_forward_cli_integer_dtypes_and_tokens(tmp_path):
    make_gpt2(tmp_path / "g")
    base = tmp_path / "base"
    ids64 = tmp_path / "ids64.npy"
    np.save(ids64, np.array(IDS, dtype=np.int64))
    run_cli(["forward", "--model", tmp_path / "g", "--input-ids", ids64, "--out", base],
            check=True)
    h = load_npy(base / "hidden_states.npy")
    for dt in [np.int32, np.uint16, np.uint8, np.uint64]:
        p = tmp_path / f"ids_{np.dtype(dt).name}.npy"
        np.save(p, np.array(IDS, dtype=dt))
        o = tmp_path / f"o_{np.dtype(dt).name}"
        run_cli(["forward", "--model", tmp_path / "g", "--input-ids", p, "--out", o], check=True)
        assert np.array_equal(load_npy(o / "hidden_states.npy"), h)
    # --tokens: the points of entry 1 as the input of block 1.
    x = tmp_path / "x.npy"
    np.save(x, h[1])
    o = tmp_path / "pts"
    run_cli(["forward", "--model", tmp_path / "g", "--tokens", x, "--layers", "1:", "--out", o],
            check=True)
    assert np.array_equal(load_npy(o / "hidden_states.npy"), h[1:])


def test_forward_cli_torch_encoder_tokens(tmp_path):
    module = torch_encoder(True, "gelu", layers=2, final_norm=True)
    path = tmp_path / "enc.safetensors"
    meta = {"d_model": "16", "nhead": "4", "dim_feedforward": "28", "norm_first": "true",
            "activation": "gelu"}
    safetensors_torch.save_file(dict(module.state_dict()), str(path), metadata=meta)
    x = np.random.default_rng(3).normal(size=(6, 16))
    np.save(tmp_path / "x.npy", x)
    run_cli(["forward", "--model", path, "--tokens", tmp_path / "x.npy", "--out",
             tmp_path / "o"], check=True)
    assert rel(load_npy(tmp_path / "o" / "hidden_states.npy"), encoder_states(module, x, 2)) < TOL


def one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def rewrite_config(path, **changes):
    c = json.loads((path / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    (path / "config.json").write_text(json.dumps(c))


def rewrite_tensors(path, drop=(), replace=None):
    state = safetensors_torch.load_file(str(path / "model.safetensors"))
    for k in drop:
        del state[k]
    state.update(replace or {})
    safetensors_torch.save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})


BAD_CASES = [
    ("unknown_model_type", lambda p: rewrite_config(p, model_type="llama"),
     ["config.json", "model_type", "llama"]),
    ("missing_config", lambda p: (p / "config.json").unlink(), ["config.json: missing"]),
    ("missing_weights", lambda p: (p / "model.safetensors").unlink(),
     ["model.safetensors: missing"]),
    ("missing_tensor",
     lambda p: rewrite_tensors(p, drop=["encoder.layer.1.attention.self.value.weight"]),
     ["encoder.layer.1.attention.self.value.weight: missing tensor"]),
    ("misshapen_tensor",
     lambda p: rewrite_tensors(p, replace={"encoder.layer.0.output.dense.weight":
                                           torch.zeros(24, 39)}),
     ["encoder.layer.0.output.dense.weight", "expected shape", "[24, 40]", "found [24, 39]"]),
    ("hidden_size_vs_weights", lambda p: rewrite_config(p, hidden_size=28),
     ["embeddings.word_embeddings.weight", "[60, 28]", "found [60, 24]"]),
    ("heads_not_dividing", lambda p: rewrite_config(p, num_attention_heads=5),
     ["num_attention_heads: 5 does not divide hidden_size = 24"]),
    ("too_few_layers_declared", lambda p: rewrite_config(p, num_hidden_layers=1),
     ["num_hidden_layers: 1 disagrees with the weights"]),
    ("too_many_layers_declared", lambda p: rewrite_config(p, num_hidden_layers=3),
     ["encoder.layer.2: missing", "num_hidden_layers is 3"]),
    ("non_finite",
     lambda p: rewrite_tensors(p, replace={"encoder.layer.0.attention.output.dense.bias":
                                           torch.full((24,), float("inf"))}),
     ["encoder.layer.0.attention.output.dense.bias: entry 0 is infinite"]),
    ("relative_positions", lambda p: rewrite_config(p, position_embedding_type="relative_key"),
     ["position_embedding_type", "relative_key", "not supported"]),
    ("decoder", lambda p: rewrite_config(p, is_decoder=True), ["is_decoder"]),
    ("cross_attention", lambda p: rewrite_config(p, add_cross_attention=True),
     ["add_cross_attention"]),
    ("bad_activation", lambda p: rewrite_config(p, hidden_act="swish"),
     ["hidden_act", "swish"]),
    ("bad_json", lambda p: (p / "config.json").write_text("{\"model_type\": "),
     ["config.json: not valid JSON"]),
    ("deep_json", lambda p: (p / "config.json").write_text("[" * 5000 + "]" * 5000),
     ["config.json: not valid", "nested"]),
]


@pytest.mark.parametrize("name,damage,fragments", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_checkpoints_exit_2_naming_the_field(tmp_path, name, damage, fragments):
    path = tmp_path / "bert"
    make_bert(path)
    damage(path)
    ids = tmp_path / "ids.npy"
    np.save(ids, np.array(IDS))
    out = tmp_path / "out"
    line = one_line_error(run_cli(["forward", "--model", path, "--input-ids", ids, "--out", out]),
                          *fragments)
    assert line.startswith("measattn: error: --model: ") and str(path) in line
    assert not out.exists()  # nothing written
    one_line_error(run_cli(["inspect", path]), *fragments)
    with pytest.raises(ValueError) as e:
        measattn.Transformer.load(str(path))
    for f in fragments:
        assert f in str(e.value)


@pytest.mark.parametrize("field,value,fragment", [
    ("scale_attn_by_inverse_layer_idx", True, "scale_attn_by_inverse_layer_idx"),
    ("reorder_and_upcast_attn", True, "reorder_and_upcast_attn"),
    ("n_head", 5, "n_head: 5 does not divide n_embd = 24"),
    ("n_inner", 50, "[n_embd, n_inner] = [24, 50], found [24, 96]"),
])
def test_bad_gpt2_configs(tmp_path, field, value, fragment):
    path = tmp_path / "g"
    make_gpt2(path)
    rewrite_config(path, **{field: value})
    one_line_error(run_cli(["inspect", path]), fragment, "config.json" if "found" not in fragment
                   else "model.safetensors")


def test_bad_torch_encoder_metadata(tmp_path):
    module = torch_encoder(False, "relu", layers=2)
    path = tmp_path / "enc.safetensors"
    state = dict(module.state_dict())
    safetensors_torch.save_file(state, str(path), metadata={"d_model": "16"})
    one_line_error(run_cli(["inspect", path]), "__metadata__: nhead: missing")
    safetensors_torch.save_file(state, str(path), metadata={"d_model": "16", "nhead": "4",
                                                           "dim_feedforward": "28",
                                                           "activation": "tanh"})
    one_line_error(run_cli(["inspect", path]), "activation", "tanh")
    safetensors_torch.save_file(state, str(path), metadata={"d_model": "16", "nhead": "4",
                                                           "dim_feedforward": "28",
                                                           "norm_first": "maybe"})
    one_line_error(run_cli(["inspect", path]), "norm_first: expected true or false")


def test_forward_cli_bad_inputs(tmp_path):
    make_bert(tmp_path / "bert")
    m = tmp_path / "bert"
    ids = tmp_path / "ids.npy"
    np.save(ids, np.array([1, 2, 60]))
    one_line_error(run_cli(["forward", "--model", m, "--input-ids", ids, "--out", tmp_path / "o"]),
                   "--input-ids", "entry 2 is 60, outside [0, 60)")
    np.save(ids, np.array([1.5, 2.0]))
    one_line_error(run_cli(["forward", "--model", m, "--input-ids", ids, "--out", tmp_path / "o"]),
                   "--input-ids", "entry 0 is 1.5", "not an integer")
    np.save(ids, np.arange(40))
    one_line_error(run_cli(["forward", "--model", m, "--input-ids", ids, "--out", tmp_path / "o"]),
                   "40 tokens, more than the model's 32 positions")
    np.save(ids, np.array([1, 2]))
    one_line_error(run_cli(["forward", "--model", m, "--input-ids", ids, "--layers", "x",
                            "--out", tmp_path / "o"]), "--layers")
    one_line_error(run_cli(["forward", "--model", m, "--input-ids", ids, "--layers", "0:9",
                            "--out", tmp_path / "o"]), "--layers")
    one_line_error(run_cli(["forward", "--model", m, "--out", tmp_path / "o"]),
                   "--input-ids, --text or --tokens")
    # A directory measattn did not write is never replaced.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    one_line_error(run_cli(["forward", "--model", m, "--input-ids", ids, "--out", mine]), "--out")
    assert (mine / "notes.txt").read_text() == "keep"
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    t = measattn.Transformer.load(str(m))
    with pytest.raises(ValueError, match="tokens"):
        t.forward(np.array([1.5, 2.5]))  # floats are points (n, d), not ids
    with pytest.raises(ValueError, match="input_ids: entry 1 is 99"):
        t.forward(np.array([1, 99]))
    with pytest.raises(ValueError, match="layer"):
        t.block_forward(7, np.zeros((2, 24)))


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_half_precision_checkpoints_convert_exactly(tmp_path, half):
    model = make_bert(tmp_path / "f32")
    model = model.to(getattr(torch, half))
    model.save_pretrained(str(tmp_path / "half"), safe_serialization=True)
    header = json.loads(open(tmp_path / "half" / "model.safetensors", "rb").read()[8:][
        :int.from_bytes(open(tmp_path / "half" / "model.safetensors", "rb").read(8), "little")])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {
        "F16" if half == "float16" else "BF16"}
    # The reference: the same half-precision weights, widened exactly, run in float64.
    ref = hf_hidden_states(model.double(), IDS)
    t = measattn.Transformer.load(str(tmp_path / "half"))
    assert rel(t.forward(IDS), ref) < TOL
    w = t.blocks[0].attention.w_q
    assert np.array_equal(w, model.encoder.layer[0].attention.self.query.weight.detach().numpy())
