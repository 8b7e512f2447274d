#!/usr/bin/env bash
# Tokens as particles on the sphere cluster: 200 random starts in R^3, the
# canonical model (V = I, G(x,y) = beta <x,y>) with beta = 4, RK4 up to T = 30.
# Writes OUT/final.npy, OUT/trajectory.npy, OUT/summary.json (energy and cluster
# count per frame) and OUT/trajectories.png.
#
#   examples/flow_clustering.sh [OUT]      (MEASATTN_BIN overrides the CLI path)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${MEASATTN_BIN:-$root/build/apps/measattn}"
out="${1:-flow_clustering_out}"
# The starts live in a temporary folder: OUT is measattn's own output directory
# (new, empty, or a previous flow output), so nothing else may be put in it.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
/usr/bin/python3 -c "import numpy as np, sys; np.save(sys.argv[1], np.random.default_rng(0).normal(size=(200, 3)))" "$tmp/x0.npy"
"$bin" flow --builtin sa --beta 4 --sphere --tokens "$tmp/x0.npy" --time 30 --steps 600 \
  --scheme rk4 --save-every 20 --cluster-tol 1e-2 --out "$out"
/usr/bin/python3 - "$out/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"{'t':>6} {'energy':>10} {'clusters':>8}")
for f in s["frames"][::3] + [s["frames"][-1]]:
    print(f"{f['time']:6.2f} {f['energy']:10.6f} {f['clusters']:8d}")
PY
echo "plot: $out/trajectories.png"
