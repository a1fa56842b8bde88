#!/usr/bin/env bash
# GPU build, test and benchmark in one go.
#
#   scripts/gpu.sh build   # here (no GPU needed): build for sm_90 into build-gpu/ and pack
#                          # the binaries and the shared libraries they need into .gpu/
#   scripts/gpu.sh run     # on the GPU machine, in the repository root: GPU tests, the FAISS
#                          # hook suites on the CUDA engine, compute-sanitizer (memcheck,
#                          # racecheck), the benchmark and the peers; a short table at the end.
#                          # Logs, CSVs and the plot go to $OUT (or ./gpu-out).
#
# For the peers, put the flash-kmeans Python package (svg-project/flash-kmeans, not part of
# this repository) in .peers/flash_kmeans; without it only our numbers are measured.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

build() {
  scripts/setup.sh
  cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DFLASH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-90} \
    -DFLASH_WERROR=ON -DFLASH_BUILD_PYTHON=OFF > build-gpu.log
  cmake --build build-gpu -j"$(nproc)" --target test_cuda_engine test_index_hooks test_clustering_params \
    test_bad_input test_cpu_engine bench_gpu >> build-gpu.log
  rm -rf .gpu && mkdir -p .gpu/bin .gpu/lib
  cp build-gpu/tests/gpu/test_cuda_engine build-gpu/tests/test_index_hooks build-gpu/tests/test_clustering_params \
     build-gpu/tests/test_bad_input build-gpu/tests/test_cpu_engine build-gpu/bench/gpu/bench_gpu .gpu/bin/
  for lib in libopenblas.so.0 libgfortran.so.5 libquadmath.so.0 libgomp.so.1; do
    cp -L "/lib/x86_64-linux-gnu/$lib" .gpu/lib/
  done
  tar -C .gpu -cJf .gpu/pack.tar.xz bin lib && rm -rf .gpu/bin .gpu/lib
  du -sh .gpu/pack.tar.xz
}

run() {
  out=${OUT:-$root/gpu-out}
  mkdir -p "$out"
  work=$(mktemp -d)
  tar -C "$work" -xJf .gpu/pack.tar.xz
  export LD_LIBRARY_PATH="$work/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  bin=$work/bin
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.txt"
  status=0
  summary=()
  run_suite() { # name, command...
    local name=$1; shift
    if "$@" > "$out/$name.log" 2>&1; then r=ok; else r=FAILED; status=1; fi
    summary+=("$(printf '%-34s %-7s %s' "$name" "$r" "$(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$out/$name.log" | tr '\n' ' ' | cut -c1-80)")")
    tail -n 3 "$out/$name.log"
  }
  run_suite gpu_tests "$bin/test_cuda_engine"
  FLASH_TEST_BACKEND=cuda run_suite hooks_on_cuda "$bin/test_index_hooks"
  FLASH_TEST_BACKEND=cuda run_suite params_on_cuda "$bin/test_clustering_params"
  run_suite bad_input "$bin/test_bad_input"
  sanitize=CudaEngine.TiesGoToLowestIndex:CudaEngine.SmallShapesEveryPath:CudaEngine.EmptyClustersSplitLikeFaiss:CudaEngine.RunsAreBitIdentical*
  if command -v compute-sanitizer > /dev/null; then
    run_suite memcheck compute-sanitizer --tool memcheck --error-exitcode 9 "$bin/test_cuda_engine" --gtest_filter="$sanitize"
    run_suite racecheck compute-sanitizer --tool racecheck --error-exitcode 9 "$bin/test_cuda_engine" --gtest_filter="$sanitize"
  fi
  "$bin/bench_gpu" --csv "$out/ours.csv" ${BENCH_ARGS:-} | tee "$out/bench.log" || status=1
  # Every kernel configuration timed once per shape bucket (the autotuner's log lists them),
  # then the per-phase breakdown and the fp32 certificate's re-check share.
  FLASH_AUTOTUNE=1 FLASH_CACHE_DIR="$out" "$bin/bench_gpu" --csv "$out/ours_tuned.csv" ${BENCH_ARGS:-} \
    > "$out/bench_tuned.log" 2>&1 || status=1
  grep -E "autotune|^B=" "$out/bench_tuned.log" || true
  FLASH_CUDA_PHASE_TIMES=1 "$bin/bench_gpu" --repeats 1 ${BENCH_ARGS:-} > "$out/phases.log" 2>&1 || status=1
  grep -E "phases|certificate|^B=" "$out/phases.log" | sort | uniq -c | sort -rn | head -40 || true
  if [ -d .peers/flash_kmeans ]; then
    python3 bench/peers/run_peers.py --flash-kmeans-path .peers --csv "$out/peers.csv" ${PEER_ARGS:-} \
      2>&1 | tee "$out/peers.log" || status=1
    python3 bench/plot_gpu.py "$out/ours.csv" "$out/peers.csv" "$out/gpu_time_per_iter.png" || true
  fi
  echo
  echo "== summary =="
  printf '%s\n' "${summary[@]}"
  if [ -f "$out/peers.csv" ]; then
    python3 - "$out/ours.csv" "$out/peers.csv" <<'PY'
import csv, sys
ours = {r["config"]: r for r in csv.DictReader(open(sys.argv[1]))}
peers = {r["config"]: r for r in csv.DictReader(open(sys.argv[2]))}
print(f"{'config':24s} {'ours ms':>9s} {'TFLOP/s':>8s} {'flash-kmeans':>13s} {'dense torch':>12s} {'speedup':>8s}")
for n, r in ours.items():
    p = peers.get(n, {})
    fk = float(p.get("flash_kmeans_ms", "nan")); dt = float(p.get("dense_torch_ms", "nan"))
    o = float(r["iter_ms"])
    print(f"{n:24s} {o:9.3f} {float(r['tflops']):8.1f} {fk:13.3f} {dt:12.3f} {fk / o:7.2f}x")
PY
  fi
  return $status
}

case "${1:-}" in
  build) build ;;
  run) run ;;
  *) echo "usage: scripts/gpu.sh build|run" >&2; exit 2 ;;
esac
