#!/usr/bin/env python3
"""measattn.ot vs POT 0.8.2 (Debian) and the newest POT (scripts/venv-pot.sh), in ONE run,
same cost matrices, same machine.

What is timed (wall time of the call alone, median of --reps, inputs built outside):
  measattn.ot.emd2(a, b, M) / measattn.ot.sinkhorn2(a, b, M, reg)
  POT 0.8.2:  ot.emd2(a, b, M, numItermax=10**8) / ot.sinkhorn2(a, b, M, reg), in this process
  POT newest: the same calls in a child process of .venv-pot (its own numpy), on the same
              matrices read from .npy files; the child times each call itself.
numItermax is raised for POT's emd2 because its default (1e5) stops short of optimality
at these sizes (it then warns and returns a suboptimal cost). The values are compared too.
M is the squared Euclidean cost between uniform point clouds in R^3 (divided by its
maximum) with uniform weights for emd2, and a random non-metric matrix as a second case.

Usage: "$(scripts/venv.sh)" bench/ot_vs_pot.py [--sizes 2000 5000] [--reps 3]
       [--sinkhorn-sizes 2000 5000] [--reg 0.05]
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings

import numpy as np
import ot

import measattn
import measattn.ot as mot

ROOT = pathlib.Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import json, sys, time, warnings
    import numpy as np
    import ot
    warnings.simplefilter("ignore")
    jobs = json.loads(sys.argv[1])
    out = []
    for job in jobs:
        M = np.load(job["M"])
        a = np.full(M.shape[0], 1.0 / M.shape[0]); b = np.full(M.shape[1], 1.0 / M.shape[1])
        times = []
        for _ in range(job["reps"]):
            t = time.perf_counter()
            if job["kind"] == "emd2":
                v = ot.emd2(a, b, M, numItermax=10**8)
            else:
                v = ot.sinkhorn2(a, b, M, job["reg"])
            times.append(time.perf_counter() - t)
        out.append({"seconds": sorted(times)[len(times) // 2], "value": float(v)})
    print(json.dumps({"version": ot.__version__, "results": out}))
""")


def median_time(fn, reps):
    times, out = [], None
    for _ in range(reps):
        time.sleep(0.2)  # let BLAS threads of the previous call go idle
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def pot_latest_python():
    venv = pathlib.Path(os.environ.get("MEASATTN_POT_VENV", ROOT / ".venv-pot"))
    python = venv / "bin" / "python"
    return str(python) if python.exists() else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="*", default=[2000, 5000])
    ap.add_argument("--sinkhorn-sizes", type=int, nargs="*", default=[2000, 5000])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--reg", type=float, default=0.05)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="ot_vs_pot_"))
    jobs, rows = [], []
    for kind, sizes in (("emd2", args.sizes), ("sinkhorn2", args.sinkhorn_sizes)):
        for n in sizes:
            for cost in ("sqeuclidean", "random"):
                if kind == "sinkhorn2" and cost == "random":
                    continue
                if cost == "sqeuclidean":
                    x, y = rng.random((n, 3)), rng.random((n, 3))
                    M = ot.dist(x, y)
                    np.save(tmp / f"{kind}_{n}_x.npy", x)
                    np.save(tmp / f"{kind}_{n}_y.npy", y)
                    M /= M.max()
                else:
                    M = rng.random((n, n))
                path = tmp / f"{kind}_{n}_{cost}.npy"
                np.save(path, M)
                rows.append({"kind": kind, "n": n, "cost": cost, "M": str(path)})
                jobs.append({"kind": kind, "M": str(path), "reps": args.reps, "reg": args.reg})
    latest = None
    python = pot_latest_python()
    for row in rows:
        M = np.load(row["M"])
        n = M.shape[0]
        a = np.full(n, 1.0 / n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if row["kind"] == "emd2":
                t_m, v_m = median_time(lambda: mot.emd2(a, a, M), args.reps)
                t_p, v_p = median_time(lambda: ot.emd2(a, a, M, numItermax=10**8), args.reps)
            else:
                t_m, v_m = median_time(lambda: mot.sinkhorn2(a, a, M, args.reg), args.reps)
                t_p, v_p = median_time(lambda: ot.sinkhorn2(a, a, M, args.reg), args.reps)
        row.update(measattn=t_m, pot082=t_p, value_measattn=float(v_m), value_pot082=float(v_p))
        if row["kind"] == "sinkhorn2":
            # The online Sinkhorn on the points (no cost matrix, O(n + m) memory): the
            # same problem, costs not divided by their maximum (reg multiplied instead).
            base = row["M"][:-len("_sqeuclidean.npy")]
            x, y = np.load(base + "_x.npy"), np.load(base + "_y.npy")
            scale = float(ot.dist(x, y).max())
            t_o, r_o = median_time(lambda: measattn.wasserstein(
                x, y, p=2, method="sinkhorn", reg=args.reg * scale, online=True), args.reps)
            row.update(online=t_o, value_online=float(r_o.transport_cost) / scale)
        del M
    if python is not None:
        proc = subprocess.run([python, "-I", "-c", CHILD, json.dumps(jobs)], capture_output=True,
                              text=True)
        if proc.returncode == 0:
            latest = json.loads(proc.stdout)
            for row, res in zip(rows, latest["results"]):
                row.update(pot_latest=res["seconds"], value_pot_latest=res["value"])
        else:
            print("newest POT failed:", proc.stderr[-500:], file=sys.stderr)
    else:
        print("no .venv-pot (scripts/venv-pot.sh): newest POT not timed", file=sys.stderr)
    head = (f"{'call':10s} {'n':>6s} {'cost':12s} {'measattn s':>11s} {'POT 0.8.2 s':>12s} "
            f"{'ratio':>6s}")
    if latest:
        head += f" {'POT ' + latest['version'] + ' s':>18s} {'ratio':>6s}"
    print(head)
    for r in rows:
        line = (f"{r['kind']:10s} {r['n']:6d} {r['cost']:12s} {r['measattn']:11.3f} "
                f"{r['pot082']:12.3f} {r['pot082'] / r['measattn']:6.1f}")
        if "pot_latest" in r:
            line += f" {r['pot_latest']:18.3f} {r['pot_latest'] / r['measattn']:6.1f}"
        rel = abs(r["value_measattn"] - r["value_pot082"]) / max(abs(r["value_pot082"]), 1e-300)
        line += f"   |value diff| / value = {rel:.1e}"
        if "online" in r:
            rel_o = abs(r["value_online"] - r["value_pot082"]) / abs(r["value_pot082"])
            line += (f"\n{'  online':10s} {r['n']:6d} {'(points)':12s} {r['online']:11.3f} "
                     f"{r['pot082']:12.3f} {r['pot082'] / r['online']:6.1f}")
            if "pot_latest" in r:
                line += f" {r['pot_latest']:18.3f} {r['pot_latest'] / r['online']:6.1f}"
            line += f"   |value diff| / value = {rel_o:.1e}"
        print(line, flush=True)
    print(json.dumps(rows), file=open(tmp / "results.json", "w"))


if __name__ == "__main__":
    main()
