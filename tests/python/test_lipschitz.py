"""measattn lipschitz / misspec: JSON fields, lower <= upper, witnesses that
reproduce their ratio with POT (ot.emd2) and torch.nn.MultiheadAttention."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import load_npy, run_cli, save_mha_safetensors, save_npy

ot = pytest.importorskip("ot")


def make_mha(d, heads, bias, seed, scale_qk=1.0):
    torch.manual_seed(seed)
    mha = torch.nn.MultiheadAttention(d, heads, bias=bias, batch_first=True).double()
    with torch.no_grad():
        mha.in_proj_weight[: 2 * d] *= scale_qk
        if bias:
            mha.in_proj_bias.normal_(0, 0.3)
            mha.out_proj.bias.normal_(0, 0.3)
    return mha


def torch_field(mha, atoms, weights):
    """Gamma_mu(x_i) for mu = sum_j w_j delta_{x_j}: attention with log w as float mask."""
    x = torch.tensor(atoms, dtype=torch.float64).unsqueeze(0)
    n = atoms.shape[0]
    mask = torch.tensor(np.log(weights), dtype=torch.float64).unsqueeze(0).expand(n, n)
    with torch.no_grad():
        out, _ = mha(x, x, x, attn_mask=mask.contiguous(), need_weights=False)
    return out[0].numpy()


def w1(a, wa, b, wb):
    cost = ot.dist(a, b, metric="euclidean")
    return float(ot.emd2(wa / wa.sum(), wb / wb.sum(), cost, numItermax=1000000))


@pytest.mark.parametrize("d,heads,bias", [(2, 1, False), (4, 2, True)])
def test_json_fields_consistency_and_witness(tmp_path, d, heads, bias):
    mha = make_mha(d, heads, bias, seed=d + heads, scale_qk=1.5)
    model = save_mha_safetensors(tmp_path / "m.safetensors", mha, heads)
    wdir = tmp_path / "witness"
    proc = run_cli(["lipschitz", "--model", model, "--radius", "1.5", "--atoms", "3",
                    "--restarts", "6", "--steps", "30", "--seed", "3", "--witness", wdir,
                    "--json"], check=True)
    out = json.loads(proc.stdout)
    for key in ("upper_bounds", "best_upper", "lower_bound", "gap", "token_level"):
        assert key in out
    ub = out["upper_bounds"]
    assert {"w1_theorem", "w1_per_head", "w1_combined"} <= set(ub)
    assert "kim_token_l2" not in ub  # dot potential: Kim's bounds do not apply
    assert out["best_upper"] == pytest.approx(min(v for k, v in ub.items()
                                                  if out["upper_bound_kinds"][k] == "w1"))
    assert 0 < out["lower_bound"] <= out["best_upper"]
    assert out["gap"] == pytest.approx(out["best_upper"] / out["lower_bound"])
    assert out["token_level"]["value"] > 0 and "meaning" in out["token_level"]

    # The witness reproduces the ratio with POT and PyTorch.
    meta = json.loads((wdir / "witness.json").read_text())
    mu, wmu = load_npy(wdir / "mu_atoms.npy"), load_npy(wdir / "mu_weights.npy")
    nu, wnu = load_npy(wdir / "nu_atoms.npy"), load_npy(wdir / "nu_weights.npy")
    assert np.all(np.linalg.norm(mu, axis=1) <= 1.5 + 1e-12)
    assert np.all(np.linalg.norm(nu, axis=1) <= 1.5 + 1e-12)
    fmu, fnu = torch_field(mha, mu, wmu), torch_field(mha, nu, wnu)
    np.testing.assert_allclose(fmu, load_npy(wdir / "f_mu_atoms.npy"), atol=1e-10)
    np.testing.assert_allclose(fnu, load_npy(wdir / "f_nu_atoms.npy"), atol=1e-10)
    w_in, w_out = w1(mu, wmu, nu, wnu), w1(fmu, wmu, fnu, wnu)
    assert w_in == pytest.approx(meta["w1_input"], rel=1e-7)
    assert w_out / w_in == pytest.approx(out["lower_bound"], rel=1e-6)
    assert w_out / w_in <= out["best_upper"]


def test_l2_tied_model_reports_kim(tmp_path):
    # Kim et al.'s L2-MHA: tied W^Q = W^K, values A W^V with A = W^Q W^Q^T / tau.
    d = 2
    rng = np.random.default_rng(5)
    wq = rng.normal(size=(d, d))
    tau = math.sqrt(d)
    wv = rng.normal(size=(d, d)) @ wq.T @ wq / tau
    sd = {"in_proj_weight": np.vstack([wq, wq, wv]), "out_proj.weight": np.eye(d)}
    model = save_mha_safetensors(tmp_path / "kim.safetensors", sd, 1, potential="l2")
    out = json.loads(run_cli(["lipschitz", "--model", model, "--radius", "1", "--atoms", "4",
                              "--restarts", "4", "--steps", "20", "--json"], check=True).stdout)
    ub = out["upper_bounds"]
    assert "kim_token_l2" in ub and "kim_token_linf" in ub
    assert out["upper_bound_kinds"]["kim_token_l2"] == "token_l2"
    assert "not a bound on the W1 constant" in out["upper_bound_meanings"]["kim_token_l2"]
    assert out["token_level"]["value"] <= ub["kim_token_l2"] * (1 + 1e-9)
    assert 0 < out["lower_bound"] <= out["best_upper"]


def test_bad_input_exit_2_and_no_partial_witness(tmp_path):
    mha = make_mha(2, 1, False, seed=1)
    model = save_mha_safetensors(tmp_path / "m.safetensors", mha, 1)
    wdir = tmp_path / "w"
    for args in (["--radius", "-1"], ["--radius", "1", "--atoms", "0"],
                 ["--radius", "1", "--restarts", "0"]):
        proc = run_cli(["lipschitz", "--model", model, "--witness", wdir] + args)
        assert proc.returncode == 2
        assert len(proc.stderr.strip().splitlines()) == 1
        assert not wdir.exists()
    proc = run_cli(["lipschitz", "--model", tmp_path / "missing.safetensors", "--radius", "1"])
    assert proc.returncode == 2


def test_misspec_cli(tmp_path):
    mha = make_mha(2, 1, True, seed=7)
    model = save_mha_safetensors(tmp_path / "m.safetensors", mha, 1)
    rng = np.random.default_rng(0)
    tokens = save_npy(tmp_path / "x.npy", rng.normal(size=(12, 2)))
    for kind, flag, values in (("sample", "--sizes", "4,16,64"),
                               ("noise", "--sigmas", "0.01,0.1"),
                               ("corrupt", "--eps", "0.05,0.2")):
        csv = tmp_path / f"{kind}.csv"
        out = json.loads(run_cli(["misspec", "--model", model, "--tokens", tokens, "--kind", kind,
                                  flag, values, "--json", "--csv", csv], check=True).stdout)
        assert not out["violated"]
        assert len(out["rows"]) == len(values.split(","))
        for row in out["rows"]:
            assert row["w1_output"] <= row["bound"] * (1 + 1e-9) + 1e-12
        assert csv.exists() and csv.read_text().count("\n") == len(out["rows"]) + 1
        if kind == "sample":
            assert out["output_rate"] < 0
        # Kind-specific numbers appear only where computed: the rates for sampling,
        # the a-priori bound for noise and corruption.
        assert ("output_rate" in out) == ("input_rate" in out) == (kind == "sample")
        assert all(("a_priori" in row) == (kind != "sample") for row in out["rows"])
    proc = run_cli(["misspec", "--model", model, "--tokens", tokens, "--kind", "bogus"])
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
