#!/usr/bin/env bash
# Configures and builds measattn into build/ (or $MEASATTN_BUILD_DIR). Extra
# arguments go to the CMake configure step.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${MEASATTN_BUILD_DIR:-$root/build}"
"$root/scripts/bootstrap.sh"
# The Python that builds the module and runs the tests: the project's virtual
# environment (Debian's packages plus transformers, tokenizers, the model).
python="$("$root/scripts/venv.sh")"
generator=()
# ccache (Debian) makes the repeated configurations of CI (plain, sanitized,
# fuzz, portable) and rebuilds cheap; CCACHE_BASEDIR lets checkouts in other
# folders share the cache.
launcher=()
if command -v ccache >/dev/null 2>&1; then
  export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$root}"
  # Debug builds (sanitizers, fuzzers) too: their compile directory is not part
  # of the hash, so a clone in another folder hits the same cache entries.
  export CCACHE_NOHASHDIR="${CCACHE_NOHASHDIR:-1}"
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi
if command -v ninja >/dev/null 2>&1 && [ ! -f "$build/Makefile" ]; then generator=(-G Ninja); fi
cmake -S "$root" -B "$build" "${generator[@]}" "${launcher[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DPython3_EXECUTABLE="$python" "$@" >/dev/null
cmake --build "$build" --parallel "$(nproc)"
