#!/usr/bin/env bash
# Configures and builds measattn into build/ (or $MEASATTN_BUILD_DIR). Extra
# arguments go to the CMake configure step.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${MEASATTN_BUILD_DIR:-$root/build}"
"$root/scripts/bootstrap.sh"
generator=()
if command -v ninja >/dev/null 2>&1 && [ ! -f "$build/Makefile" ]; then generator=(-G Ninja); fi
cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DPython3_EXECUTABLE=/usr/bin/python3 "$@" >/dev/null
cmake --build "$build" --parallel "$(nproc)"
