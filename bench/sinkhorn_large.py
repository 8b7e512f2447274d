#!/usr/bin/env python3
"""Large-n Sinkhorn between point clouds in R^3: measattn's multiscale Sinkhorn
(multiscale=True, O(n + m) memory) against an earlier build of it (--baseline, the
PYTHONPATH of that build's Python module: the same clouds, the same options, in the
same run), POT 0.8.2's ot.sinkhorn2 (dense, where the n x n matrices fit) and GeomLoss
(scripts/venv-geomloss.sh; its "tensorized" backend, and "online"/"multiscale" only
where KeOps is available), in ONE run on the same clouds. Every solver runs in its own
child process, which reports its wall time, its CPU time (both threads; less sensitive
to other load on a shared machine) and its peak resident memory. Not part of the
test suite.

The quantity: OT_eps with cost |x - y|^2 between uniform clouds in [0, 1]^3, eps = reg.
measattn and POT report <P, C> of the entropic plan with C = |x - y|^2. measattn's
certified bracket lower <= W_2 <= upper is of the unregularized W_2 (lower: the dual
value of the c-transformed potentials; upper: the cost of a coupling); its width is
printed. GeomLoss's SamplesLoss("sinkhorn", p=2, blur, scaling, debias=False) reports
OT_eps for the cost |x - y|^2 / 2 with eps = blur^2: it runs on sqrt(2) x, sqrt(2) y (so
that its cost is |x - y|^2) with blur = sqrt(reg), and its value (the dual objective
<a, f> + <b, g> = <P, C> + eps KL(P | a x b)) is printed next to measattn's
entropic_kl = entropic_cost + 2 eps log n (entropic_cost has eps sum P log P; uniform
weights). Timed: the call alone, median of --reps.

Usage: nice "$(scripts/venv.sh)" bench/sinkhorn_large.py [--sizes 10000 30000 100000]
       [--baseline /path/to/old/build/python] [--baseline-max 30000] [--reg 1e-3]
       [--tolerance 1e-5] [--reps 1] [--huge 1000000] [--huge-iterations 3]
       [--no-pot] [--no-geomloss]
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import textwrap
import time

import numpy as np

import measattn

ROOT = pathlib.Path(__file__).resolve().parents[1]

MEASATTN_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np, measattn
    reg, tol, reps, iters, path = (float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]),
                                   int(sys.argv[4]), sys.argv[5])
    z = np.load(path)
    x, y = z["x"], z["y"]
    ts, cs, r = [], [], None
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        r = measattn.wasserstein(x, y, method="sinkhorn", p=2, reg=reg, tolerance=tol,
                                 max_iterations=iters, multiscale=True)
        ts.append(time.perf_counter() - t)
        cs.append(time.process_time() - c)
    print(json.dumps({"time": sorted(ts)[len(ts) // 2], "cpu": sorted(cs)[len(cs) // 2],
                      "transport": r.transport_cost,
                      "entropic_kl": r.entropic_cost + 2 * reg * np.log(len(x)),
                      "lower": r.lower, "upper": r.upper, "iterations": r.iterations,
                      "status": r.status, "violation": r.marginal_violation,
                      "threads": measattn.get_num_threads(),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")

CHILD = textwrap.dedent("""
    import json, sys, time
    import numpy as np, torch
    from geomloss import SamplesLoss
    n, reg, reps, backend, path = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    z = np.load(path)
    x = torch.from_numpy(z["x"] * np.sqrt(2)); y = torch.from_numpy(z["y"] * np.sqrt(2))
    loss = SamplesLoss("sinkhorn", p=2, blur=reg ** 0.5, scaling=0.9, debias=False,
                       backend=backend)
    ts, v = [], None
    try:
        for _ in range(reps):
            t = time.perf_counter(); v = float(loss(x, y)); ts.append(time.perf_counter() - t)
        print(json.dumps({"time": sorted(ts)[len(ts) // 2], "value": v}))
    except Exception as e:  # KeOps missing, out of memory
        print(json.dumps({"error": type(e).__name__ + ": " + str(e).splitlines()[0][:120]}))
""")


def median_time(fn, reps):
    ts, out = [], None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), out


def geomloss_python():
    try:
        return subprocess.run([str(ROOT / "scripts/venv-geomloss.sh")], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None


def run_measattn(pythonpath, tmp, args, iterations):
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    out = subprocess.run([sys.executable, "-c", MEASATTN_CHILD, str(args.reg), str(args.tolerance),
                          str(args.reps), str(iterations), str(tmp)],
                         capture_output=True, text=True, env=env)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": out.stderr.strip().splitlines()[-1][:160] if out.stderr.strip()
                else "no output"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="*", default=[10000, 30000, 100000])
    ap.add_argument("--huge", type=int, nargs="*", default=[],
                    help="measattn only, capped at --huge-iterations iterations at reg")
    ap.add_argument("--huge-iterations", type=int, default=3)
    ap.add_argument("--baseline", default=None,
                    help="PYTHONPATH of an earlier measattn build to time on the same clouds")
    ap.add_argument("--baseline-max", type=int, default=30000)
    ap.add_argument("--reg", type=float, default=1e-3)
    ap.add_argument("--tolerance", type=float, default=1e-5)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--pot-max", type=int, default=5000)
    ap.add_argument("--geomloss-max", type=int, default=20000)
    ap.add_argument("--no-pot", action="store_true")
    ap.add_argument("--no-geomloss", action="store_true")
    args = ap.parse_args()
    geo = None if args.no_geomloss else geomloss_python()
    here = str(pathlib.Path(measattn.__file__).resolve().parents[1])
    rng = np.random.default_rng(0)
    print(f"threads={measattn.get_num_threads()} reg={args.reg} tolerance={args.tolerance}")
    for n in args.sizes + args.huge:
        x, y = rng.random((n, 3)), rng.random((n, 3))
        tmp = pathlib.Path(f"/tmp/sinkhorn_large_{os.getpid()}_{n}.npz")
        np.savez(tmp, x=x, y=y)
        huge = n in args.huge
        r = run_measattn(here, tmp, args, args.huge_iterations if huge else 100000)
        row = {"n": n}
        if "error" in r:
            row["measattn"] = "failed: " + r["error"]
            print(json.dumps(row), flush=True)
            tmp.unlink()
            continue
        t_m = r["time"]
        row.update({"measattn_s": round(t_m, 3), "measattn_cpu_s": round(r["cpu"], 2),
                    "passes": r["iterations"],
                    "transport": r["transport"], "entropic_kl": r["entropic_kl"],
                    "lower": r["lower"], "upper": r["upper"],
                    "width": r["upper"] - r["lower"], "status": r["status"],
                    "violation": r["violation"], "peak_rss_mb": round(r["peak_rss_mb"], 1)})
        if args.baseline and not huge and n <= args.baseline_max:
            o = run_measattn(args.baseline, tmp, args, 100000)
            if "error" in o:
                row["baseline"] = "failed: " + o["error"]
            else:
                row.update({"baseline_s": round(o["time"], 3), "baseline_cpu_s": round(o["cpu"], 2),
                            "baseline_passes": o["iterations"],
                            "baseline_transport": o["transport"],
                            "baseline_width": o["upper"] - o["lower"],
                            "baseline_ratio": round(o["time"] / t_m, 2),
                            "baseline_cpu_ratio": round(o["cpu"] / r["cpu"], 2)})
        if n <= args.pot_max and not huge and not args.no_pot:
            import ot
            M = ((x[:, None] - y[None]) ** 2).sum(-1)
            w = np.full(n, 1.0 / n)
            t_p, v = median_time(lambda: ot.sinkhorn2(w, w, M, args.reg, method="sinkhorn_log",
                                                      numItermax=100000,
                                                      stopThr=args.tolerance), args.reps)
            row.update(pot_s=round(t_p, 3), pot=float(v), pot_ratio=round(t_p / t_m, 2))
        if geo is not None and not huge:
            for backend in ("tensorized", "online", "multiscale"):
                if backend == "tensorized" and n > args.geomloss_max:
                    row[f"geomloss_{backend}"] = "skipped (n x n tensors exceed memory)"
                    continue
                out = subprocess.run([geo, "-c", CHILD, str(n), str(args.reg),
                                      str(args.reps), backend, str(tmp)],
                                     capture_output=True, text=True)
                try:
                    res = json.loads(out.stdout.strip().splitlines()[-1])
                except (IndexError, ValueError):
                    res = {"error": out.stderr.strip().splitlines()[-1][:120]
                           if out.stderr.strip() else "no output"}
                if "time" in res:
                    row[f"geomloss_{backend}_s"] = round(res["time"], 3)
                    row[f"geomloss_{backend}"] = res["value"]
                    row[f"geomloss_{backend}_ratio"] = round(res["time"] / t_m, 2)
                else:
                    row[f"geomloss_{backend}"] = "unavailable: " + res["error"]
        elif geo is None and not args.no_geomloss:
            row["geomloss"] = "not installed (scripts/venv-geomloss.sh failed)"
        tmp.unlink()
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    sys.exit(main())
