#!/usr/bin/env python3
"""measattn wasserstein vs POT / SciPy, in ONE run, same data, same machine.

What is timed:
  measattn: the "seconds" field of `measattn wasserstein --json`, the wall time of
            the library call alone (cost evaluation included; no process start,
            no .npy reading).
  POT:      the call ot.emd2(a, b, M) / ot.sinkhorn2(a, b, M, reg) with the cost
            matrix M = ot.dist(x, y, 'euclidean') precomputed outside the timer
            (so POT is not charged for the cost matrix; measattn is).
  SciPy:    the call scipy.stats.wasserstein_distance(x, y).
Each number is the median of --reps repetitions. POT's emd2 runs with
numItermax=10**8 (its default 1e5 stops short of optimality at n = 4000 and
returns a wrong value with a warning); the values are compared too.

Usage: /usr/bin/python3 bench/wasserstein_vs_pot.py --bin build/apps/measattn [--reps 5]
       [--quick]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import ot
import scipy.stats


def measattn(binary, args):
    # The parent's BLAS threads keep spinning for a while after a POT call and
    # would share the two cores with the child being timed (seen as 11-84 ms
    # for a 12 ms Sinkhorn at n = 1000): let them go idle first.
    time.sleep(0.3)
    proc = subprocess.run([binary, "wasserstein", *map(str, args), "--json"],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def median_time(fn, reps):
    times, out = [], None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.environ.get("MEASATTN_BIN", "build/apps/measattn"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="sizes 500 and 1000 only")
    ap.add_argument("--reg", type=float, default=0.2)
    ap.add_argument("--tol", type=float, default=1e-9)
    opts = ap.parse_args()
    sizes = [500, 1000] if opts.quick else [500, 1000, 2000, 4000]
    rng = np.random.default_rng(2024)
    tmp = tempfile.mkdtemp(prefix="wbench")
    rows = []
    print(f"# OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}, "
          f"reps={opts.reps}, R^8, uniform weights; times in seconds (median)")
    print(f"{'benchmark':28s} {'measattn':>10s} {'peer':>10s} {'ratio':>7s}  values")
    for n in sizes:
        x = rng.normal(size=(n, 8))
        y = rng.normal(size=(n, 8)) + 0.25
        xp, yp = os.path.join(tmp, "x.npy"), os.path.join(tmp, "y.npy")
        np.save(xp, x)
        np.save(yp, y)
        a = np.full(n, 1.0 / n)
        M = ot.dist(x, y, metric="euclidean")
        # exact W1
        runs = [measattn(opts.bin, [xp, yp, "--method", "exact"]) for _ in range(opts.reps)]
        t_m = statistics.median(r["seconds"] for r in runs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t_p, ref = median_time(lambda: ot.emd2(a, a, M, numItermax=10**8), opts.reps)
        v = runs[-1]["value"]
        rows.append(("exact W1 n=%d" % n, t_m, t_p))
        print(f"{'exact W1 n=%d' % n:28s} {t_m:10.4f} {t_p:10.4f} {t_p / t_m:7.2f}  "
              f"measattn={v:.12g} ({runs[-1]['status']}) POT={ref:.12g} "
              f"rel.diff={abs(v - ref) / ref:.1e}")
        sys.stdout.flush()
        # Sinkhorn, same reg and tolerance (POT's criterion: ||P^T 1 - b||_2 < tol)
        args = [xp, yp, "--method", "sinkhorn", "--reg", opts.reg, "--tol", opts.tol,
                "--max-iter", 100000]
        runs = [measattn(opts.bin, args) for _ in range(opts.reps)]
        t_m = statistics.median(r["seconds"] for r in runs)
        t_p, ref = median_time(lambda: ot.sinkhorn2(a, a, M, opts.reg, stopThr=opts.tol,
                                                    numItermax=100000), opts.reps)
        v = runs[-1]["transport_cost"]
        rows.append(("sinkhorn n=%d" % n, t_m, t_p))
        print(f"{'sinkhorn reg=%g n=%d' % (opts.reg, n):28s} {t_m:10.4f} {t_p:10.4f} "
              f"{t_p / t_m:7.2f}  <P,M>: measattn={v:.12g} ({runs[-1]['iterations']} it) "
              f"POT={float(ref):.12g} rel.diff={abs(v - ref) / ref:.1e}")
        sys.stdout.flush()
    n = 10**6
    x1 = rng.normal(size=n)
    y1 = rng.exponential(size=n)
    xp, yp = os.path.join(tmp, "x1.npy"), os.path.join(tmp, "y1.npy")
    np.save(xp, x1)
    np.save(yp, y1)
    runs = [measattn(opts.bin, [xp, yp, "--method", "1d"]) for _ in range(opts.reps)]
    t_m = statistics.median(r["seconds"] for r in runs)
    t_s, ref = median_time(lambda: scipy.stats.wasserstein_distance(x1, y1), opts.reps)
    v = runs[-1]["value"]
    print(f"{'1-D W1 n=1e6 vs SciPy':28s} {t_m:10.4f} {t_s:10.4f} {t_s / t_m:7.2f}  "
          f"measattn={v:.15g} SciPy={ref:.15g} rel.diff={abs(v - ref) / ref:.1e}")
    print("# ratio = peer time / measattn time (> 1: measattn faster)")


if __name__ == "__main__":
    main()
