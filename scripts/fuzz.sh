#!/usr/bin/env bash
# Builds the libFuzzer targets with clang in build-fuzz/ and runs each for a
# short time (FUZZ_SECONDS, default 60) from the seed corpora in fuzz/corpus/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build-fuzz"
seconds="${FUZZ_SECONDS:-60}"
"$root/scripts/bootstrap.sh"
CXX=clang++ cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMEASATTN_BUILD_FUZZ=ON -DMEASATTN_BUILD_TESTS=OFF -DMEASATTN_BUILD_BENCH=OFF \
  -DMEASATTN_BUILD_PYTHON=OFF -DMEASATTN_BUILD_APPS=OFF >/dev/null
cmake --build "$build" --parallel "$(nproc)"
for target in "$build"/fuzz/fuzz_*; do
  name="$(basename "$target")"
  corpus="$(mktemp -d)"
  cp "$root/fuzz/corpus/${name#fuzz_}"/* "$corpus"/ 2>/dev/null || true
  echo "fuzz: $name for ${seconds}s" >&2
  "$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 "$corpus" 2>&1 | tail -n 3
  rm -rf "$corpus"
done
