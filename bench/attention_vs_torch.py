#!/usr/bin/python3
"""measattn's streaming self-attention against PyTorch, in one run, on the same threads.

Both sides do the same work: single-head self-attention with E = d = k on n random
tokens (uniform weights), the four projections included:

    q, kk, v = x Wq^T, x Wk^T, x Wv^T;  out = softmax(q kk^T / sqrt(k)) v Wo^T

* measattn: bench/attention_bench (Google Benchmark), BM_attention<S>/n/k, i.e.
  attention_field() with OMP_NUM_THREADS=THREADS.
* PyTorch 1.13: the formula above with torch.matmul + torch.softmax (the query
  scaled before the product, inference mode, torch.set_num_threads(THREADS));
  nn.MultiheadAttention(k, 1) (need_weights=False) for context.
* Peak: Eigen's GEMM compiled with -march=native on the same threads
  (BM_gemm<S>/2048, 2 n^3 FLOPs) and, for reference, torch.matmul (OpenBLAS,
  whatever OPENBLAS_CORETYPE says: it is reported, never changed).

Every attention figure is also given in GFLOP/s with 4 n^2 k FLOPs (the two
products QK^T and PV) and as a fraction of the Eigen GEMM peak. Medians of
--repetitions runs; wall-clock and process CPU time (both threads) are printed,
the latter being less sensitive to other jobs on a shared machine. Configurations
are interleaved (measattn, then PyTorch, per size) so that load drifts hit both.

--large N additionally runs one self-attention on N tokens (d = 16, float32 by
default) in a fresh process and reports its wall time and peak memory (maxrss).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def find_bench(path):
    if path:
        return path
    root = os.path.dirname(HERE)
    for cand in sorted(os.listdir(root)):
        p = os.path.join(root, cand, "bench", "attention_bench")
        if cand.startswith("build") and os.path.exists(p):
            return p
    sys.exit("attention_bench not found: pass --bench PATH (build with -DMEASATTN_BUILD_BENCH=ON)")


def run_gbench(bench, regex, reps, threads, min_time):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [bench, f"--benchmark_filter={regex}", f"--benchmark_repetitions={reps}",
           "--benchmark_format=json", f"--benchmark_min_time={min_time}"]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    data = json.loads(out)
    runs = {}
    for b in data["benchmarks"]:
        if b.get("run_type") != "iteration":
            continue
        name = b["run_name"]
        scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b["time_unit"]]
        r = runs.setdefault(name, {"wall": [], "cpu": []})
        r["wall"].append(b["real_time"] * scale)
        r["cpu"].append(b["cpu_time"] * scale)
    return runs


def time_torch(fn, reps):
    fn()  # warm-up (allocator, first touch of the weights)
    wall, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return {"wall": wall, "cpu": cpu}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", help="path to attention_bench")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repetitions", type=int, default=5)
    ap.add_argument("--sizes", default="1024,4096,16384")
    ap.add_argument("--dims", default="16,64")
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--no-mha", action="store_true", help="skip nn.MultiheadAttention")
    ap.add_argument("--mha-max-n", type=int, default=4096,
                    help="time nn.MultiheadAttention only up to this n (it is context, not the peer)")
    ap.add_argument("--large", type=int, default=0, help="also run self-attention on N tokens")
    ap.add_argument("--large-dtype", default="float32")
    ap.add_argument("--large-heads", type=int, default=1)
    ap.add_argument("--json", help="write all measurements to this file")
    args = ap.parse_args()

    import torch  # noqa: E402  (after argparse: --help stays fast)

    bench = find_bench(args.bench)
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    dims = [int(s) for s in args.dims.split(",")]
    dtypes = args.dtypes.split(",")
    cpp = {"float32": "float", "float64": "double"}
    tdt = {"float32": torch.float32, "float64": torch.float64}

    print(f"# threads={args.threads}  torch {torch.__version__}  "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}  "
          f"load average at start: {os.getloadavg()[0]:.2f}")
    print("# work on both sides: single head, E = d = k, projections included; "
          "FLOPs counted: 4 n^2 k")

    # ---- peaks -------------------------------------------------------------
    peaks = {}
    g = run_gbench(bench, "^BM_gemm<(float|double)>/2048/", 3, args.threads, 0.2)
    for dt in dtypes:
        r = g[f"BM_gemm<{cpp[dt]}>/2048/real_time"]
        peaks[dt] = 2 * 2048**3 / (statistics.median(r["wall"]) * 1e-3) * 1e-9
    torch_peaks = {}
    for dt in dtypes:
        a = torch.randn(2048, 2048, dtype=tdt[dt])
        b = torch.randn(2048, 2048, dtype=tdt[dt])
        r = time_torch(lambda: torch.matmul(a, b), 3)
        torch_peaks[dt] = 2 * 2048**3 / (statistics.median(r["wall"]) * 1e-3) * 1e-9
    for dt in dtypes:
        print(f"# GEMM peak {dt}: Eigen -march=native {peaks[dt]:.0f} GFLOP/s, "
              f"torch.matmul {torch_peaks[dt]:.0f} GFLOP/s (n = 2048, {args.threads} threads)")

    # ---- attention ---------------------------------------------------------
    rows = []
    header = (f"{'dtype':8} {'n':>6} {'k':>3} | {'measattn ms':>11} {'torch ms':>9} "
              f"{'speedup':>7} {'cpu-speedup':>11} | {'GFLOP/s':>7} {'of peak':>7} | "
              f"{'torch GF/s':>10} {'of peak':>7} | {'MHA ms':>8}")
    print(header)
    print("-" * len(header))
    with torch.inference_mode():
        for dt in dtypes:
            for n in sizes:
                for k in dims:
                    name = f"BM_attention<{cpp[dt]}>/{n}/{k}/0/0/process_time/real_time"
                    regex = f"^BM_attention<{cpp[dt]}>/{n}/{k}/0/0/"
                    m = run_gbench(bench, regex, args.repetitions, args.threads, 0.05)[name]

                    gen = torch.Generator().manual_seed(n + k)
                    x = torch.randn(n, k, dtype=tdt[dt], generator=gen)
                    w = [torch.randn(k, k, dtype=tdt[dt], generator=gen) / k**0.5 for _ in range(4)]
                    wq_t, wk_t, wv_t, wo_t = [wi.t().contiguous() for wi in w]
                    scale = 1.0 / k**0.5

                    def torch_attention():
                        q = torch.matmul(x, wq_t)
                        q.mul_(scale)
                        kk = torch.matmul(x, wk_t)
                        v = torch.matmul(x, wv_t)
                        p = torch.softmax(torch.matmul(q, kk.t()), dim=-1)
                        return torch.matmul(torch.matmul(p, v), wo_t)

                    t = time_torch(torch_attention, args.repetitions)
                    mha_ms = float("nan")
                    if not args.no_mha and n <= args.mha_max_n:
                        mha = torch.nn.MultiheadAttention(k, 1, batch_first=True, dtype=tdt[dt]).eval()
                        xb = x.unsqueeze(0)
                        tm = time_torch(lambda: mha(xb, xb, xb, need_weights=False), args.repetitions)
                        mha_ms = statistics.median(tm["wall"])
                        del mha, xb


                    flops = 4.0 * n * n * k
                    mm, tt = statistics.median(m["wall"]), statistics.median(t["wall"])
                    mc, tc = statistics.median(m["cpu"]), statistics.median(t["cpu"])
                    gf, tgf = flops / (mm * 1e-3) * 1e-9, flops / (tt * 1e-3) * 1e-9
                    row = dict(dtype=dt, n=n, k=k, measattn_ms=mm, torch_ms=tt, speedup=tt / mm,
                               cpu_speedup=tc / mc, measattn_cpu_ms=mc, torch_cpu_ms=tc,
                               gflops=gf, fraction_of_peak=gf / peaks[dt], torch_gflops=tgf,
                               torch_fraction_of_peak=tgf / peaks[dt], mha_ms=mha_ms,
                               measattn_runs=m["wall"], torch_runs=t["wall"])
                    rows.append(row)
                    print(f"{dt:8} {n:6d} {k:3d} | {mm:11.2f} {tt:9.2f} {tt / mm:6.2f}x "
                          f"{tc / mc:10.2f}x | {gf:7.1f} {gf / peaks[dt]:7.0%} | "
                          f"{tgf:10.1f} {tgf / peaks[dt]:7.0%} | {mha_ms:8.1f}", flush=True)
    print(f"# load average at end: {os.getloadavg()[0]:.2f}  (speedup = torch / measattn, "
          "medians of wall-clock; cpu-speedup: same with process CPU time)")

    large = None
    if args.large:
        cmd = [bench, f"--large={args.large}", "--dim=16", f"--heads={args.large_heads}"]
        if args.large_dtype == "float32":
            cmd.append("--float")
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        large = json.loads(out.strip().splitlines()[-1])
        print(f"# large: n = {large['n']}, d = 16, heads = {large['heads']}, {large['scalar']}: "
              f"{large['seconds']:.1f} s, peak memory (maxrss) {large['maxrss_mib']:.0f} MiB, "
              f"{large['gflops']:.0f} GFLOP/s, finite output: {large['finite']}")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"peaks": peaks, "torch_peaks": torch_peaks, "rows": rows,
                       "large": large, "threads": args.threads}, f, indent=1)


if __name__ == "__main__":
    main()
