"""measattn flow against independent computations.

- Euler with L steps equals L applications of PyTorch's weight-shared residual
  block x + h * mha(x, x, x) (float64, 1e-10 relative);
- convergence orders in W1 (POT's exact emd2) against a fine reference;
- the energy E_beta never decreases (recomputed here from trajectory.npy);
- the orthogonal-start closed form gamma(t) (SciPy's DOP853 at rtol 1e-12);
- the mean-field limit: W1 to a large-n reference shrinks with n (fitted rate);
- a run killed with SIGKILL and resumed ends bit-identical to an uninterrupted one;
- bad input: exit 2, one line on stderr, nothing written.
"""

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from conftest import load_npy, measattn_bin, run_cli, save_mha_safetensors, save_npy

torch = pytest.importorskip("torch")
ot = pytest.importorskip("ot")
scipy_integrate = pytest.importorskip("scipy.integrate")


def flow(tmp_path, name, *args, check=True):
    out = tmp_path / name
    proc = run_cli(["flow", *args, "--out", out, "--no-plot"], check=check)
    return out, proc


def w1_assignment(x, y):
    """W1 between two uniform measures with the same number of atoms: by Birkhoff's
    theorem an optimal coupling is a permutation (SciPy's exact assignment, double
    precision; POT's emd2 stops at ~5e-9, too coarse for RK4 errors)."""
    from scipy.optimize import linear_sum_assignment
    cost = np.linalg.norm(x[:, None, :] - y[None, :, :], axis=2)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


def w1(x, y):
    a = np.full(len(x), 1.0 / len(x))
    b = np.full(len(y), 1.0 / len(y))
    cost = ot.dist(x, y, metric="euclidean")
    return float(ot.emd2(a, b, cost, numItermax=10_000_000))


def fitted_rate(xs, ys):
    slope, _ = np.polyfit(np.log(xs), np.log(ys), 1)
    return slope


@pytest.mark.parametrize("heads,bias,T,L", [(1, True, 4.0, 4), (2, True, 1.0, 5), (4, False, 3.0, 6)])
def test_euler_equals_weight_shared_mha_residual_network(tmp_path, heads, bias, T, L):
    torch.manual_seed(heads)
    E, n = 8, 24
    mha = torch.nn.MultiheadAttention(E, heads, bias=bias, dtype=torch.float64)
    with torch.no_grad():
        for p in mha.parameters():
            p.mul_(0.7)
    model = save_mha_safetensors(tmp_path / "m.safetensors", mha, heads)
    x0 = torch.randn(n, E, dtype=torch.float64)
    tokens = save_npy(tmp_path / "x0.npy", x0.numpy())
    out, _ = flow(tmp_path, "run", "--model", model, "--tokens", tokens, "--time", T,
                  "--steps", L, "--scheme", "euler")
    h = T / L
    x = x0.unsqueeze(1)  # (n, batch 1, E): the sequence is the token set
    with torch.no_grad():
        for _ in range(L):
            x = x + h * mha(x, x, x, need_weights=False)[0]
    expected = x.squeeze(1).numpy()
    got = load_npy(out / "final.npy")
    assert got.shape == (n, E)
    assert np.max(np.abs(got - expected)) <= 1e-10 * np.max(np.abs(expected))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == L and summary["scheme"] == "euler"
    assert summary["time"] == T and summary["status"] == "completed"


def test_weighted_euler_equals_mha_with_log_weight_mask(tmp_path):
    torch.manual_seed(5)
    E, n, L, T = 4, 16, 3, 1.5
    mha = torch.nn.MultiheadAttention(E, 2, bias=True, dtype=torch.float64)
    model = save_mha_safetensors(tmp_path / "m.safetensors", mha, 2)
    x0 = torch.randn(n, E, dtype=torch.float64)
    w = np.random.default_rng(5).uniform(0.1, 1.0, n)
    w /= w.sum()
    out, _ = flow(tmp_path, "run", "--model", model, "--tokens", save_npy(tmp_path / "x.npy", x0),
                  "--weights", save_npy(tmp_path / "w.npy", w), "--time", T, "--steps", L)
    mask = torch.from_numpy(np.log(w)).expand(n, n).clone()
    x = x0.unsqueeze(1)
    with torch.no_grad():
        for _ in range(L):
            x = x + (T / L) * mha(x, x, x, attn_mask=mask, need_weights=False)[0]
    expected = x.squeeze(1).numpy()
    assert np.max(np.abs(load_npy(out / "final.npy") - expected)) <= 1e-10 * np.max(np.abs(expected))


