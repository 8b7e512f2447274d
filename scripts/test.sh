#!/usr/bin/env bash
# Builds everything and runs every test: GoogleTest units, pytest cross-checks
# against PyTorch / POT / SciPy, and the find_package consumer project.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${MEASATTN_BUILD_DIR:-$root/build}"
"$root/scripts/build.sh" "$@"
# The newest POT from PyPI in its own environment (cheap once created; the tests
# that use it skip with a reason when it cannot be created).
"$root/scripts/venv-pot.sh" >/dev/null || true
# ctest runs two test programs at once on two cores: OpenMP threads that spin
# at barriers would steal the other program's core.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
cd "$build"
ctest --output-on-failure --timeout 1800 -j "$(nproc)"
