#!/usr/bin/env bash
# The main job: installs and builds what it needs, then trains a FAISS IVF index on
# Fashion-MNIST with stock FAISS and with faiss-flash and prints them side by side.
# Arguments go to the demo (see bench/ivf_demo.cpp), e.g. --backend cpu --nlist 512.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/build.sh" > "$root/build.log" 2>&1 || { tail -50 "$root/build.log"; exit 1; }
exec "$root/build/flash_ivf_demo" "$@"
