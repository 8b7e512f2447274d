#!/usr/bin/env bash
# Creates (once) the virtual environment with the newest POT from PyPI, which the
# tests compare measattn.ot against next to Debian's POT 0.8.2, and prints the path
# of its python on stdout. It does NOT see Debian's packages (no
# --system-site-packages), so its POT shadows nothing and nothing shadows it. It
# lives in ./.venv-pot, or in $MEASATTN_POT_VENV. Re-running is cheap: nothing is
# installed when the stamp matches the pinned requirement. When PyPI cannot be
# reached it says so on stderr and exits 1; tests/python/test_ot_latest.py then skips,
# naming this script.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MEASATTN_POT_VENV:-$root/.venv-pot}"
requirement="pot==0.9.7.post1"
stamp="$venv/.measattn-requirements"

if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$requirement" ]; then
  echo "$venv/bin/python"
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "venv-pot: creating $venv (without system site packages)" >&2
  /usr/bin/python3 -m venv "$venv"
fi
for attempt in 1 2 3; do
  if "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q \
    "$requirement" >&2; then
    echo "$requirement" >"$stamp"
    echo "venv-pot: $requirement ready in $venv" >&2
    echo "$venv/bin/python"
    exit 0
  fi
  echo "venv-pot: pip install failed (attempt $attempt of 3)" >&2
  sleep $((attempt * 5))
done
echo "venv-pot: WARNING: could not install $requirement from PyPI" \
  "(tests/python/test_ot_latest.py will skip)" >&2
exit 1
