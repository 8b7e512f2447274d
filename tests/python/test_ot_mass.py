"""Mass checks of `wasserstein` (CLI and Python): weights of different totals are an
error naming both totals (mass = strict, the default, as POT); mass = renormalize
divides each weight vector by its total."""
import numpy as np
import pytest

import measattn
from conftest import run_cli, save_npy


def instance(rng, n=7, m=5, d=2):
    return rng.normal(size=(n, d)), rng.normal(size=(m, d)), rng.random(n), rng.random(m)


def test_python_strict_by_default_names_both_totals():
    x, y, a, b = instance(np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"mass: .*wa sums to 3.*wb sums to 1\b"):
        measattn.wasserstein(x, y, 3 * a / a.sum(), b / b.sum())
    # Uniform weights total 1 (as POT's empty histograms).
    with pytest.raises(ValueError, match=r"wa sums to 2"):
        measattn.wasserstein(x, y, 2 * a / a.sum())
    with pytest.raises(ValueError, match=r"mass: unknown mass policy"):
        measattn.wasserstein(x, y, mass="loose")


def test_python_equal_totals_and_renormalize():
    x, y, a, b = instance(np.random.default_rng(1))
    ref = measattn.wasserstein(x, y, a / a.sum(), b / b.sum()).value
    # Equal totals other than 1 are accepted (the measures are normalized).
    assert measattn.wasserstein(x, y, 5 * a / a.sum(), 5 * b / b.sum()).value == pytest.approx(
        ref, rel=1e-14)
    assert measattn.wasserstein(x, y, a, b, mass="renormalize").value == pytest.approx(ref, rel=1e-14)
    assert measattn.wasserstein(x, y, mass="strict").value == measattn.wasserstein(x, y).value


def test_cli_strict_by_default_and_renormalize(tmp_path):
    x, y, a, b = instance(np.random.default_rng(2))
    files = [save_npy(tmp_path / "x.npy", x), save_npy(tmp_path / "y.npy", y)]
    wa = save_npy(tmp_path / "a.npy", 4 * a / a.sum())
    wb = save_npy(tmp_path / "b.npy", b / b.sum())
    proc = run_cli(["wasserstein", *files, "--wa", wa, "--wb", wb])
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "--wb: " + str(wb) in lines[0] and "sum to 4" in lines[0] and "sum to 1" in lines[0]
    assert "--mass renormalize" in lines[0]
    proc = run_cli(["wasserstein", *files, "--wa", wa])  # B uniform: total 1
    assert proc.returncode == 2 and "uniform weights of B sum to 1" in proc.stderr
    ok = run_cli(["wasserstein", *files, "--wa", wa, "--wb", wb, "--mass", "renormalize",
                  "--json"], check=True)
    ref = measattn.wasserstein(x, y, a, b, mass="renormalize").value
    import json
    assert json.loads(ok.stdout)["value"] == pytest.approx(ref, rel=1e-12)
    bad = run_cli(["wasserstein", *files, "--mass", "loose"])
    assert bad.returncode == 2 and "--mass" in bad.stderr


def test_float32_in_float32_plans_and_potentials_out():
    """docs/python.md: float32 inputs return float32 (plans and potentials included)."""
    rng = np.random.default_rng(3)
    x, y, a, b = instance(rng, 9, 8, 3)
    for method in ("exact", "sinkhorn"):
        r32 = measattn.wasserstein(x.astype(np.float32), y.astype(np.float32), a / a.sum(),
                                   b / b.sum(), method=method, dense_plan=True, potentials=True,
                                   reg=0.5)
        r64 = measattn.wasserstein(x, y, a / a.sum(), b / b.sum(), method=method,
                                   dense_plan=True, potentials=True, reg=0.5)
        assert r32.plan.dense.dtype == np.float32 and r32.plan.mass.dtype == np.float32
        assert r32.potentials[0].dtype == r32.potentials[1].dtype == np.float32
        assert r64.plan.dense.dtype == np.float64 and r64.potentials[0].dtype == np.float64
        np.testing.assert_allclose(r32.plan.dense, r64.plan.dense, atol=1e-5)
    r = measattn.wasserstein(x, y, dtype="float32", plan=True)
    assert r.plan.mass.dtype == np.float32
