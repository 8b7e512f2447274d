#!/usr/bin/python3
"""The tutorial of docs/tutorial.md, executable: from a PyTorch nn.MultiheadAttention
layer to its W1 report. Prints the numbers the tutorial quotes (lines starting with
"quote:") and writes its three figures.

    examples/tutorial.py [--out DIR]        (default DIR: docs/img)

It takes seconds: there is no quick mode (tests/python/test_examples.py runs it and
checks that every quoted line is in docs/tutorial.md).
"""
import argparse
import pathlib

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import measattn  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parents[1] / "docs" / "img"))
args = parser.parse_args()
out = pathlib.Path(args.out)
out.mkdir(parents=True, exist_ok=True)
measattn.set_num_threads(2)  # results do not depend on it


def quote(name, value):
    print(f"quote: {name} = {value}")


# 1. A PyTorch layer and its measattn twin --------------------------------------
torch.manual_seed(0)
mha = torch.nn.MultiheadAttention(embed_dim=8, num_heads=2).double().eval()
model = measattn.Model.from_torch(mha)
print(model)
x = np.random.default_rng(0).normal(size=(32, 8))  # 32 tokens in R^8
with torch.no_grad():
    xt = torch.from_numpy(x)
    reference = mha(xt, xt, xt, need_weights=False)[0].numpy()
gamma = model.attend(x)
diff = float(np.abs(gamma - reference).max())
print(f"max |measattn - torch| = {diff:.1e}")
quote("torch agreement below 1e-12", diff < 1e-12)

# 2. Entropy: how many tokens each head attends to ------------------------------
entropy = measattn.attention_entropy(model, x)
for h, head in enumerate(entropy.heads):
    quote(f"head {h} mean entropy", f"{head.mean_entropy:.4f}")
    quote(f"head {h} effective tokens", f"{head.mean_effective_tokens:.2f}")
quote("log n", f"{np.log(len(x)):.4f}")
betas = np.array(entropy.betas)
fig, ax = plt.subplots(figsize=(5.5, 3.6))
for h, head in enumerate(entropy.heads):
    ax.plot(betas[betas > 0], np.array(head.curve_entropy)[betas > 0], marker=".", label=f"head {h}")
ax.axhline(np.log(len(x)), color="gray", ls="--", lw=1, label="log n (uniform)")
ax.axvline(1.0, color="gray", ls=":", lw=1)
ax.set_xscale("log")
ax.set_xlabel("inverse temperature beta (1 = the layer)")
ax.set_ylabel("mean attention entropy (nats)")
ax.set_title("entropy of the two heads")
ax.legend()
fig.tight_layout()
fig.savefig(out / "tutorial_entropy.png", dpi=80)
plt.close(fig)

# 3. The layer as a map on measures, and Wasserstein -----------------------------
mu = measattn.Measure(x)
f_mu = model.self_attention(mu)
w = measattn.wasserstein(mu, f_mu)
quote("W1(mu, F(mu))", f"{w.value:.4f} ({w.kind})")
nu = measattn.Measure(x + 0.05 * np.random.default_rng(1).normal(size=x.shape))
w_in = measattn.wasserstein(mu, nu).value
w_out = measattn.wasserstein(f_mu, model.self_attention(nu)).value
quote("W1(mu, nu)", f"{w_in:.4f}")
quote("W1(F(mu), F(nu))", f"{w_out:.4f}")
quote("ratio", f"{w_out / w_in:.4f}")

# 4. Lipschitz constant on B_R: certified upper bound and certified lower bound ---
radius = round(mu.radius(), 2)
quote("radius R", radius)
search = dict(atoms=4, restarts=8, steps=200, seed=0)
lip = measattn.lipschitz(model, radius, **search)
quote("upper bound", f"{lip.upper_bound:.4g} ({lip.upper.best_name})")
quote("certified lower bound", f"{lip.lower_bound:.4f}")
assert w_out / w_in <= lip.upper_bound
radii = np.geomspace(0.25, 4, 9)
upper, lower = [], []
for r in radii:
    res = measattn.lipschitz(model, float(r), **search)
    upper.append(res.upper_bound)
    lower.append(res.lower_bound)
fig, ax = plt.subplots(figsize=(5.5, 3.6))
ax.loglog(radii, upper, marker="o", label="certified upper bound")
ax.loglog(radii, lower, marker="s", label="certified lower bound (search)")
ax.axvline(radius, color="gray", ls=":", lw=1, label="R of the tokens")
ax.set_xlabel("radius R of the ball B_R")
ax.set_ylabel("W1 Lipschitz constant")
ax.set_title("the layer's Lipschitz constant, both sides")
ax.legend()
fig.tight_layout()
fig.savefig(out / "tutorial_lipschitz.png", dpi=80)
plt.close(fig)

# 5. A flow: the layer applied with weights shared, on the sphere ---------------
T, steps = 40.0, 800
calls = []
flow = measattn.flow(model, x, time=T, steps=steps, sphere=True, save_every=10,
                     progress=lambda done, total: calls.append(done))
assert calls == list(range(1, steps + 1))  # the progress callback, once per step
frames = flow.frames
cosines = np.array([(f @ f.T)[np.triu_indices(len(x), 1)].mean() for f in frames])
quote("flow status", flow.status)
quote("mean pairwise cosine at t = 0", f"{cosines[0]:.4f}")
quote("mean pairwise cosine at t = T", f"{cosines[-1]:.4f}")
quote("clusters at t = T", measattn.cluster_count(flow.particles, 0.05))
fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
axes[0].plot(flow.frame_times, cosines, marker=".")
axes[0].set_xlabel("t (layers x step size)")
axes[0].set_ylabel("mean pairwise cosine")
axes[0].set_title("tokens on the sphere")
stack = frames.reshape(-1, frames.shape[2])
u = np.linalg.svd(stack - stack.mean(0), full_matrices=False)[2][:2]  # top-2 directions
for i in range(len(x)):
    path = frames[:, i] @ u.T
    axes[1].plot(path[:, 0], path[:, 1], lw=0.8, alpha=0.7)
    axes[1].plot(*path[-1], "k.", ms=4)
axes[1].set_title("trajectories (top-2 principal directions)")
axes[1].set_aspect("equal", adjustable="datalim")
fig.tight_layout()
fig.savefig(out / "tutorial_flow.png", dpi=80)
plt.close(fig)
print("plots:", ", ".join(str(out / f"tutorial_{n}.png") for n in ("entropy", "lipschitz", "flow")))