def test_convergence_orders_in_w1(tmp_path):
    rng = np.random.default_rng(1)
    n, d = 16, 3
    tokens = save_npy(tmp_path / "x.npy", rng.normal(size=(n, d)))
    common = ["--builtin", "sa", "--beta", 2.0, "--sphere", "--tokens", tokens, "--time", 2.0]
    ref_dir, _ = flow(tmp_path, "ref", *common, "--scheme", "rk4", "--steps", 4000)
    ref = load_npy(ref_dir / "final.npy")
    steps = [20, 40, 80, 160]
    for scheme, order in [("euler", 1.0), ("rk4", 4.0)]:
        errors = []
        for L in steps:
            out, _ = flow(tmp_path, f"{scheme}{L}", *common, "--scheme", scheme, "--steps", L)
            errors.append(w1_assignment(load_npy(out / "final.npy"), ref))
        rate = -fitted_rate(steps, errors)
        print(f"{scheme}: W1 errors {errors}, measured order {rate:.3f}")
        assert abs(rate - order) <= 0.1 * order, (scheme, errors, rate)


def energy(x, w, beta):
    return 0.5 / beta * float(w @ np.exp(beta * x @ x.T) @ w)


@pytest.mark.parametrize("sphere", [True, False])
def test_energy_never_decreases(tmp_path, sphere):
    rng = np.random.default_rng(2)
    n, d, beta = 30, 3, 3.0
    x0 = rng.normal(size=(n, d)) * (1.0 if sphere else 0.5)
    w = rng.uniform(0.2, 1.0, n)
    w /= w.sum()
    args = ["--builtin", "sa", "--beta", beta, "--tokens", save_npy(tmp_path / "x.npy", x0),
            "--weights", save_npy(tmp_path / "w.npy", w), "--time", 6.0 if sphere else 1.0,
            "--steps", 300, "--scheme", "rk4", "--save-every", 10]
    if sphere:
        args.append("--sphere")
    out, _ = flow(tmp_path, "run", *args)
    summary = json.loads((out / "summary.json").read_text())
    traj = load_npy(out / "trajectory.npy")
    assert traj.shape == (31, n, d)
    reported = np.array([f["energy"] for f in summary["frames"]])
    recomputed = np.array([energy(frame, w, beta) for frame in traj])
    np.testing.assert_allclose(reported, recomputed, rtol=1e-12)
    assert np.all(np.diff(recomputed) >= -1e-12 * recomputed[:-1])
    assert recomputed[-1] > recomputed[0]
    if sphere:
        np.testing.assert_allclose(np.linalg.norm(traj, axis=2), 1.0, atol=1e-14)
        start = x0 / np.linalg.norm(x0, axis=1, keepdims=True)
        np.testing.assert_allclose(traj[0], start, rtol=0, atol=1e-15)


@pytest.mark.parametrize("n,d,beta", [(4, 4, 1.0), (3, 7, 5.0), (6, 6, 0.5)])
def test_orthogonal_start_closed_form(tmp_path, n, d, beta):
    q, _ = np.linalg.qr(np.random.default_rng(n).normal(size=(d, d)))
    x0 = q[:n]  # n orthonormal rows
    T = 4.0

    def rhs(_, g):
        e = np.exp(beta * g)
        return 2 * e * (1 - g) * ((n - 1) * g + 1) / (np.exp(beta) + (n - 1) * e)

    times = np.linspace(0, T, 9)
    sol = scipy_integrate.solve_ivp(rhs, (0, T), [0.0], method="DOP853", rtol=1e-13,
                                    atol=1e-15, t_eval=times)
    for scheme in ["rk4", "dopri5"]:
        out, _ = flow(tmp_path, scheme, "--builtin", "sa", "--beta", beta, "--sphere", "--tokens",
                      save_npy(tmp_path / "x.npy", x0), "--time", T, "--steps", 800,
                      "--scheme", scheme, "--tol", 1e-12, "--save-every", 100)
        traj = load_npy(out / "trajectory.npy")
        summary = json.loads((out / "summary.json").read_text())
        frame_times = [f["time"] for f in summary["frames"]]
        final = traj[-1]
        cos = final @ final.T
        off = cos[~np.eye(n, dtype=bool)]
        assert np.max(np.abs(off - sol.y[0, -1])) <= 1e-8, (scheme, off, sol.y[0, -1])
        if scheme == "rk4":
            np.testing.assert_allclose(frame_times, times, rtol=0, atol=1e-15)
            for k, frame in enumerate(traj):
                c = frame @ frame.T
                assert np.max(np.abs(c[~np.eye(n, dtype=bool)] - sol.y[0, k])) <= 1e-8


