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

Each case runs --rounds rounds (default 5, 3 with --quick); a round measures both
sides back to back (alternating which goes first) and gives one ratio. Printed:
the medians of both sides' times and of the per-round ratios, and the ratios'
range. The machine this was written on drifts by up to 30 % within minutes, so a
ratio from one pair of measurements can be far off; the median of same-round
ratios is the figure to quote.

Usage: flow_vs_numpy.py BUILD_DIR [--quick] [--threads N] [--rounds R]
"""

import json
import os
import statistics
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


def option(name, default):
    if name in sys.argv:
        return sys.argv[sys.argv.index(name) + 1]
    return default


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    bench = os.path.join(sys.argv[1], "bench", "flow_bench")
    quick = "--quick" in sys.argv
    global THREADS
    THREADS = option("--threads", THREADS)
    rounds = int(option("--rounds", "3" if quick else "5"))
    print(f"threads per side: {THREADS}; rounds per case: {rounds}; "
          f"load average before: {os.getloadavg()}")
    cases = [(1000, 3), (4000, 3), (16000, 3), (1000, 64), (4000, 64), (16000, 64)]
    if quick:
        cases = [(1000, 3), (4000, 3), (1000, 64), (4000, 64)]
    print(f"{'n':>7} {'d':>3} | {'numpy s':>9} {'RSS MiB':>8} | {'measattn s':>10} {'RSS MiB':>8} |"
          f" {'speed-up':>8} {'(range)':>14}")
    for n, d in cases:
        t_np, t_ma, ratios = [], [], []
        rss_np = rss_ma = 0.0
        for r in range(rounds):
            # Alternate which side goes first, so that a drift within a round
            # favours neither.
            order = ("numpy", "measattn") if r % 2 == 0 else ("measattn", "numpy")
            got = {}
            for side in order:
                if side == "numpy":
                    got[side] = numpy_step(n, d, 3 if n <= 4000 else 1)
                else:
                    got[side] = measattn_step(bench, n, d)
            t_np.append(got["numpy"][0])
            t_ma.append(got["measattn"][0])
            rss_np = max(rss_np, got["numpy"][1])
            rss_ma = max(rss_ma, got["measattn"][1])
            ratios.append(t_np[-1] / t_ma[-1])
        spread = f"({min(ratios):.1f}-{max(ratios):.1f})"
        print(f"{n:>7} {d:>3} | {statistics.median(t_np):>9.4f} {rss_np:>8.0f} |"
              f" {statistics.median(t_ma):>10.4f} {rss_ma:>8.0f} |"
              f" {statistics.median(ratios):>7.1f}x {spread:>14}", flush=True)
    if not quick:
        t_ma, rss_ma = measattn_step(bench, 100000, 3)
        print(f"{100000:>7} {3:>3} | {'(~80 GB)':>9} {'-':>8} | {t_ma:>10.4f} {rss_ma:>8.0f} |"
              f" {'-':>8}", flush=True)


if __name__ == "__main__":
    main()
