#!/usr/bin/env python3
"""Lipschitz sweeps driven through the measattn CLI (docs/theory.md: lipschitz, sections 2 and 8).

  radius: a dot-product layer (canonical: Q = K = V = W_O = I_2, tau = 1) on B_R for a
          range of R: the certified upper bound and the best lower bound found both grow
          without limit (dot-product attention is not globally Lipschitz).
  kim:    Kim et al.'s L2 attention with D = H = 1 (tied W^Q = W^K = 1, value A W^V = 1):
          their token-level l2 bound against the largest token Jacobian norm found, for
          N tokens; both grow slowly (Kim's bound like sqrt(N) log N).

Usage: lipschitz_sweeps.py [radius|kim|all] [--bin PATH] [--out DIR]
Writes <out>/lipschitz_radius_sweep.{csv,png} and <out>/lipschitz_kim_sweep.{csv,png}.
"""
import argparse
import json
import os
import pathlib
import struct
import subprocess
import sys
import tempfile

import numpy as np


def write_model(path, wq, wk, wv, wo, num_heads=1, potential="dot", scale=None):
    tensors = {"in_proj_weight": np.vstack([wq, wk, wv]).astype("<f8"),
               "out_proj.weight": np.asarray(wo, dtype="<f8")}
    meta = {"num_heads": str(num_heads), "potential": potential}
    if scale is not None:
        meta["scale"] = repr(float(scale))
    header, chunks, off = {"__metadata__": meta}, [], 0
    for name, a in tensors.items():
        raw = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": "F64", "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        chunks.append(raw)
        off += len(raw)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))


def cli(binary, *args):
    out = subprocess.run([binary, *map(str, args)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def plot(png, x, series, xlabel, ylabel, title, logy=True, logx=False):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, y, style in series:
        ax.plot(x, y, style, label=label)
    if logy:
        ax.set_yscale("log")
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def radius_sweep(binary, out, tmp):
    model = os.path.join(tmp, "dot.safetensors")
    eye = np.eye(2)
    write_model(model, eye, eye, eye, eye, scale=1.0)
    rows = []
    for r in [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0]:
        j = cli(binary, "lipschitz", "--model", model, "--radius", r, "--atoms", 4,
                "--restarts", 12, "--steps", 60, "--token-restarts", 4, "--json")
        rows.append((r, j["best_upper"], j["lower_bound"], j["gap"], j["token_level"]["value"]))
        print(f"R = {r:5.2f}  upper {j['best_upper']:.4g}  lower {j['lower_bound']:.4g}  "
              f"gap {j['gap']:.3g}  token {j['token_level']['value']:.4g}", file=sys.stderr)
    a = np.array(rows)
    np.savetxt(out / "lipschitz_radius_sweep.csv", a, delimiter=",",
               header="radius,best_upper,lower_bound,gap,token_level", comments="")
    plot(out / "lipschitz_radius_sweep.png", a[:, 0],
         [("certified upper bound (w1_combined)", a[:, 1], "o-"),
          ("certified lower bound (search)", a[:, 2], "s-"),
          ("token-level ||J||_2 found (N = 4)", a[:, 4], "^--")],
         "radius R", "W1 Lipschitz constant on B_R",
         "dot-product attention (Q = K = V = I_2) is not Lipschitz")


def kim_sweep(binary, out, tmp):
    model = os.path.join(tmp, "kim.safetensors")
    one = np.ones((1, 1))
    write_model(model, one, one, one, one, potential="l2")
    rows = []
    for n in [2, 4, 8, 16, 32, 64]:
        j = cli(binary, "lipschitz", "--model", model, "--radius", 4, "--atoms", n,
                "--restarts", 1, "--steps", 5, "--token-restarts", 8, "--json")
        kim = j["upper_bounds"]["kim_token_l2"]
        rows.append((n, kim, j["token_level"]["value"]))
        print(f"N = {n:3d}  Kim l2 bound {kim:.4g}  found {j['token_level']['value']:.4g}",
              file=sys.stderr)
    a = np.array(rows)
    np.savetxt(out / "lipschitz_kim_sweep.csv", a, delimiter=",",
               header="tokens,kim_token_l2,token_level_found", comments="")
    plot(out / "lipschitz_kim_sweep.png", a[:, 0],
         [("Kim et al. l2 bound", a[:, 1], "o-"),
          ("largest ||J(X)||_2 found (X in B_4^N)", a[:, 2], "s-")],
         "tokens N", "token-level Lipschitz constant (l2)",
         "L2 self-attention, D = H = 1", logx=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("which", nargs="?", default="all", choices=["radius", "kim", "all"])
    p.add_argument("--bin", default=os.environ.get("MEASATTN_BIN", "build/apps/measattn"))
    p.add_argument("--out", default="docs/img")
    args = p.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.which in ("radius", "all"):
            radius_sweep(args.bin, out, tmp)
        if args.which in ("kim", "all"):
            kim_sweep(args.bin, out, tmp)


if __name__ == "__main__":
    main()
