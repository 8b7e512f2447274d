#!/usr/bin/env bash
# The main job: build, then run `measattn analyze` on the built-in example layer
# and token measure. The report lands in ./analysis/ (or the directory given).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/analysis}"
"$root/scripts/build.sh"
"${MEASATTN_BUILD_DIR:-$root/build}/apps/measattn" analyze --out "$out"
