#!/usr/bin/env bash
# Builds the libFuzzer targets with clang, AddressSanitizer and UBSan in
# build-fuzz/ (or $MEASATTN_FUZZ_BUILD_DIR) and runs each for a short time
# (FUZZ_SECONDS, default 60) from the seed corpora in fuzz/corpus/.
# Crash reproducers land in <build>/fuzz/artifacts/; the script fails on any crash.
# Replay one: <build>/fuzz/fuzz_npy <build>/fuzz/artifacts/crash-...
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${MEASATTN_FUZZ_BUILD_DIR:-$root/build-fuzz}"
seconds="${FUZZ_SECONDS:-60}"
"$root/scripts/bootstrap.sh"
generator=()
launcher=()
if command -v ccache >/dev/null 2>&1; then
  export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$root}"
  # Debug builds (sanitizers, fuzzers) too: their compile directory is not part
  # of the hash, so a clone in another folder hits the same cache entries.
  export CCACHE_NOHASHDIR="${CCACHE_NOHASHDIR:-1}"
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi
if command -v ninja >/dev/null 2>&1 && [ ! -f "$build/Makefile" ]; then generator=(-G Ninja); fi
# Only the modules the parsers need: io, transformer and what Model/Measure live
# in (the checkpoint target compiles the checkpoint format itself, see
# fuzz/CMakeLists.txt).
CXX=clang++ cmake -S "$root" -B "$build" "${generator[@]}" "${launcher[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMEASATTN_BUILD_FUZZ=ON -DMEASATTN_SANITIZE=ON -DMEASATTN_MODULES="measure;attention;io;transformer" \
  -DMEASATTN_BUILD_TESTS=OFF -DMEASATTN_BUILD_BENCH=OFF -DMEASATTN_BUILD_PYTHON=OFF \
  -DMEASATTN_BUILD_APPS=OFF -DMEASATTN_MPI=OFF >/dev/null
cmake --build "$build" --parallel "$(nproc)" --target fuzz_npy fuzz_safetensors fuzz_safetensors_header fuzz_checkpoint \
  fuzz_transformer
artifacts="$build/fuzz/artifacts"
mkdir -p "$artifacts"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
status=0
for name in fuzz_npy fuzz_safetensors fuzz_safetensors_header fuzz_checkpoint fuzz_transformer; do
  corpus="$(mktemp -d)"
  cp "$root/fuzz/corpus/${name#fuzz_}"/* "$corpus"/ 2>/dev/null || true
  log="$build/fuzz/$name.log"
  echo "fuzz: $name for ${seconds}s (log: $log)" >&2
  dict=()
  if [ -f "$root/fuzz/${name#fuzz_}.dict" ]; then dict=(-dict="$root/fuzz/${name#fuzz_}.dict"); fi
  if "$build/fuzz/$name" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      "${dict[@]}" -artifact_prefix="$artifacts/" "$corpus" >"$log" 2>&1; then
    tail -n 2 "$log"
  else
    echo "fuzz: $name FAILED; reproducers in $artifacts" >&2
    tail -n 40 "$log"
    status=1
  fi
  rm -rf "$corpus"
done
exit "$status"
