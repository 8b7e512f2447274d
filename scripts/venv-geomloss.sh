#!/usr/bin/env bash
# Creates (once) the virtual environment with GeomLoss from PyPI for the large-n Sinkhorn
# benchmark (bench/sinkhorn_large.py; never used by the tests), and prints the path of its
# python on stdout. It sees Debian's packages (--system-site-packages), so GeomLoss runs on
# Debian's torch 1.13; pykeops is not installed (GeomLoss's "tensorized" backend needs
# none; "online" and "multiscale" need KeOps and are reported as unavailable). It lives
# in ./.venv-geomloss, or in $MEASATTN_GEOMLOSS_VENV. Re-running is cheap: nothing is
# installed when the stamp matches the pinned requirement.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MEASATTN_GEOMLOSS_VENV:-$root/.venv-geomloss}"
requirement="geomloss==0.3.1"
stamp="$venv/.measattn-requirements"

if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$requirement" ]; then
  echo "$venv/bin/python"
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "venv-geomloss: creating $venv (with system site packages: Debian's torch)" >&2
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
if "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q --no-deps \
  "$requirement" >&2; then
  echo "$requirement" >"$stamp"
  echo "venv-geomloss: $requirement ready in $venv" >&2
  echo "$venv/bin/python"
  exit 0
fi
echo "venv-geomloss: WARNING: could not install $requirement from PyPI" >&2
exit 1