def test_clusters_and_outputs(tmp_path):
    rng = np.random.default_rng(3)
    x0 = rng.normal(size=(60, 3))
    out = tmp_path / "run"
    run_cli(["flow", "--builtin", "sa", "--beta", 4.0, "--sphere", "--tokens",
             save_npy(tmp_path / "x.npy", x0), "--time", 30.0, "--steps", 300, "--scheme", "rk4",
             "--save-every", 30, "--cluster-tol", 1e-2, "--out", out], check=True)
    summary = json.loads((out / "summary.json").read_text())
    counts = [f["clusters"] for f in summary["frames"]]
    assert counts[0] == 60 and counts[-1] < 10
    assert all(b <= a for a, b in zip(counts, counts[1:]))
    assert (out / "trajectories.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["outputs"]["plot"] == "trajectories.png"
    assert not [p for p in os.listdir(out) if "tmp" in p]


def test_mean_field_limit(tmp_path):
    # mu_0 = N(0, I_2); the random-model flow at T = 1 of n samples against n = 2000.
    torch.manual_seed(7)
    mha = torch.nn.MultiheadAttention(2, 1, bias=True, dtype=torch.float64)
    model = save_mha_safetensors(tmp_path / "m.safetensors", mha, 1)
    rng = np.random.default_rng(7)
    common = ["--model", model, "--time", 1.0, "--steps", 20, "--scheme", "rk4"]
    ref_dir, _ = flow(tmp_path, "ref", "--tokens", save_npy(tmp_path / "ref.npy",
                                                            rng.normal(size=(2000, 2))), *common)
    ref = load_npy(ref_dir / "final.npy")
    sizes = [25, 50, 100, 200, 400]
    mean_w1 = []
    for n in sizes:
        vals = []
        for rep in range(4):
            out, _ = flow(tmp_path, f"n{n}_{rep}", "--tokens",
                          save_npy(tmp_path / f"x{n}_{rep}.npy", rng.normal(size=(n, 2))), *common)
            vals.append(w1(load_npy(out / "final.npy"), ref))
        mean_w1.append(np.mean(vals))
    rate = fitted_rate(sizes, mean_w1)
    print(f"mean-field: W1(mu_T^n, mu_T^2000) = {mean_w1}, fitted rate n^{rate:.3f}")
    assert mean_w1[-1] < mean_w1[0]
    assert -0.8 < rate < -0.25


def _start(args):
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    return subprocess.Popen([measattn_bin(), *[str(a) for a in args]], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)


@pytest.mark.parametrize("scheme,extra", [("euler", []), ("dopri5", ["--tol", "1e-8", "--sphere"])])
def test_sigkill_and_resume_is_bit_identical(tmp_path, scheme, extra):
    rng = np.random.default_rng(11)
    # Long enough that the run is still going well after its first checkpoint
    # (about 1 s each on the 2-core machine; dopri5 takes only ~12 steps here).
    n = 3000 if scheme == "euler" else 5000
    tokens = save_npy(tmp_path / "x.npy", rng.normal(size=(n, 3)))
    def make_args(T):
        return ["flow", "--builtin", "sa", "--beta", 1.0, "--tokens", tokens, "--time", T,
                "--steps", 120, "--scheme", scheme, *extra, "--save-every", 7, "--no-plot"]

    args = make_args(3.0)
    full = tmp_path / "full"
    run_cli([*args, "--out", full], check=True)
    killed = tmp_path / "killed"
    proc = _start([*args, "--checkpoint-every", 3, "--out", killed])
    checkpoint = killed / "checkpoint.bin"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert checkpoint.exists()
    assert not (killed / "final.npy").exists()
    resumed = run_cli([*args, "--checkpoint-every", 3, "--resume", "--out", killed], check=True)
    assert resumed.returncode == 0
    for name in ["final.npy", "trajectory.npy"]:
        assert (killed / name).read_bytes() == (full / name).read_bytes(), name
    s_full = json.loads((full / "summary.json").read_text())
    s_res = json.loads((killed / "summary.json").read_text())
    assert s_res["resumed"] and s_res["resumed_from_step"] > 0
    for key in ["steps", "rejected_steps", "time", "frames", "field_evaluations"]:
        assert s_res[key] == s_full[key], key
    # Resuming with other arguments is refused.
    bad = run_cli([*make_args(3.5), "--checkpoint-every", 3, "--resume",
                   "--out", killed])
    assert bad.returncode == 2
    assert "does not match the arguments" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_bad_input_exits_2_and_writes_nothing(tmp_path):
    tokens = save_npy(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(5, 3)))
    zero = save_npy(tmp_path / "z.npy", np.zeros((5, 3)))
    torch.manual_seed(0)
    model4 = save_mha_safetensors(tmp_path / "m4.safetensors",
                                  torch.nn.MultiheadAttention(4, 1, dtype=torch.float64), 1)
    cases = [
        ["--builtin", "sa", "--beta", 1, "--tokens", tmp_path / "missing.npy", "--time", 1, "--steps", 2],
        ["--builtin", "sa", "--tokens", tokens, "--time", 1, "--steps", 2],
        ["--builtin", "sa", "--beta", 1, "--model", model4, "--tokens", tokens, "--time", 1, "--steps", 2],
        ["--model", model4, "--tokens", tokens, "--time", 1, "--steps", 2],
        ["--builtin", "sa", "--beta", 1, "--tokens", tokens, "--time", 1, "--steps", 2, "--scheme", "rk45"],
        ["--builtin", "sa", "--beta", 1, "--tokens", tokens, "--time", 0, "--steps", 2],
        ["--builtin", "sa", "--beta", 1, "--tokens", tokens, "--time", 1],
        ["--builtin", "sa", "--beta", 1, "--tokens", tokens, "--time", 1, "--steps", 2, "--unnormalized"],
        ["--builtin", "sa", "--beta", 1, "--tokens", zero, "--time", 1, "--steps", 2, "--sphere"],
        ["--builtin", "sa", "--beta", 1, "--tokens", tokens, "--time", 1, "--steps", 2, "--resume"],
        ["--builtin", "xx", "--beta", 1, "--tokens", tokens, "--time", 1, "--steps", 2],
    ]
    for k, args in enumerate(cases):
        out = tmp_path / f"out{k}"
        proc = run_cli(["flow", *args, "--out", out])
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not out.exists() or not os.listdir(out), args


