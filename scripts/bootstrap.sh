#!/usr/bin/env bash
# Installs the Debian packages measattn needs to build, test, benchmark and plot.
# Idempotent: packages already present are not touched, and apt-get is only
# called when something is missing. Needs root (or sudo) when it has work to do.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git ccache
  clang libclang-rt-14-dev clang-format
  libeigen3-dev libspectra-dev libcli11-dev nlohmann-json3-dev liblemon-dev zlib1g-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  pybind11-dev python3-dev python3-numpy python3-pytest python3-mypy
  python3-torch python3-pot python3-scipy python3-matplotlib
  gnuplot-nox
  openmpi-bin libopenmpi-dev python3-mpi4py
  libopenblas0-pthread
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "bootstrap: all ${#packages[@]} packages present" >&2
  exit 0
fi

echo "bootstrap: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
