#!/usr/bin/env bash
# Builds the library and the C++ tests without -march=native
# (MEASATTN_NATIVE=OFF) in build-portable/ and runs the GoogleTest suites: the
# portable branches (e.g. of src/common/vector_exp.hpp) are compiled and tested
# too, not only the ones this machine's CPU selects. It is also the build
# without MPI (MEASATTN_MPI=OFF): the library and every test pass in one process.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export MEASATTN_BUILD_DIR="${MEASATTN_PORTABLE_BUILD_DIR:-$root/build-portable}"
"$root/scripts/build.sh" -DMEASATTN_NATIVE=OFF -DMEASATTN_BUILD_BENCH=OFF \
  -DMEASATTN_BUILD_PYTHON=OFF -DMEASATTN_MPI=OFF -DMEASATTN_BUILD_APPS=OFF
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
cd "$MEASATTN_BUILD_DIR"
ctest --output-on-failure --timeout 1800 -j "$(nproc)" -E '^(pytest|consumer|python)\.'
