#!/usr/bin/env bash
# Installs what faiss-flash needs from Debian packages (idempotent; quiet when all present).
# The CUDA toolkit, when wanted, is expected at /usr/local/cuda (it is not a Debian package).
set -euo pipefail

packages=(
  build-essential cmake pkg-config zlib1g-dev
  libfaiss-dev python3-faiss libopenblas-dev liblapack-dev
  libgtest-dev pybind11-dev python3-dev python3-numpy python3-pytest
  libopenmpi-dev openmpi-bin
  dataset-fashion-mnist python3-matplotlib
)
# Optional: torch tests skip without it.
optional=(python3-torch)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
missing_optional=()
for p in "${optional[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing_optional+=("$p")
done
[ ${#missing[@]} -eq 0 ] && [ ${#missing_optional[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo > /dev/null || { echo "setup.sh: need root (or sudo) to install: ${missing[*]} ${missing_optional[*]}" >&2; exit 1; }
  sudo=sudo
fi
export DEBIAN_FRONTEND=noninteractive
echo "setup.sh: installing ${missing[*]} ${missing_optional[*]}"
$sudo apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
fi
if [ ${#missing_optional[@]} -gt 0 ]; then
  $sudo apt-get install -y -qq --no-install-recommends "${missing_optional[@]}" > /dev/null \
    || echo "setup.sh: optional ${missing_optional[*]} not installed; the tests that need it will skip"
fi
