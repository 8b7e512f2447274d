"""measattn.ot against the newest POT from PyPI (pot==0.9.7.post1), which lives in its
own virtual environment (scripts/venv-pot.sh: ./.venv-pot or $MEASATTN_POT_VENV, without
Debian's packages). POT runs in a child process of that environment on instances saved
to a file; its results come back the same way."""
import os
import pathlib
import subprocess
import textwrap
import warnings

import numpy as np
import pytest

import measattn.ot as mot

ROOT = pathlib.Path(__file__).resolve().parents[2]
PINNED = "0.9.7.post1"


def pot_python():
    venv = pathlib.Path(os.environ.get("MEASATTN_POT_VENV", ROOT / ".venv-pot"))
    python = venv / "bin" / "python"
    if not python.exists():
        pytest.skip(f"the newest POT is not installed: {venv} does not exist "
                    "(scripts/venv-pot.sh creates it; it needs PyPI)")
    proc = subprocess.run([str(python), "-c", "import ot; print(ot.__version__)"],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 or proc.stdout.strip() != PINNED:
        pytest.skip(f"{python} has no POT {PINNED} ({proc.stdout.strip() or proc.stderr[-200:]}); "
                    "rerun scripts/venv-pot.sh")
    return str(python)


# The child: reads the instances, runs POT, writes its results (keys prefixed by case).
CHILD = textwrap.dedent("""
    import sys, warnings
    import numpy as np
    import ot
    warnings.simplefilter("ignore")
    data = dict(np.load(sys.argv[1]))
    out = {}
    for case in sorted({k.split("/")[0] for k in data}):
        a, b, M = data[case + "/a"], data[case + "/b"], data[case + "/M"]
        G, lg = ot.emd(a, b, M, log=True)
        out[case + "/emd"] = G
        out[case + "/emd_cost"] = np.array(lg["cost"])
        out[case + "/emd_u"] = lg["u"]
        out[case + "/emd_v"] = lg["v"]
        B = data[case + "/B"]
        out[case + "/emd2_multi"] = np.array(ot.emd2(a, B, M))
        for method in ("sinkhorn", "sinkhorn_log", "sinkhorn_stabilized"):
            G, lg = ot.sinkhorn(a, b, M, 0.1, method=method, log=True)
            out[case + "/" + method] = G
            out[case + "/" + method + "_keys"] = np.array(sorted(lg))
            if "niter" in lg:
                out[case + "/" + method + "_niter"] = np.array(lg["niter"])
        G, lg = ot.sinkhorn(a, b, M, 0.01, numItermax=7, log=True)
        out[case + "/capped"] = G
        out[case + "/capped_niter"] = np.array(lg["niter"])
        G, lg = ot.sinkhorn(a, b, M, 0.1, method="sinkhorn_log", log=True,
                            warmstart=(data[case + "/lu"], data[case + "/lv"]))
        out[case + "/warm"] = G
        out[case + "/sinkhorn2_multi"] = np.array(ot.sinkhorn2(a, B, M, 0.1))
        x, y = data[case + "/x"], data[case + "/y"]
        out[case + "/emd2_1d"] = np.array(ot.emd2_1d(x, y, a[:len(x)] / a[:len(x)].sum(),
                                                     b[:len(y)] / b[:len(y)].sum()))
        X, Y = data[case + "/X"], data[case + "/Y"]
        out[case + "/sliced"] = np.array(ot.sliced_wasserstein_distance(X, Y, n_projections=20,
                                                                        seed=3))
        out[case + "/f32"] = ot.sinkhorn(a.astype(np.float32), b.astype(np.float32),
                                         M.astype(np.float32), 0.1)
    np.savez(sys.argv[2], **out)
""")


def histogram(rng, n):
    w = rng.random(n) + 0.05
    return w / w.sum()


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    python = pot_python()
    rng = np.random.default_rng(2026)
    data = {}
    for name, (n, m, kind) in {"small": (12, 9, "normal"), "mid": (150, 120, "uniform"),
                                "metric": (200, 250, "metric")}.items():
        a, b = histogram(rng, n), histogram(rng, m)
        if kind == "normal":
            M = rng.normal(size=(n, m))
        elif kind == "uniform":
            M = rng.random((n, m))
        else:
            M = mot.dist(rng.normal(size=(n, 2)), rng.normal(size=(m, 2)))
        B = rng.random((m, 3))
        B /= B.sum(0)
        _, lg = mot.sinkhorn(a, b, M, 0.1, method="sinkhorn_log", log=True, numItermax=30,
                             warn=False)
        data.update({f"{name}/a": a, f"{name}/b": b, f"{name}/M": M, f"{name}/B": B,
                     f"{name}/lu": lg["log_u"], f"{name}/lv": lg["log_v"],
                     f"{name}/x": rng.normal(size=n // 2), f"{name}/y": rng.random(m // 2),
                     f"{name}/X": rng.normal(size=(n, 3)), f"{name}/Y": rng.normal(size=(m, 3))})
    tmp = tmp_path_factory.mktemp("pot_latest")
    np.savez(tmp / "in.npz", **data)
    (tmp / "child.py").write_text(CHILD)
    proc = subprocess.run([python, "-I", str(tmp / "child.py"), str(tmp / "in.npz"),
                           str(tmp / "out.npz")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return data, dict(np.load(tmp / "out.npz"))


@pytest.mark.parametrize("case", ["small", "mid", "metric"])
def test_matches_the_newest_pot(cases, case):
    data, ref = cases
    a, b, M, B = (data[f"{case}/{k}"] for k in ("a", "b", "M", "B"))
    G, lg = mot.emd(a, b, M, log=True)
    np.testing.assert_allclose(G, ref[f"{case}/emd"], atol=1e-12)
    assert lg["cost"] == pytest.approx(float(ref[f"{case}/emd_cost"]), rel=1e-12, abs=1e-14)
    np.testing.assert_allclose(lg["u"], ref[f"{case}/emd_u"], atol=1e-9)
    np.testing.assert_allclose(lg["v"], ref[f"{case}/emd_v"], atol=1e-9)
    np.testing.assert_allclose(mot.emd2(a, B, M), ref[f"{case}/emd2_multi"], rtol=1e-12,
                               atol=1e-14)
    for method in ("sinkhorn", "sinkhorn_log", "sinkhorn_stabilized"):
        G, lg = mot.sinkhorn(a, b, M, 0.1, method=method, log=True)
        np.testing.assert_allclose(G, ref[f"{case}/{method}"], atol=1e-9)
        assert sorted(lg) == list(ref[f"{case}/{method}_keys"])
        if f"{case}/{method}_niter" in ref:
            assert lg["niter"] == int(ref[f"{case}/{method}_niter"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        G, lg = mot.sinkhorn(a, b, M, 0.01, numItermax=7, log=True)
    np.testing.assert_allclose(G, ref[f"{case}/capped"], rtol=1e-9, atol=1e-15)
    assert lg["niter"] == int(ref[f"{case}/capped_niter"])
    G = mot.sinkhorn(a, b, M, 0.1, method="sinkhorn_log",
                     warmstart=(data[f"{case}/lu"], data[f"{case}/lv"]))
    np.testing.assert_allclose(G, ref[f"{case}/warm"], atol=1e-9)
    np.testing.assert_allclose(mot.sinkhorn2(a, B, M, 0.1), ref[f"{case}/sinkhorn2_multi"],
                               rtol=1e-8)
    x, y = data[f"{case}/x"], data[f"{case}/y"]
    assert mot.emd2_1d(x, y, a[:len(x)] / a[:len(x)].sum(), b[:len(y)] / b[:len(y)].sum()) == \
        pytest.approx(float(ref[f"{case}/emd2_1d"]), rel=1e-12)
    assert mot.sliced_wasserstein_distance(data[f"{case}/X"], data[f"{case}/Y"], n_projections=20,
                                           seed=3) == pytest.approx(float(ref[f"{case}/sliced"]),
                                                                    rel=1e-12)
    f32 = mot.sinkhorn(a.astype(np.float32), b.astype(np.float32), M.astype(np.float32), 0.1)
    assert f32.dtype == ref[f"{case}/f32"].dtype == np.float32
    np.testing.assert_allclose(f32, ref[f"{case}/f32"], rtol=1e-3, atol=1e-6)
