"""Every script in examples/ runs (quick mode where the full run is long) and
writes what it says it writes. A new example without a case here fails
test_every_example_is_run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, measattn_bin

EXAMPLES = REPO_ROOT / "examples"

# Scripts run elsewhere in the suite, with the test that runs them.
RUN_ELSEWHERE = {
    "python_quickstart.py": "test_python_attention.py::test_quickstart_example_runs",
}


def run_example(args, tmp_path):
    env = dict(os.environ, MEASATTN_BIN=str(measattn_bin()), MEASATTN_EXAMPLES_QUICK="1",
               MPLBACKEND="Agg")
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_flow_clustering(tmp_path):
    out = tmp_path / "clusters"
    stdout = run_example(["bash", str(EXAMPLES / "flow_clustering.sh"), str(out)], tmp_path)
    summary = json.loads((out / "summary.json").read_text())
    frames = summary["frames"]
    # Energy is non-decreasing along the flow on the sphere, and the 200 tokens
    # end in fewer clusters than they started with.
    energies = [f["energy"] for f in frames]
    assert all(b >= a - 1e-9 for a, b in zip(energies, energies[1:]))
    assert frames[-1]["clusters"] < frames[0]["clusters"]
    assert (out / "trajectories.png").stat().st_size > 0
    assert np.load(out / "final.npy").shape == (200, 3)
    assert "plot:" in stdout


def test_flow_convergence(tmp_path):
    png = tmp_path / "conv.png"
    stdout = run_example([sys.executable, str(EXAMPLES / "flow_convergence.py"), str(png)],
                         tmp_path)
    assert png.stat().st_size > 0
    assert "order" in stdout


def test_gaussian_convergence(tmp_path):
    png = tmp_path / "gauss.png"
    stdout = run_example([sys.executable, str(EXAMPLES / "gaussian_convergence.py"), str(png)],
                         tmp_path)
    assert png.stat().st_size > 0
    # Quick mode: up to 8 points per axis; the 1-D dot case is at rounding by then.
    errors = [float(v) for v in stdout.split("error [")[1].split("]")[0].split()]
    assert errors[-1] < 1e-12 and errors[0] > errors[-1]
    assert (REPO_ROOT / "docs" / "img" / "gaussian_convergence.png").is_file()


def test_flow_mean_field(tmp_path):
    png = tmp_path / "mf.png"
    stdout = run_example([sys.executable, str(EXAMPLES / "flow_mean_field.py"), str(png)],
                         tmp_path)
    assert png.stat().st_size > 0
    rate = float(stdout.split("W1 ~ n^")[1].split()[0])
    assert -1.0 < rate < -0.15, stdout  # the sampling rate n^-1/2 up to logs and noise


@pytest.mark.parametrize("script,args", [
    ("lipschitz_sweeps.py", [sys.executable]),
    ("lipschitz_radius_sweep.sh", ["sh"]),
])
def test_lipschitz_sweeps(tmp_path, script, args):
    out = tmp_path / "img"
    extra = ["all"] if script.endswith(".py") else []
    run_example([*args, str(EXAMPLES / script), *extra, "--out", str(out)], tmp_path)
    for name in ["lipschitz_radius_sweep", "lipschitz_kim_sweep"]:
        assert (out / f"{name}.png").stat().st_size > 0
        rows = (out / f"{name}.csv").read_text().strip().splitlines()
        assert len(rows) > 2


def test_tutorial(tmp_path):
    """examples/tutorial.py writes the figures of docs/tutorial.md and prints the
    numbers it quotes: every quoted line is on the page."""
    pytest.importorskip("torch")
    out = tmp_path / "img"
    stdout = run_example([sys.executable, str(EXAMPLES / "tutorial.py"), "--out", str(out)],
                         tmp_path)
    page = (REPO_ROOT / "docs" / "tutorial.md").read_text()
    quotes = [line[len("quote: "):] for line in stdout.splitlines()
              if line.startswith("quote: ")]
    assert len(quotes) >= 15, stdout
    missing = [q for q in quotes if q not in page]
    assert not missing, f"numbers printed by examples/tutorial.py not in docs/tutorial.md: {missing}"
    for name in ["entropy", "lipschitz", "flow"]:
        png = out / f"tutorial_{name}.png"
        assert png.stat().st_size > 0
        assert f"img/tutorial_{name}.png" in page
        assert (REPO_ROOT / "docs" / "img" / png.name).is_file()


def test_every_example_is_run():
    tested = {"flow_clustering.sh", "flow_convergence.py", "flow_mean_field.py",
              "gaussian_convergence.py",
              "lipschitz_sweeps.py", "lipschitz_radius_sweep.sh",
              "tutorial.py"} | set(RUN_ELSEWHERE)
    present = {p.name for p in EXAMPLES.iterdir() if p.is_file()}
    assert present - tested == set(), "examples without a test"
    assert tested - present == set(), "tests of examples that no longer exist"
