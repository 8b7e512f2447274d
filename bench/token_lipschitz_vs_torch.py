#!/usr/bin/python3
"""measattn's token-level local constant against PyTorch's dense Jacobian, in one run.

Both sides compute ||J(X)||_2, J the Jacobian of X -> (Gamma_{mu_X}(x_i))_i
(uniform weights), for one random layer with d = 64 and 4 heads (biases on) at n
random tokens, in float64 on the same threads:

* measattn: token_jacobian_norm (restarted Lanczos on J^T J through JVPs and VJPs,
  relative residual 1e-10), in this process;
* PyTorch 1.13: torch.autograd.functional.jacobian(vectorize=True) of the same
  layer written with torch.matmul + torch.softmax, then
  torch.linalg.matrix_norm(J, ord=2) (an SVD of the (n d) x (n d) matrix).

The two values are compared (relative difference printed). Sizes are interleaved
(measattn, then PyTorch, per size, --repetitions times, medians) so that load
drifts hit both. PyTorch runs only up to --torch-max tokens: beyond, its dense
Jacobian ((n d)^2 doubles: 8.6 GB at n = 512) and SVD (O((n d)^3)) do not fit the
machine's time or memory; its time there is extrapolated from a least-squares fit
of log time against log n over the measured sizes and marked as such.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np


def torch_layer(model, torch):
    e, h = model.w_q.shape[0], model.num_heads
    k = e // h
    tau = model.scale if model.scale > 0 else np.sqrt(k)
    t = {name: torch.tensor(np.asarray(getattr(model, name)))
         for name in ("w_q", "w_k", "w_v", "w_o", "b_q", "b_k", "b_v", "b_o")}

    def f(x):
        q = x @ t["w_q"].T + t["b_q"]
        kk = x @ t["w_k"].T + t["b_k"]
        v = x @ t["w_v"].T + t["b_v"]
        heads = []
        for i in range(h):
            s = slice(i * k, (i + 1) * k)
            heads.append(torch.softmax(q[:, s] @ kk[:, s].T / tau, dim=1) @ v[:, s])
        return torch.cat(heads, dim=1) @ t["w_o"].T + t["b_o"]
    return f


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="16,32,64,128,512")
    ap.add_argument("--torch-max", type=int, default=64)
    ap.add_argument("--repetitions", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    import measattn
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    model = measattn.Model.random(64, 4, True, seed=1)
    f = torch_layer(model, torch)
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        x = np.random.default_rng(n).normal(size=(n, 64))
        ours, theirs, value, ref = [], [], None, None
        for _ in range(args.repetitions):
            t0 = time.perf_counter()
            r = measattn.token_jacobian_norm(model, x)
            ours.append(time.perf_counter() - t0)
            value = r.value
            if n <= args.torch_max:
                t0 = time.perf_counter()
                jac = torch.autograd.functional.jacobian(f, torch.tensor(x), vectorize=True)
                ref = float(torch.linalg.matrix_norm(jac.reshape(n * 64, n * 64), ord=2))
                theirs.append(time.perf_counter() - t0)
                del jac
        row = {"n": n, "measattn_s": statistics.median(ours), "value": value,
               "products": r.products, "status": r.status}
        if theirs:
            row["torch_s"] = statistics.median(theirs)
            row["torch_value"] = ref
            row["relative_difference"] = abs(value - ref) / ref
            row["ratio"] = row["torch_s"] / row["measattn_s"]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    measured = [r for r in rows if "torch_s" in r]
    if len(measured) >= 2:
        slope, icpt = np.polyfit(np.log([r["n"] for r in measured]),
                                 np.log([r["torch_s"] for r in measured]), 1)
        for r in rows:
            if "torch_s" not in r:
                r["torch_s_extrapolated"] = float(np.exp(icpt) * r["n"] ** slope)
                r["ratio_extrapolated"] = r["torch_s_extrapolated"] / r["measattn_s"]
        torch_exponent = float(slope)
    else:
        torch_exponent = None
    if args.json:
        print(json.dumps({"rows": rows, "torch_time_exponent": torch_exponent,
                          "threads": args.threads}, indent=2))
        return
    print(f"token-level local constant, d = 64, 4 heads, float64, {args.threads} threads")
    print(f"{'n':>6} {'measattn s':>11} {'torch s':>11} {'ratio':>9} {'rel diff':>9}  value")
    for r in rows:
        if "torch_s" in r:
            t, ratio = f"{r['torch_s']:.3f}", f"{r['ratio']:.1f}x"
            diff = f"{r['relative_difference']:.1e}"
        elif "torch_s_extrapolated" in r:
            t, ratio, diff = f"~{r['torch_s_extrapolated']:.0f}*", f"~{r['ratio_extrapolated']:.0f}x*", "-"
        else:
            t, ratio, diff = "-", "-", "-"
        print(f"{r['n']:>6} {r['measattn_s']:>11.3f} {t:>11} {ratio:>9} {diff:>9}  {r['value']:.12g}")
    if torch_exponent is not None:
        print(f"* extrapolated: torch time ~ n^{torch_exponent:.2f} fitted on the measured sizes")


if __name__ == "__main__":
    main()
