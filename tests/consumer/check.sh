#!/usr/bin/env bash
# Installs the build tree into a scratch prefix, then builds and runs a consumer project
# that finds it with find_package(faiss_flash).
set -euo pipefail
build=$1
src=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/prefix" > /dev/null
cmake -S "$src" -B "$work/build" -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build "$work/build" -j2 > /dev/null
"$work/build/consumer"
