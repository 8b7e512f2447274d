#!/bin/sh
# Radius sweep for a dot-product layer and N sweep for Kim's L2 attention, through
# the CLI; CSV + PNG in docs/img/ (see examples/lipschitz_sweeps.py).
# Usage: MEASATTN_BIN=build/apps/measattn examples/lipschitz_radius_sweep.sh
set -e
cd "$(dirname "$0")/.."
exec /usr/bin/python3 examples/lipschitz_sweeps.py all --out docs/img "$@"
