#!/usr/bin/python3
"""One explicit-Euler step of the attention particle flow: measattn vs NumPy, in one run.

The step is x <- x + h * softmax(beta x x^T) x (the canonical model V = I,
G(x, y) = beta <x, y>, beta = 1, uniform weights, float64) for n standard-normal
particles in R^d.

- NumPy: the dense textbook step (n x n logits, row max, exp in place, row sums,
  one matmul), timed inside its own process with time.perf_counter around the
  step only (best of `repeats`); peak RSS of that process from wait4.
- measattn: bench/flow_bench (Google Benchmark; times flow_field + the axpy, no
  start-up), one process per case, the best of 3 repetitions of its mean real time
  per iteration (best of 3 on both sides); peak RSS from wait4.

Both sides use the same thread count: OMP_NUM_THREADS (measattn's OpenMP) and
OPENBLAS_NUM_THREADS (NumPy's BLAS) are set to --threads (default 2). On a loaded
machine --threads 1 gives the steadier comparison.

Usage: flow_vs_numpy.py BUILD_DIR [--quick] [--threads N]
"""

import json
import os
import subprocess
import sys

NUMPY_STEP = r"""
import sys, time
import numpy as np
n, d, repeats = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
x = np.random.default_rng(1).normal(size=(n, d))
beta, h = 1.0, 0.1
def step(x):
    s = x @ x.T
    s *= beta
    s -= s.max(axis=1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=1, keepdims=True)
    return x + h * (s @ x)
best = float("inf")
for _ in range(repeats):
    t0 = time.perf_counter()
    y = step(x)
    best = min(best, time.perf_counter() - t0)
print(best)
"""


def run_measuring_rss(cmd, env=None):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return out.decode(), usage.ru_maxrss / 1024.0  # MiB


THREADS = "2"


def thread_env():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = THREADS
    env["OPENBLAS_NUM_THREADS"] = THREADS
    return env


def numpy_step(n, d, repeats):
    env = thread_env()
    out, rss = run_measuring_rss(["/usr/bin/python3", "-c", NUMPY_STEP, str(n), str(d),
                                  str(repeats)], env)
    return float(out.strip().splitlines()[-1]), rss


def measattn_step(bench, n, d):
    env = thread_env()
    out, rss = run_measuring_rss([bench, f"--benchmark_filter=^euler_step/{n}/{d}/",
                                  "--benchmark_format=json", "--benchmark_min_time=0.3",
                                  "--benchmark_repetitions=3"], env)
    data = json.loads(out)
    runs = [b for b in data["benchmarks"] if b.get("run_type") == "iteration"]
    assert runs and all(b["time_unit"] == "ms" for b in runs)
    return min(b["real_time"] for b in runs) / 1000.0, rss


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    bench = os.path.join(sys.argv[1], "bench", "flow_bench")
    quick = "--quick" in sys.argv
    global THREADS
    if "--threads" in sys.argv:
        THREADS = sys.argv[sys.argv.index("--threads") + 1]
    print(f"threads per side: {THREADS}; load average before: {os.getloadavg()}")
    cases = [(1000, 3), (4000, 3), (16000, 3), (1000, 64), (4000, 64), (16000, 64)]
    if quick:
        cases = [(1000, 3), (4000, 3), (1000, 64), (4000, 64)]
    print(f"{'n':>7} {'d':>3} | {'numpy s':>9} {'RSS MiB':>8} | {'measattn s':>10} {'RSS MiB':>8} |"
          f" {'speed-up':>8}")
    rows = []
    for n, d in cases:
        t_np, rss_np = numpy_step(n, d, 3 if n <= 4000 else 1)
        t_ma, rss_ma = measattn_step(bench, n, d)
        rows.append((n, d, t_np, rss_np, t_ma, rss_ma))
        print(f"{n:>7} {d:>3} | {t_np:>9.4f} {rss_np:>8.0f} | {t_ma:>10.4f} {rss_ma:>8.0f} |"
              f" {t_np / t_ma:>7.1f}x", flush=True)
    if not quick:
        t_ma, rss_ma = measattn_step(bench, 100000, 3)
        print(f"{100000:>7} {3:>3} | {'(~80 GB)':>9} {'-':>8} | {t_ma:>10.4f} {rss_ma:>8.0f} |"
              f" {'-':>8}", flush=True)


if __name__ == "__main__":
    main()
