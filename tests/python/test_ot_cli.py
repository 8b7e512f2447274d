"""`measattn wasserstein --cost M.npy`: transport on a given cost matrix from the CLI,
against POT 0.8.2, and its input checks (one line on stderr, exit 2)."""
import json

import numpy as np
import pytest

from conftest import load_npy, run_cli, save_npy

ot = pytest.importorskip("ot")


def files(tmp_path, M, a=None, b=None):
    args = ["wasserstein", "--cost", save_npy(tmp_path / "M.npy", M)]
    if a is not None:
        args += ["--wa", save_npy(tmp_path / "a.npy", a)]
    if b is not None:
        args += ["--wb", save_npy(tmp_path / "b.npy", b)]
    return args


@pytest.mark.parametrize("n,m", [(7, 5), (300, 250)])
def test_cost_matrix_exact_and_sinkhorn_match_pot(tmp_path, n, m):
    rng = np.random.default_rng(n)
    M = rng.normal(size=(n, m))
    a, b = rng.random(n) + 0.1, rng.random(m) + 0.1
    a, b = a / a.sum(), b / b.sum()
    plan = tmp_path / "P.npy"
    out = json.loads(run_cli(files(tmp_path, M, a, b) + ["--json", "--plan", plan],
                             check=True).stdout)
    assert out["status"] == "optimal" and out["method"] == "exact"
    assert out["cost"] == pytest.approx(ot.emd2(a, b, M), rel=1e-12, abs=1e-14)
    np.testing.assert_allclose(load_npy(plan), ot.emd(a, b, M), atol=1e-12)
    out = json.loads(run_cli(files(tmp_path, np.abs(M), a, b) +
                             ["--method", "sinkhorn", "--reg", "0.1", "--json"], check=True).stdout)
    assert out["status"] == "converged"
    assert out["cost"] == pytest.approx(ot.sinkhorn2(a, b, np.abs(M), 0.1), rel=1e-9)
    out = json.loads(run_cli(files(tmp_path, M) + ["--json"], check=True).stdout)
    assert out["cost"] == pytest.approx(ot.emd2([], [], M), rel=1e-12, abs=1e-14)


def test_sinkhorn_cap_is_a_status(tmp_path):
    rng = np.random.default_rng(1)
    out = json.loads(run_cli(files(tmp_path, rng.random((20, 30))) +
                             ["--method", "sinkhorn", "--reg", "0.001", "--max-iterations", "3",
                              "--json"], check=True).stdout)
    assert out["status"] == "iteration_limit" and out["iterations"] == 3


@pytest.mark.parametrize("case,expect", [
    ("rows", "--wa: {a}: 4 weights for the 5 rows of --cost"),
    ("cols", "--wb: {b}: 2 weights for the 3 columns of --cost"),
    ("mass", "--wb: {b}: the weights have different totals"),
    ("negative", "--wa: {a}: weight 1 is negative or not finite"),
    ("nan", "--cost: {M}: value 5 (row 1, column 2) is NaN"),
    ("atoms", "--cost: {M}: give either the atoms A and B or a cost matrix, not both"),
    ("method", "--method: 1d needs atoms"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, case, expect):
    M = np.ones((5, 3))
    a, b = np.ones(5) / 5, np.ones(3) / 3
    extra = []
    if case == "rows":
        a = np.ones(4) / 4
    elif case == "cols":
        b = np.ones(2) / 2
    elif case == "mass":
        b = np.ones(3)
    elif case == "negative":
        a = np.array([0.5, -0.1, 0.2, 0.2, 0.2])
    elif case == "nan":
        M[1, 2] = np.nan
    elif case == "atoms":
        extra = [save_npy(tmp_path / "x.npy", np.zeros((2, 2))), save_npy(tmp_path / "y.npy",
                                                                         np.zeros((2, 2)))]
    elif case == "method":
        extra = ["--method", "1d"]
    proc = run_cli(files(tmp_path, M, a, b) + extra)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert expect.format(a=tmp_path / "a.npy", b=tmp_path / "b.npy", M=tmp_path / "M.npy") \
        in lines[0]
