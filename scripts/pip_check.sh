#!/usr/bin/env bash
# The Python package as a user installs it: `pip install .` into a fresh
# virtual environment (python3 -m venv --system-site-packages, so Debian's
# numpy/torch/pytest are visible but nothing of build/ is), then, from another
# directory: import it, check that __version__ is the C++ version and that the
# package and the `measattn` command come from the environment, run the
# docstring examples (doctest) and the examples/ scripts against it.
# The CMake build directory is kept in build-pip/ (and ccache is used), so a
# second run rebuilds nothing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/bootstrap.sh"
work="$(mktemp -d "${TMPDIR:-/tmp}/measattn-pip.XXXXXX")"
trap 'rm -rf "$work"' EXIT INT TERM
venv="$work/venv"
/usr/bin/python3 -m venv --system-site-packages "$venv"
ccache_args=()
if command -v ccache >/dev/null 2>&1; then
  export CCACHE_BASEDIR="$root" CCACHE_NOHASHDIR=1
  ccache_args=(--config-settings=cmake.define.CMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi
echo "pip: installing $root into $venv" >&2
"$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q \
  --config-settings=build-dir="$root/build-pip" "${ccache_args[@]}" "$root"

cd "$work"  # not the repository: the package must come from the environment
"$venv/bin/python" - "$venv" <<'PY'
import os, subprocess, sys
import measattn
venv = os.path.realpath(sys.argv[1])
where = os.path.realpath(measattn.__file__)
assert where.startswith(venv + os.sep), f"measattn imported from {where}, not from {venv}"
cli = os.path.join(venv, "bin", "measattn")
out = subprocess.run([cli, "--version"], capture_output=True, text=True, check=True).stdout
assert measattn.__version__ in out, (measattn.__version__, out)
print(f"pip: measattn {measattn.__version__} imports from {where}; CLI says {out.strip()}")
PY
# Docstring examples of the installed package.
"$venv/bin/python" "$root/tests/python/run_doctests.py"
# The examples, against the installed package and command.
MEASATTN_BIN="$venv/bin/measattn" OMP_WAIT_POLICY=PASSIVE \
  "$venv/bin/python" -m pytest -q -p no:cacheprovider --rootdir "$root/tests/python" \
  "$root/tests/python/test_examples.py"