def test_unnormalized_field_and_dopri5_summary(tmp_path):
    rng = np.random.default_rng(4)
    x0 = rng.normal(size=(20, 3))
    out, _ = flow(tmp_path, "usa", "--builtin", "sa", "--beta", 2.0, "--sphere", "--unnormalized",
                  "--tokens", save_npy(tmp_path / "x.npy", x0), "--time", 1.0, "--scheme",
                  "dopri5", "--tol", 1e-9, "--save-every", 2)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["field"] == "unnormalized" and summary["scheme"] == "dopri5"
    assert summary["time"] == 1.0 and summary["steps"] > 0
    e = [f["energy"] for f in summary["frames"]]
    assert all(b >= a for a, b in zip(e, e[1:]))
    # Independent RK4 in NumPy of dx/dt = P_x(sum_j w_j e^{beta <x,x_j>} x_j).
    x = x0 / np.linalg.norm(x0, axis=1, keepdims=True)
    w = np.full(20, 1 / 20)

    def f(y):
        u = (np.exp(2.0 * y @ y.T) * w) @ y
        return u - np.sum(u * y, axis=1, keepdims=True) * y

    h = 1.0 / 2000
    for _ in range(2000):
        k1 = f(x); k2 = f(x + h / 2 * k1); k3 = f(x + h / 2 * k2); k4 = f(x + h * k3)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert np.max(np.abs(load_npy(out / "final.npy") - x)) < 1e-7
