#!/usr/bin/python3
"""Mean-field limit: n i.i.d. samples of mu_0 = N(0, I_2) pushed by the flow of a
random attention layer up to T = 1; W1 (POT, exact) to a large-n reference at T,
averaged over repetitions, and the fitted rate n^r (log-log least squares).

    examples/flow_mean_field.py [OUT.png]      (MEASATTN_BIN overrides the CLI path)

MEASATTN_EXAMPLES_QUICK=1 runs a smaller version (reference n = 1000, n <= 200,
three repetitions) in a few seconds; the test suite uses it.
"""
import os, pathlib, subprocess, sys, tempfile
import numpy as np
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import ot
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "python"))
from conftest import save_mha_safetensors  # noqa: E402

root = pathlib.Path(__file__).resolve().parents[1]
bin_ = os.environ.get("MEASATTN_BIN", str(root / "build" / "apps" / "measattn"))
png = sys.argv[1] if len(sys.argv) > 1 else "flow_mean_field.png"
rng = np.random.default_rng(0)
quick = os.environ.get("MEASATTN_EXAMPLES_QUICK") == "1"
n_ref, sizes, repeats = (1000, [25, 50, 100, 200], 3) if quick else \
    (4000, [25, 50, 100, 200, 400, 800], 5)

with tempfile.TemporaryDirectory() as tmp:
    torch.manual_seed(0)
    model = save_mha_safetensors(f"{tmp}/m.safetensors",
                                 torch.nn.MultiheadAttention(2, 1, dtype=torch.float64), 1)

    def final(x, name):
        np.save(f"{tmp}/{name}.npy", x)
        subprocess.run([bin_, "flow", "--model", model, "--tokens", f"{tmp}/{name}.npy", "--time",
                        "1", "--steps", "20", "--scheme", "rk4", "--no-plot", "--out",
                        f"{tmp}/{name}"], check=True)
        return np.load(f"{tmp}/{name}/final.npy")

    ref = final(rng.normal(size=(n_ref, 2)), "ref")
    sizes = np.array(sizes)
    means = []
    for n in sizes:
        vals = [ot.emd2(np.full(n, 1 / n), np.full(len(ref), 1 / len(ref)),
                        ot.dist(final(rng.normal(size=(n, 2)), f"s{n}_{k}"), ref, metric="euclidean"),
                        numItermax=10**7) for k in range(repeats)]
        means.append(np.mean(vals))
    rate = np.polyfit(np.log(sizes), np.log(means), 1)[0]
    for n, m in zip(sizes, means):
        print(f"n = {n:5d}  W1(mu_T^n, mu_T^ref) = {m:.4f}")
    print(f"fitted rate: W1 ~ n^{rate:.3f}  (d = 2: the i.i.d. sampling rate is n^-1/2 up to logs)")
    plt.figure(figsize=(6, 4.5))
    plt.loglog(sizes, means, "o-", label=f"measured, fit n^{rate:.2f}")
    plt.loglog(sizes, means[0] * (sizes / sizes[0]) ** -0.5, "--", label="n^-1/2")
    plt.xlabel("n (particles)")
    plt.ylabel(f"W1 at T = 1 to the n = {n_ref} reference")
    plt.title("mean-field limit of the attention flow")
    plt.legend()
    plt.grid(True, which="both", alpha=0.3)
    plt.tight_layout()
    plt.savefig(png, dpi=110)
    print("plot:", png)
