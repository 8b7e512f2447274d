#!/usr/bin/env python3
"""measattn quickstart: a PyTorch attention layer seen as a map on measures.

Run from a build tree:

    PYTHONPATH=<build>/python /usr/bin/python3 examples/python_quickstart.py

1. builds an nn.MultiheadAttention and copies it into a measattn.Model;
2. reports how far measattn's attention field is from PyTorch's output;
3. shows that the tokens act as a measure (weights, duplicates);
4. brackets the layer's Lipschitz constant in W1 on the unit ball;
5. runs a short attention flow (a deep weight-shared residual network).
Steps whose module is not compiled into this build are skipped with a note.
"""

import numpy as np

import measattn

try:
    import torch
except ImportError:  # the example still runs, with a random model
    torch = None


def main():
    rng = np.random.default_rng(0)
    d, heads, n = 16, 4, 64
    x = rng.normal(size=(n, d))

    # 1-2. PyTorch module -> measattn.Model, and the equivalence error.
    if torch is not None:
        torch.manual_seed(0)
        mha = torch.nn.MultiheadAttention(d, heads, dtype=torch.float64).eval()
        model = measattn.Model.from_torch(mha)
        t = torch.as_tensor(x)
        with torch.no_grad():
            ref = mha(t, t, t, need_weights=False)[0].numpy()
        err = np.max(np.abs(model.attend(x) - ref))
        print(f"model: {model}")
        print(f"max |measattn - torch| over {n} tokens (float64): {err:.2e}")
        x32 = x.astype(np.float32)
        err32 = np.max(np.abs(model.attend(x32) - ref))
        print(f"same in float32 (float32 path):                 {err32:.2e}")
    else:
        model = measattn.Model.random(d, heads, seed=0)
        print("torch not available: using Model.random")

    # 3. Attention sees a measure: duplicating a token is the same as doubling its weight.
    doubled = model.attend(np.vstack([x, x[:1]]))[:n]
    weighted = model.attend(x, weights=np.r_[2.0, np.ones(n - 1)])
    print(f"duplicate token vs weight 2:                    {np.max(np.abs(doubled - weighted)):.2e}")

    # 4. Lipschitz constant in W1 on B_R: certified lower and upper bounds.
    if hasattr(measattn, "lipschitz"):
        report = measattn.lipschitz(model, radius=1.0, restarts=4, steps=20, atoms=4)
        print(f"Lipschitz in W1 on B_1: {report.lower_bound:.4g} <= L <= "
              f"{report.upper_bound:.4g} ({report.upper.best_name})")
    else:
        print("Lipschitz bounds: not in this build")

    # W1 between the token measure and its image under attention.
    if hasattr(measattn, "wasserstein"):
        w = measattn.wasserstein(x, model.attend(x), p=1)
        print(f"W1(mu, F(mu)) = {w.value:.6g} ({w.kind}, status {w.status})")

    # 5. A short flow: 20 Euler steps of the canonical model on the sphere.
    if hasattr(measattn, "flow"):
        canonical = measattn.Model.canonical(3, 4.0)
        start = rng.normal(size=(100, 3))
        r = measattn.flow(canonical, start, time=10.0, steps=20, sphere=True, save_every=5)
        print(f"flow: status {r.status}, {r.steps} steps, clusters per frame "
              f"{list(r.cluster_counts)}, energy {r.energies[0]:.4g} -> {r.energies[-1]:.4g}")
    else:
        print("flow: not in this build")


if __name__ == "__main__":
    main()
