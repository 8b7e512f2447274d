#!/usr/bin/env python3
"""Runs a fixed corpus of measattn commands and records every output byte for byte.

    scripts/corpus.py MEASATTN_BIN OUT_DIR

Inputs are generated from fixed seeds (NumPy), models are written by the CLI-free
safetensors writer of tests/python/conftest.py, and each command's stdout, exit
code and output files are kept under OUT_DIR/<case>/. Timings ("seconds", "time",
"wall") are removed from JSON and text so that two runs of the same binary are
identical. Compare two corpora with `diff -r A B` (or `scripts/corpus.py --compare A B`).

This is how a refactoring shows it left the arithmetic alone: run the corpus with
the binary before and after, and compare.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "python"))
from conftest import write_safetensors  # noqa: E402  (the test suite's writer)

TIMING_KEYS = {"seconds", "time_seconds", "wall_seconds", "elapsed"}


def strip_timings(obj):
    if isinstance(obj, dict):
        return {k: strip_timings(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [strip_timings(v) for v in obj]
    return obj


def normalise_stdout(text: str) -> str:
    try:  # one (possibly indented) JSON document
        return json.dumps(strip_timings(json.loads(text)), indent=1, sort_keys=True) + "\n"
    except ValueError:
        pass
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", "<date>", text)
    text = re.sub(r"(Total time:?\s*(</?\w+>)*\s*)[0-9.e+-]+ s", r"\1<t> s", text)
    lines = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("{") and s.endswith("}"):
            try:
                line = json.dumps(strip_timings(json.loads(s)), sort_keys=True)
            except ValueError:
                pass
        line = re.sub(r"(time\s+)[0-9.e+-]+ s", r"\1<t> s", line)
        line = re.sub(r"[0-9.e+-]+ s\b(?=[,)]|$)", "<t> s", line)
        lines.append(line)
    return "\n".join(lines) + "\n"


def mha_tensors(rng, e, heads, dq=None, dout=None, bias=True):
    dq = dq or e
    dout = dout or e
    t = {
        "in_proj_weight": rng.standard_normal((3 * e, dq)) / np.sqrt(dq),
        "out_proj.weight": rng.standard_normal((dout, e)) / np.sqrt(e),
    }
    if bias:
        t["in_proj_bias"] = 0.1 * rng.standard_normal(3 * e)
        t["out_proj.bias"] = 0.1 * rng.standard_normal(dout)
    return t


def make_inputs(d: Path) -> None:
    rng = np.random.default_rng(20261201)
    write_safetensors(d / "m4.safetensors", mha_tensors(rng, 4, 2), {"num_heads": "2"})
    write_safetensors(d / "m8.safetensors", mha_tensors(rng, 8, 2), {"num_heads": "2"})
    write_safetensors(d / "m3nb.safetensors", mha_tensors(rng, 3, 1, bias=False),
                      {"num_heads": "1"})
    write_safetensors(d / "m4l2.safetensors", mha_tensors(rng, 4, 2),
                      {"num_heads": "2", "potential": "l2"})
    write_safetensors(d / "m16.safetensors", mha_tensors(rng, 16, 4), {"num_heads": "4"})
    tied = mha_tensors(rng, 3, 1, bias=False)
    tied["in_proj_weight"][3:6] = tied["in_proj_weight"][0:3]
    write_safetensors(d / "tied3.safetensors", tied, {"num_heads": "1"})
    np.save(d / "x4.npy", rng.standard_normal((40, 4)))
    np.save(d / "x8.npy", rng.standard_normal((300, 8)))
    np.save(d / "x16.npy", rng.standard_normal((200, 16)))
    np.save(d / "x3.npy", rng.standard_normal((60, 3)))
    np.save(d / "w40.npy", rng.random(40) + 0.1)
    np.save(d / "w300.npy", rng.random(300) + 0.1)
    np.save(d / "q4.npy", rng.standard_normal((25, 4)))
    np.save(d / "y4.npy", rng.standard_normal((50, 4)) + 0.5)
    np.save(d / "a1.npy", rng.standard_normal((70, 1)))
    np.save(d / "b1.npy", rng.standard_normal((90, 1)) * 2)
    np.save(d / "scores.npy", rng.standard_normal(30))
    np.save(d / "ref.npy", rng.random(30) + 0.05)


def cases():
    """(name, arguments, output files or directories the command writes)."""
    a = []
    for m, x in [("m4", "x4"), ("m8", "x8"), ("m16", "x16"), ("m4l2", "x4"), ("m3nb", "x3")]:
        for extra, tag in [([], ""), (["--causal"], "_causal"), (["--residual"], "_res")]:
            a.append((f"attend_{m}{tag}", ["attend", "--model", f"{m}.safetensors", "--tokens",
                                            f"{x}.npy", "--out", "out.npy", *extra], ["out.npy"]))
        a.append((f"attend_{m}_f32", ["attend", "--model", f"{m}.safetensors", "--tokens",
                                      f"{x}.npy", "--dtype", "f32", "--out", "out.npy"],
                  ["out.npy"]))
        a.append((f"attend_{m}_sinkhorn",
                  ["attend", "--model", f"{m}.safetensors", "--tokens", f"{x}.npy",
                   "--normalization", "sinkhorn", "--sinkhorn-iters", "7", "--out", "out.npy"],
                  ["out.npy"]))
    a.append(("attend_weights_cross", ["attend", "--model", "m4.safetensors", "--tokens", "x4.npy",
                                       "--weights", "w40.npy", "--queries", "q4.npy", "--out",
                                       "out.npy"], ["out.npy"]))
    for method in ["auto", "exact", "sliced", "sinkhorn"]:
        a.append((f"wasserstein_{method}", ["wasserstein", "x4.npy", "y4.npy", "--wa", "w40.npy",
                                            "--method", method, "--json"], []))
        a.append((f"wasserstein_{method}_p2", ["wasserstein", "x4.npy", "y4.npy", "--p", "2",
                                               "--method", method, "--json"], []))
    a.append(("wasserstein_1d", ["wasserstein", "a1.npy", "b1.npy", "--method", "1d", "--json"],
              []))
    a.append(("wasserstein_plan", ["wasserstein", "x4.npy", "y4.npy", "--plan", "plan.npy"],
              ["plan.npy"]))
    a.append(("wasserstein_text", ["wasserstein", "x4.npy", "y4.npy", "--method", "sinkhorn",
                                   "--reg", "0.1"], []))
    for scheme in ["euler", "heun", "rk4", "dopri5"]:
        for m, x in [("m4", "x4"), ("m8", "x8"), ("tied3", "x3"), ("m3nb", "x3")]:
            a.append((f"flow_{scheme}_{m}",
                      ["flow", "--model", f"{m}.safetensors", "--tokens", f"{x}.npy", "--time",
                       "1.5", "--steps", "12", "--scheme", scheme, "--save-every", "3",
                       "--no-plot", "--out", "fl"], ["fl"]))
        a.append((f"flow_{scheme}_sa_sphere",
                  ["flow", "--builtin", "sa", "--beta", "2", "--tokens", "x3.npy", "--time", "2",
                   "--steps", "10", "--scheme", scheme, "--sphere", "--no-plot", "--out", "fl"],
                  ["fl"]))
    a.append(("flow_unnormalized",
              ["flow", "--builtin", "sa", "--beta", "1", "--tokens", "x3.npy", "--time", "1",
               "--steps", "8", "--sphere", "--unnormalized", "--no-plot", "--out", "fl"], ["fl"]))
    a.append(("flow_weights_sa",
              ["flow", "--builtin", "sa", "--beta", "1.5", "--tokens", "x4.npy", "--weights",
               "w40.npy", "--time", "1", "--steps", "8", "--scheme", "rk4", "--no-plot", "--out",
               "fl"], ["fl"]))
    a.append(("flow_checkpoint",
              ["flow", "--model", "m4.safetensors", "--tokens", "x4.npy", "--time", "1",
               "--steps", "10", "--checkpoint-every", "4", "--no-plot", "--out", "fl"], ["fl"]))
    for m in ["m4", "m4l2", "m3nb"]:
        a.append((f"lipschitz_{m}", ["lipschitz", "--model", f"{m}.safetensors", "--radius", "0.7",
                                     "--atoms", "4", "--restarts", "3", "--steps", "15",
                                     "--token-restarts", "2", "--threads", "2", "--json"], []))
    a.append(("lipschitz_res", ["lipschitz", "--model", "m4.safetensors", "--radius", "1",
                                "--atoms", "3", "--restarts", "2", "--steps", "10", "--residual",
                                "--json"], []))
    for m, x in [("m4", "x4"), ("m8", "x8"), ("m4l2", "x4")]:
        a.append((f"entropy_{m}", ["entropy", "--model", f"{m}.safetensors", "--tokens",
                                   f"{x}.npy", "--json"], []))
    a.append(("entropy_causal_betas", ["entropy", "--model", "m4.safetensors", "--tokens", "x4.npy",
                                       "--causal", "--betas", "-2,0,0.5,3", "--json"], []))
    a.append(("maxent_target", ["maxent", "--scores", "scores.npy", "--weights", "ref.npy",
                                "--target", "0.3", "--json"], []))
    a.append(("maxent_beta", ["maxent", "--scores", "scores.npy", "--beta", "-1.25", "--json"],
              []))
    for kind, extra in [("sample", ["--sizes", "5", "20"]), ("noise", ["--sigmas", "0.01", "0.1"]),
                        ("corrupt", ["--eps", "0.01", "0.1"])]:
        a.append((f"misspec_{kind}", ["misspec", "--model", "m4.safetensors", "--tokens", "x4.npy",
                                      "--kind", kind, *extra, "--repeats", "3", "--seed", "7",
                                      "--json"], []))
    a.append(("analyze_builtin", ["analyze", "--out", "an"], ["an"]))
    a.append(("analyze_m4", ["analyze", "--model", "m4.safetensors", "--tokens", "x4.npy",
                             "--radius", "4", "--out", "an"], ["an"]))
    return a


def keep(src: Path, dst: Path) -> None:
    if src.is_dir():
        for p in sorted(src.rglob("*")):
            if p.is_file() and p.suffix not in {".png", ".svg"} and p.name != ".measattn-output":
                rel = p.relative_to(src)
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                if p.suffix in {".json"}:
                    try:
                        text = json.dumps(strip_timings(json.loads(p.read_text())), indent=1,
                                          sort_keys=True)
                        (dst / rel).write_text(text)
                        continue
                    except ValueError:
                        pass
                if p.suffix in {".md", ".txt", ".html"}:
                    (dst / rel).write_text(normalise_stdout(p.read_text()))
                    continue
                shutil.copyfile(p, dst / rel)
    elif src.is_file():
        shutil.copyfile(src, dst)


def run(binary: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=False)
    inputs = out / "_inputs"
    inputs.mkdir()
    make_inputs(inputs)
    env = dict(os.environ, OMP_NUM_THREADS="2")
    for name, args, outputs in cases():
        work = out / "_work" / name
        shutil.copytree(inputs, work)
        r = subprocess.run([binary, *args], cwd=work, env=env, capture_output=True, text=True,
                           timeout=600)
        case = out / name
        case.mkdir()
        (case / "stdout").write_text(normalise_stdout(r.stdout))
        (case / "rc").write_text(f"{r.returncode}\n")
        if r.returncode != 0:
            (case / "stderr").write_text(r.stderr)
        for o in outputs:
            keep(work / o, case / o)
    shutil.rmtree(out / "_work")


def compare(a: Path, b: Path) -> int:
    r = subprocess.run(["diff", "-rq", str(a), str(b)], capture_output=True, text=True)
    print(r.stdout, end="")
    n = len([l for l in r.stdout.splitlines() if l.strip()])
    print(f"{n} differing entries")
    return 0 if n == 0 else 1


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--compare":
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    run(os.path.abspath(sys.argv[1]), Path(sys.argv[2]))
