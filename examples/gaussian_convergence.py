#!/usr/bin/python3
"""Gaussian closed forms as references: the particle solver (`measattn attend`) on
tensor-product Gauss-Hermite atoms of N(m, Sigma) against the closed form
(`measattn gaussian --json`); error max(|mean diff|, |cov diff|) of F(mu) against
the number of atoms, log-log, for dot and l2 potentials, several heads, biases,
and converged Sinkhorn attention.

    examples/gaussian_convergence.py [OUT.png]     (MEASATTN_BIN overrides the CLI path;
                                                     MEASATTN_EXAMPLES_QUICK=1: fewer points)
"""
import json, os, pathlib, struct, subprocess, sys, tempfile
import numpy as np
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

root = pathlib.Path(__file__).resolve().parents[1]
bin_ = os.environ.get("MEASATTN_BIN", str(root / "build" / "apps" / "measattn"))
png = sys.argv[1] if len(sys.argv) > 1 else "gaussian_convergence.png"
quick = os.environ.get("MEASATTN_EXAMPLES_QUICK") == "1"


def save_model(path, d, heads, potential, seed):
    """A random nn.MultiheadAttention layer (entries N(0, 1/d), biases) as safetensors."""
    rng = np.random.default_rng(seed)
    tensors = {"in_proj_weight": rng.normal(scale=d ** -0.5, size=(3 * d, d)),
               "in_proj_bias": rng.normal(scale=d ** -0.5, size=3 * d),
               "out_proj.weight": rng.normal(scale=d ** -0.5, size=(d, d)),
               "out_proj.bias": rng.normal(scale=d ** -0.5, size=d)}
    header, chunks, offset = {"__metadata__": {"num_heads": str(heads),
                                               "potential": potential}}, [], 0
    for name, a in tensors.items():
        raw = np.ascontiguousarray(a, dtype="<f8").tobytes()
        header[name] = {"dtype": "F64", "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))


def hermite(mean, cov, points):
    """Tensor-product probabilists' Gauss-Hermite atoms and weights of N(mean, cov)."""
    z, w = np.polynomial.hermite_e.hermegauss(points)
    w = w / w.sum()
    d = len(mean)
    zz = np.stack([g.ravel() for g in np.meshgrid(*[z] * d, indexing="ij")], axis=1)
    ww = np.prod(np.stack([g.ravel() for g in np.meshgrid(*[w] * d, indexing="ij")]), axis=0)
    vals, vecs = np.linalg.eigh(cov)
    return mean + zz @ (vecs * np.sqrt(vals)) @ vecs.T, ww


def cli(*args):
    return subprocess.run([bin_, *map(str, args)], check=True, capture_output=True,
                          text=True).stdout


# label, d, heads, potential, normalization, covariance scale, points. The rate depends
# on the strength of the tilt |Sigma^{1/2} K^T Q Sigma^{1/2}| / tau: a strong one (large
# Sigma or weights) needs many more atoms for the same error.
cases = [
    ("d=1 dot", 1, 1, "dot", "softmax", 0.3, [2, 3, 4, 6, 8, 12, 16, 24]),
    ("d=2 dot, 2 heads", 2, 2, "dot", "softmax", 0.3, [2, 3, 4, 6, 8, 12, 16, 24]),
    ("d=2 l2", 2, 1, "l2", "softmax", 0.3, [2, 3, 4, 6, 8, 12, 16, 24]),
    ("d=3 dot, 3 heads", 3, 3, "dot", "softmax", 0.3, [2, 3, 4, 6, 8, 12, 16]),
    ("d=3 dot, 3 heads, strong tilt", 3, 3, "dot", "softmax", 0.3, [2, 4, 8, 16, 24]),
    ("d=2 dot, Sinkhorn", 2, 2, "dot", "sinkhorn", 0.3, [2, 3, 4, 6, 8, 12]),
]
if quick:
    cases = [c[:6] + ([p for p in c[6] if p <= 8],) for c in cases[:3]]

plt.figure(figsize=(6.5, 4.5))
with tempfile.TemporaryDirectory() as tmp:
    for i, (label, d, heads, potential, norm, scale, points) in enumerate(cases):
        seed = {"d=3 dot, 3 heads": 5, "d=3 dot, 3 heads, strong tilt": 3}.get(label, i)
        rng = np.random.default_rng(10 + seed)
        a = rng.normal(size=(d, d))
        mean, cov = rng.normal(scale=0.5, size=d), scale * (a @ a.T / d + 0.1 * np.eye(d))
        model = f"{tmp}/m{i}.safetensors"
        save_model(model, d, heads, potential, seed=seed)
        np.save(f"{tmp}/mean.npy", mean)
        np.save(f"{tmp}/cov.npy", cov)
        exact = json.loads(cli("gaussian", "--model", model, "--mean", f"{tmp}/mean.npy",
                               "--cov", f"{tmp}/cov.npy", "--normalization", norm, "--json"))
        atoms, errors = [], []
        for p in points:
            x, w = hermite(mean, cov, p)
            np.save(f"{tmp}/x.npy", x)
            np.save(f"{tmp}/w.npy", w)
            extra = ["--normalization", "sinkhorn", "--sinkhorn-iterations", 300] \
                if norm == "sinkhorn" else []
            cli("attend", "--model", model, "--tokens", f"{tmp}/x.npy", "--weights",
                f"{tmp}/w.npy", *extra, "--out", f"{tmp}/y.npy")
            y = np.load(f"{tmp}/y.npy")
            m = w @ y
            c = ((y - m) * w[:, None]).T @ (y - m)
            err = max(np.abs(m - exact["mean"]).max(), np.abs(c - np.array(exact["cov"])).max())
            atoms.append(len(w))
            errors.append(max(err, 1e-17))
        print(f"{label:30s} atoms {atoms}\n{'':30s} error {np.array2string(np.array(errors), precision=2)}")
        plt.loglog(atoms, errors, marker="o", label=label)
plt.axhline(1e-6, color="gray", linestyle="--", linewidth=0.8)
plt.xlabel("number of Gauss-Hermite atoms")
plt.ylabel("max |mean, cov error| of F(mu)")
plt.title("Gauss-Hermite particles vs the Gaussian closed form")
plt.legend(fontsize=8)
plt.grid(True, which="both", alpha=0.3)
plt.tight_layout()
plt.savefig(png, dpi=100)
print("plot:", png)
