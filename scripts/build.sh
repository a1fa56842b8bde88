#!/usr/bin/env bash
# Configures and builds faiss-flash into build/ (CUDA engine when nvcc is found).
# Extra arguments go to the CMake configure step, e.g. -DFLASH_CUDA=OFF.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=Release -DFLASH_WERROR=ON "$@" > "$root/build.configure.log" \
  || { cat "$root/build.configure.log"; exit 1; }
grep -E "faiss-flash" "$root/build.configure.log" || true
cmake --build "$root/build" -j"$jobs"
