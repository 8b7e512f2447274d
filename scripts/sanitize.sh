#!/usr/bin/env bash
# Builds the library and the C++ tests with AddressSanitizer and
# UndefinedBehaviorSanitizer in build-asan/ and runs the GoogleTest suites under
# them.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export MEASATTN_BUILD_DIR="${MEASATTN_ASAN_BUILD_DIR:-$root/build-asan}"
# The CLI is not built: its checks are the pytest suites, which run in the
# plain build (see below); the GoogleTest suites need the library only.
"$root/scripts/build.sh" -DMEASATTN_SANITIZE=ON -DMEASATTN_BUILD_BENCH=OFF \
  -DMEASATTN_BUILD_PYTHON=OFF -DMEASATTN_BUILD_APPS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
# ctest runs two test programs at once on two cores: OpenMP threads that spin
# at barriers would steal the other program's core.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
cd "$MEASATTN_BUILD_DIR"
# The pytest suites that load torch are left to the plain build: torch itself is
# not built with ASan, so the GoogleTest suites are the sanitized part.
# The mpirun runs (mpi.*) are left to the plain build: OpenMPI is not built with
# the sanitizers and patches the allocator under them; the distributed code's
# one-process paths run here as part of distributed_test.
ctest --output-on-failure --timeout 1800 -j "$(nproc)" -E '^(pytest|mpi)\.'
