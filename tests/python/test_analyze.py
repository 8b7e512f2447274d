"""`measattn analyze`: the main job finishes, its report has every section with
finite numbers and valid PNG plots, and bad input leaves no partial report."""

import math
import re

import numpy as np
import pytest
import torch

from conftest import run_cli, save_npy, save_mha_safetensors

SECTIONS = [
    "1. Attention on measures equals the Transformer",
    "2. Attention as maximum entropy",
    "3. Lipschitz continuity in W1",
    "4. Mis-specified inputs",
    "5. The infinitely deep weight-shared network",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_report(out):
    report = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for section in SECTIONS:
        assert section in report, section
        assert section in html, section
    # Every number in the report is finite.
    assert not re.search(r"\b(nan|inf)\b", report, re.IGNORECASE), "non-finite number"
    images = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", report)
    assert len(images) >= 7
    for image in images:
        data = (out / image).read_bytes()
        assert data.startswith(PNG_MAGIC), image
        assert len(data) > 2000, image
    csvs = re.findall(r"\(data: \[([^\]]+\.csv)\]", report)
    assert len(csvs) == len(images)
    for csv in csvs:
        text = (out / csv).read_text().strip().splitlines()
        assert len(text) >= 2, csv
        for line in text[1:]:
            for cell in line.split(","):
                assert math.isfinite(float(cell)), (csv, line)
    return report


def number_after(report, label):
    m = re.search(re.escape(label) + r"[^0-9\-]*(-?[0-9.]+(?:e[-+]?[0-9]+)?)", report)
    assert m, label
    return float(m.group(1))


def test_default_analysis(tmp_path):
    out = tmp_path / "analysis"
    proc = run_cli(["analyze", "--out", out], check=True)
    assert "report:" in proc.stdout
    report = check_report(out)
    assert number_after(report, "streaming vs Transformer formula (float64) |") < 1e-13
    assert "seed | 2020" in report
    # Equivalence: the outputs equal PyTorch's attention with the same weights.
    outputs = np.load(out / "outputs.npy")
    assert outputs.shape == (48, 8)
    # The lower bound never exceeds the upper bound.
    upper = number_after(report, "**best upper bound** |")
    lower = number_after(report, "**certified lower bound** |")
    assert 0 < lower <= upper
    assert "No draw exceeded its bound." in report


def test_analysis_is_repeatable(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run_cli(["analyze", "--out", a], check=True)
    run_cli(["analyze", "--out", b], check=True, env={"OMP_NUM_THREADS": "1"})
    for name in ["outputs.csv", "lipschitz_radius_sweep.csv", "misspec.csv",
                 "flow_convergence.csv", "temperature_curve.csv"]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_analysis_of_a_pytorch_model(tmp_path):
    torch.manual_seed(5)
    mha = torch.nn.MultiheadAttention(6, 3, bias=True, batch_first=True).double()
    model = save_mha_safetensors(tmp_path / "m.safetensors", mha, num_heads=3)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 6))
    x /= np.linalg.norm(x, axis=1).max()
    tokens = save_npy(tmp_path / "x.npy", x)
    out = tmp_path / "report"
    run_cli(["analyze", "--model", model, "--tokens", tokens, "--radius", "1.5", "--out", out],
            check=True)
    check_report(out)
    with torch.no_grad():
        ref = mha(torch.from_numpy(x)[None], torch.from_numpy(x)[None],
                  torch.from_numpy(x)[None], need_weights=False)[0][0].numpy()
    got = np.load(out / "outputs.npy")
    assert np.abs(got - ref).max() <= 1e-12 * np.abs(ref).max()


@pytest.mark.parametrize("case", ["broken_model", "broken_tokens", "nan_tokens",
                                  "wrong_dim", "small_radius"])
def test_bad_input_leaves_no_report(tmp_path, case):
    out = tmp_path / "out"
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(4, 2, batch_first=True).double()
    model = save_mha_safetensors(tmp_path / "m.safetensors", mha, num_heads=2)
    tokens = save_npy(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(10, 4)))
    args = ["analyze", "--model", model, "--tokens", tokens, "--out", out]
    if case == "broken_model":
        data = (tmp_path / "m.safetensors").read_bytes()
        (tmp_path / "m.safetensors").write_bytes(data[: len(data) // 2])
    elif case == "broken_tokens":
        (tmp_path / "x.npy").write_bytes(b"\x93NUMPY garbage")
    elif case == "nan_tokens":
        bad = np.ones((10, 4))
        bad[3, 1] = np.nan
        save_npy(tmp_path / "x.npy", bad)
    elif case == "wrong_dim":
        save_npy(tmp_path / "x.npy", np.ones((10, 5)))
    elif case == "small_radius":
        args += ["--radius", "1e-3"]
    proc = run_cli(args)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists()
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())
