#!/usr/bin/python3
"""Depth convergence: an L-layer weight-shared residual attention network (Euler)
and RK4 against a fine reference, error in W1 (exact assignment) vs L, log-log.

    examples/flow_convergence.py [OUT.png]      (MEASATTN_BIN overrides the CLI path)
"""
import json, os, pathlib, subprocess, sys, tempfile
import numpy as np
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from scipy.optimize import linear_sum_assignment

root = pathlib.Path(__file__).resolve().parents[1]
bin_ = os.environ.get("MEASATTN_BIN", str(root / "build" / "apps" / "measattn"))
png = sys.argv[1] if len(sys.argv) > 1 else "flow_convergence.png"


def run(tmp, name, *args):
    out = pathlib.Path(tmp) / name
    subprocess.run([bin_, "flow", *map(str, args), "--no-plot", "--out", str(out)], check=True)
    return np.load(out / "final.npy")


def w1(x, y):  # uniform, same size: an optimal coupling is a permutation
    c = np.linalg.norm(x[:, None] - y[None], axis=2)
    r, k = linear_sum_assignment(c)
    return c[r, k].mean()


with tempfile.TemporaryDirectory() as tmp:
    np.save(f"{tmp}/x.npy", np.random.default_rng(1).normal(size=(32, 3)))
    common = ["--builtin", "sa", "--beta", 2, "--sphere", "--tokens", f"{tmp}/x.npy", "--time", 2]
    ref = run(tmp, "ref", *common, "--scheme", "rk4", "--steps", 4000)
    steps = np.array([10, 20, 40, 80, 160])
    plt.figure(figsize=(6, 4.5))
    for scheme, marker in [("euler", "o"), ("heun", "s"), ("rk4", "^")]:
        err = np.array([w1(run(tmp, f"{scheme}{L}", *common, "--scheme", scheme, "--steps", L), ref)
                        for L in steps])
        order = -np.polyfit(np.log(steps), np.log(err), 1)[0]
        print(f"{scheme:6s} W1 errors {np.array2string(err, precision=3)}  fitted order {order:.2f}")
        plt.loglog(steps, err, marker=marker, label=f"{scheme} (order {order:.2f})")
    plt.xlabel("L (layers = steps, h = T/L)")
    plt.ylabel("W1 to the T = 2 reference")
    plt.title("weight-shared attention depth L -> infinity (sphere, beta = 2)")
    plt.legend()
    plt.grid(True, which="both", alpha=0.3)
    plt.tight_layout()
    plt.savefig(png, dpi=110)
    print("plot:", png)
