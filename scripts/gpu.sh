#!/usr/bin/env bash
# GPU build, test and benchmark in one go.
#
#   scripts/gpu.sh build   # here (no GPU needed): build for sm_90 into build-gpu/ and pack
#                          # the binaries and the shared libraries they need into .gpu/
#   scripts/gpu.sh run     # on the GPU machine, in the repository root: GPU tests (C++ and, with
#                          # the module built there, the Python torch-CUDA tests), the FAISS
#                          # hook suites on the CUDA engine, compute-sanitizer (memcheck,
#                          # racecheck, initcheck), the benchmark and the peers; a short table at the end.
#                          # QUICK=1: only the engine tests, the benchmark, the tuned run, the
#                          # phases and the peers (no other suites, no sanitizers). PART=tests,
#                          # PART=sanitizers or PART=bench: the suites, the compute-sanitizer runs
#                          # or the benchmarks alone (each fits one 600 s device call).
#   scripts/gpu.sh scale   # host data larger than the GPU (issue 5): bench_scale on N = 32M and
#                          # 200M (SCALE_N), d = 128, fp32 and fp16, K = 4096 and 16384, beside
#                          # flash-kmeans' out-of-core path; SCALE_N="32000000" for a 128 GiB host;
#                          # SCALE_TYPES="f16" for a subset of f32, f16, f32:f16, f32:tf32.
#   scripts/gpu.sh ceiling # cuBLAS fp16 / bf16 GEMMs at the power cap (bench/gemm_ceiling.py, needs
#                          # torch), then bench_scale at N = 32M fp16 K = 16384 for 12 s and the
#                          # peer for as long, clocks and power logged beside them (smi.csv)
#   scripts/gpu.sh python  # only the Python GPU tests (needs python3 with torch, pybind11, pytest)
#   scripts/gpu.sh multi   # several GPUs (issue 6): sharded tests on every visible GPU, 1 vs all
#                          # GPUs at N = 200M K = 16384 (host and resident), MPI one rank per GPU.
# Logs and CSVs go to $OUT (or ./gpu-out) as logs.tar.gz, with device.txt and the benchmark's
# CSVs and plot beside it.
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
  cmake --build build-gpu -j"$(nproc)" --target test_cuda_engine test_sharded test_index_hooks test_clustering_params \
    test_bad_input test_cpu_engine test_checkpoint checkpoint_worker bench_gpu bench_scale flash_mpi_kmeans faiss_flash \
    >> build-gpu.log
  rm -rf .gpu && mkdir -p .gpu/bin .gpu/lib
  cp build-gpu/tests/gpu/test_cuda_engine build-gpu/tests/gpu/test_sharded build-gpu/tests/test_index_hooks \
     build-gpu/tests/test_clustering_params build-gpu/tests/test_bad_input build-gpu/tests/test_cpu_engine \
     build-gpu/tests/test_checkpoint build-gpu/tests/checkpoint_worker \
     build-gpu/bench/gpu/bench_gpu build-gpu/bench/gpu/bench_scale build-gpu/flash_mpi_kmeans .gpu/bin/
  for lib in libopenblas.so.0 libgfortran.so.5 libquadmath.so.0 libgomp.so.1; do
    cp -L "/lib/x86_64-linux-gnu/$lib" .gpu/lib/
  done
  tar -C .gpu -cJf .gpu/pack.tar.xz bin lib && rm -rf .gpu/bin .gpu/lib
  # For the Python GPU tests: the static libraries and FAISS's headers, to build the module
  # there against its own python3 (whose version Debian's python3 need not share).
  mkdir -p .gpu/py/lib .gpu/py/include
  cp build-gpu/libfaiss_flash.a build-gpu/libflash_engine.a /usr/lib/x86_64-linux-gnu/libfaiss.a .gpu/py/lib/
  cp -r /usr/include/faiss .gpu/py/include/
  tar -C .gpu -cJf .gpu/py.tar.xz py && rm -rf .gpu/py
  # Open MPI for the GPU machine (it has none): Debian's runtime, relocated there with OPAL_PREFIX.
  ( cd / && tar -czf "$root/.gpu/ompi.tgz" --ignore-failed-read usr/bin/orterun usr/bin/orted \
      usr/lib/x86_64-linux-gnu/openmpi usr/lib/x86_64-linux-gnu/pmix2 usr/share/openmpi etc/openmpi \
      $(ls usr/lib/x86_64-linux-gnu/{libmpi,libopen-rte,libopen-pal,libhwloc,libevent,libpmix,libudev,libfabric,libucp,libucs,libuct,libucm,libnl-,libibverbs,libpsm,libefa,librdmacm,libltdl,libmunge}*.so* 2>/dev/null) ) 2>/dev/null || true
  du -sh .gpu/*
}

unpack() { # -> $work with bin/ and lib/; LD_LIBRARY_PATH set
  work=$(mktemp -d)
  tar -C "$work" -xJf .gpu/pack.tar.xz
  export LD_LIBRARY_PATH="$work/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  bin=$work/bin
  dest=${OUT:-$root/gpu-out}
  out=$work/logs # every log and CSV here; at exit (pack_logs) they go to $dest packed
  mkdir -p "$out" "$dest"
  trap pack_logs EXIT
}

# $dest gets logs.tar.gz (everything) and, unpacked, only the few files a reader wants first: the
# device tool brings back a limited number of files from $OUT (it once left the tarball behind).
pack_logs() {
  tar -C "$out" -czf "$dest/logs.tar.gz" . || true
  for f in device.txt ours.csv ours_tuned.csv peers.csv clocks.log gpu_time_per_iter.png; do
    [ -f "$out/$f" ] && cp "$out/$f" "$dest/"
  done
  return 0
}

# Issue 5: host-resident points, resident where they fit, streamed where they do not.
scale() {
  unpack
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.txt"
  free -g | head -2
  status=0
  for n in ${SCALE_N:-32000000 200000000}; do
    # f32:f16 = fp32 host points converted once to fp16 (transfer_dtype); f32:tf32 = fp32 in TF32 mode
    for t in ${SCALE_TYPES:-f32 f16 f32:f16 f32:tf32}; do
      dt=${t%%:*} tr=${t#*:}; [ "$tr" = "$t" ] && tr= ; tag=${t/:/_to_}; mode=
      [ "$tr" = tf32 ] && mode=tf32 tr= tag=f32_tf32
      "$bin/bench_scale" --n "$n" --dtype $dt ${tr:+--transfer $tr} ${mode:+--fp32-mode $mode} --k ${SCALE_K:-4096,16384} --niter ${SCALE_NITER:-3} \
        --devices 0 --streaming ${SCALE_MODES:-auto} --csv "$out/scale_${n}_$tag.csv" 2>&1 | tee "$out/scale_${n}_$tag.log" || status=1
      if [ -z "$tr" ] && [ -z "$mode" ] && [ -d .peers/flash_kmeans ]; then
        python3 bench/peers/run_peers_large.py --flash-kmeans-path .peers --n "$n" --dtype $t --k ${PEER_K:-4096,16384} \
          --devices 0 --csv "$out/peer_scale_${n}_$t.csv" 2>&1 | tee "$out/peer_scale_${n}_$t.log" || status=1
      fi
    done
  done
  return $status
}

# Issue 6: every visible GPU.
multi() {
  unpack
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.txt"
  export NCCL_NVLS_ENABLE=0 PMIX_MCA_pcompress_base_silence_warning=1
  status=0
  ngpu=$(nvidia-smi -L | wc -l)
  all=$(seq -s, 0 $((ngpu - 1)))
  "$bin/test_sharded" > "$out/sharded_tests.log" 2>&1 || status=1
  tail -n 3 "$out/sharded_tests.log"
  n=${MULTI_N:-200000000}
  for t in ${MULTI_DTYPES:-f16 f32}; do
    # exact fp32 at K = 16384 costs seconds per iteration: two iterations (one timed gap)
    [ $t = f32 ] && nit=${MULTI_NITER_F32:-2} || nit=${MULTI_NITER:-3}
    "$bin/bench_scale" --n "$n" --dtype $t --k 16384 --niter $nit --devices "0;$all" \
      --streaming auto,force --csv "$out/multi_${t}.csv" 2>&1 | tee "$out/multi_${t}.log" || status=1
  done
  if [ -f .gpu/ompi.tgz ]; then # the Open MPI the binary was built with (Debian's), relocated
    mkdir -p "$work/ompi" && tar -C "$work/ompi" -xzf .gpu/ompi.tgz
    ln -sf orterun "$work/ompi/usr/bin/mpirun"
    saved_path=$PATH saved_ld=$LD_LIBRARY_PATH
    export OPAL_PREFIX=$work/ompi/usr PATH="$work/ompi/usr/bin:$PATH"
    export LD_LIBRARY_PATH="$work/ompi/usr/lib/x86_64-linux-gnu:$LD_LIBRARY_PATH"
    if ! mpirun --allow-run-as-root -np 1 true; then
      echo "carried Open MPI does not start here; trying the machine's own"
      unset OPAL_PREFIX; export PATH=$saved_path LD_LIBRARY_PATH=$saved_ld
    fi
  fi
  if command -v mpirun > /dev/null; then
    mpirun --version | head -1
    for np in 1 $ngpu; do
      mpirun --allow-run-as-root --oversubscribe -np $np -x LD_LIBRARY_PATH -x NCCL_NVLS_ENABLE \
        "$bin/flash_mpi_kmeans" --synthetic ${MPI_N:-32000000} --dim 128 -k 4096 --niter 4 \
        --max-points-per-centroid 100000 --backend cuda -o "$out/mpi_np$np.fvecs" 2>&1 | tee "$out/mpi_np$np.log" \
        || status=1
    done
    python3 - "$out/mpi_np1" "$out/mpi_np$ngpu" <<'PY' || status=1
import re, sys, numpy as np
# Near-ties may flip between runs of different shard counts, so the objectives are the test;
# the centroid difference is reported.
objs = [float(re.findall(r"objective=(\S+)", open(f + ".log").read())[-1]) for f in sys.argv[1:3]]
a, b = (np.fromfile(f + ".fvecs", dtype=np.float32).reshape(-1, 129)[:, 1:] for f in sys.argv[1:3])
rel = abs(objs[0] - objs[1]) / abs(objs[0])
print(f"MPI: 1 rank vs one rank per GPU: final objective {objs[0]:.6g} vs {objs[1]:.6g} (relative {rel:.1e}); "
      f"max centroid difference {float(np.abs(a - b).max()) / float(np.abs(a).max()):.1e} relative")
sys.exit(0 if rel < 1e-4 else 1)
PY
  fi
  return $status
}

# The Python GPU tests (torch CUDA tensors, tests/python/test_gpu_tensors.py): the module is
# compiled there against the python3 that holds torch and linked with the packed libraries.
python_gpu() {
  local py=python3 pydir=$work/py cuda=${CUDA_HOME:-/usr/local/cuda}
  if ! $py -c "import torch, pybind11, numpy, pytest" 2> /dev/null; then
    echo "python GPU tests skipped: python3 there lacks torch, pybind11, numpy or pytest"
    return 0
  fi
  tar -C "$work" -xJf .gpu/py.tar.xz
  mkdir -p "$pydir/faiss_flash" && cp python/faiss_flash/*.py "$pydir/faiss_flash/"
  local ext
  ext=$($py -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
  # shellcheck disable=SC2046 # pybind11 --includes is a list of flags
  # (-include cstdint: FAISS 1.7.3 headers rely on it arriving transitively, newer g++ differs)
  g++ -O2 -std=c++17 -shared -fPIC -include cstdint -I. -I"$work/py/include" $($py -m pybind11 --includes) \
    python/module.cpp -o "$pydir/faiss_flash/_faiss_flash$ext" \
    -Wl,--start-group "$work/py/lib/libfaiss_flash.a" "$work/py/lib/libflash_engine.a" "$work/py/lib/libfaiss.a" \
    -Wl,--end-group "$work/lib/libopenblas.so.0" "$work/lib/libgomp.so.1" -L"$cuda/lib64" -lcudart_static -ldl -lrt -lpthread
  PYTHONPATH="$pydir:$root/tests/python" $py -m pytest -q -rs -p no:cacheprovider tests/python/test_gpu_tensors.py
}

run() {
  unpack
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.txt"
  status=0
  summary=()
  run_suite() { # name, command...
    local name=$1; shift
    if "$@" > "$out/$name.log" 2>&1; then r=ok; else r=FAILED; status=1; fi
    summary+=("$(printf '%-34s %-7s %s' "$name" "$r" "$(grep -E '^\[  (PASSED|FAILED|SKIPPED) |^[0-9]+ (passed|failed)|skipped' "$out/$name.log" | tr '\n' ' ' | cut -c1-80)")")
    tail -n 3 "$out/$name.log"
  }
  # PART=tests: the suites only; PART=sanitizers: the compute-sanitizer runs only; PART=bench:
  # the benchmarks and the peers only (the whole script no longer fits one 600 s device call, nor
  # the suites with the sanitizers: 590 s and counting in the nineteenth session).
  local part=${PART:-all}
  if [ "$part" = all ] || [ "$part" = tests ]; then
    run_suite gpu_tests "$bin/test_cuda_engine"
    FLASH_UPDATE_SORT=counting run_suite gpu_tests_counting_update "$bin/test_cuda_engine"
    FLASH_UPDATE_SORT=radix run_suite gpu_tests_radix_update "$bin/test_cuda_engine"
    FLASH_CUDA_GRAPH=0 run_suite gpu_tests_eager "$bin/test_cuda_engine"        # kernels launched one by one
    FLASH_PDL=0 run_suite gpu_tests_plain_launches "$bin/test_cuda_engine"      # no programmatic dependent launch
    run_suite sharded_tests "$bin/test_sharded"
    run_suite python_gpu python_gpu
    if [ -z "${QUICK:-}" ]; then
      FLASH_TEST_BACKEND=cuda run_suite hooks_on_cuda "$bin/test_index_hooks"
      FLASH_TEST_BACKEND=cuda run_suite params_on_cuda "$bin/test_clustering_params"
      run_suite bad_input "$bin/test_bad_input"
      FLASH_CHECKPOINT_WORKER="$bin/checkpoint_worker" run_suite checkpoint_on_cuda "$bin/test_checkpoint" \
        --gtest_filter=Checkpoint.KilledGpuProcessResumesToTheSameCentroids
    fi
  fi
  if [ "$part" = all ] || [ "$part" = sanitizers ]; then
    # Fp32Split*: k = 1000, so the TMA kernels reuse their stages (the mbarrier hand-off checked);
    # Fp32FilterCandidates*: the filter's candidate slots (the point tile's space), full tile
    # searches and lost values; Fp32Distances*: the resolve and fp32 distance kernels
    # Sharded: every placement, the second plan after failed allocations, the rows converted once
    sanitize_sharded=Sharded.EveryPlacementGivesTheSameBitsOnIntegerData:Sharded.ClearErrors:Sharded.FailedResidentAllocationStreamsInstead:Sharded.TransferDtypeMatchesHalfInput
    sanitize=CudaEngine.TiesGoToLowestIndex:CudaEngine.SmallShapesEveryPath:CudaEngine.EmptyClustersSplitLikeFaiss:CudaEngine.RunsAreBitIdentical*:CudaEngine.Fp32Split*:CudaEngine.Fp32FilterCandidates*:CudaEngine.Fp32DistancesInOneDotProductOrder
    if [ -z "${QUICK:-}" ] && command -v compute-sanitizer > /dev/null; then
      run_suite memcheck compute-sanitizer --tool memcheck --error-exitcode 9 "$bin/test_cuda_engine" --gtest_filter="$sanitize"
      run_suite memcheck_sharded compute-sanitizer --tool memcheck --error-exitcode 9 "$bin/test_sharded" \
        --gtest_filter="$sanitize_sharded"
      run_suite racecheck compute-sanitizer --tool racecheck --error-exitcode 9 "$bin/test_cuda_engine" --gtest_filter="$sanitize"
      run_suite initcheck compute-sanitizer --tool initcheck --error-exitcode 9 "$bin/test_cuda_engine" --gtest_filter="$sanitize"
      # the assignment's start reads the last iteration's labels and those centroids' rows
      # (racecheck on it takes minutes: left to the filter above)
      run_suite initcheck_bound compute-sanitizer --tool initcheck --error-exitcode 9 "$bin/test_cuda_engine" \
        --gtest_filter=CudaEngine.BoundedSearchGivesTheSameBits
      run_suite initcheck_sharded compute-sanitizer --tool initcheck --error-exitcode 9 "$bin/test_sharded" \
        --gtest_filter="$sanitize_sharded"
    fi
  fi
  if [ "$part" = all ] || [ "$part" = bench ]; then
    # Both benchmarks pause before each config (SETTLE_MS, default 2000): the clocks recover
    # from the power limit of the large configs before the short ones are timed. The SM clock and
    # power, once a second, go to clocks.log.
    local settle=${SETTLE_MS:-2000} dmon=""
    if command -v nvidia-smi > /dev/null; then
      nvidia-smi dmon -s pc -d 1 > "$out/clocks.log" 2>&1 &
      dmon=$!
    fi
    "$bin/bench_gpu" --csv "$out/ours.csv" --settle-ms "$settle" ${BENCH_ARGS:-} | tee "$out/bench.log" || status=1
    # Every kernel configuration timed once per shape bucket (the autotuner's log lists them),
    # then the per-phase breakdown and the fp32 certificate's re-check share.
    FLASH_AUTOTUNE=1 FLASH_CACHE_DIR="$out" "$bin/bench_gpu" --csv "$out/ours_tuned.csv" ${BENCH_ARGS:-} \
      > "$out/bench_tuned.log" 2>&1 || status=1
    grep -E "autotune|^B=" "$out/bench_tuned.log" || true
    FLASH_CUDA_PHASE_TIMES=1 "$bin/bench_gpu" --repeats 1 ${BENCH_ARGS:-} > "$out/phases.log" 2>&1 || status=1
    grep -E "phases|certificate|filter|^B=" "$out/phases.log" | sort | uniq -c | sort -rn | head -40 || true
    if [ -d .peers/flash_kmeans ]; then
      python3 bench/peers/run_peers.py --flash-kmeans-path .peers --csv "$out/peers.csv" --settle-ms "$settle" \
        ${PEER_ARGS:-} 2>&1 | tee "$out/peers.log" || status=1
      python3 bench/plot_gpu.py "$out/ours.csv" "$out/peers.csv" "$out/gpu_time_per_iter.png" || true
    fi
    [ -z "$dmon" ] || kill "$dmon" 2> /dev/null || true
  fi
  echo
  echo "== summary =="
  printf '%s\n' "${summary[@]}"
  if [ -f "$out/peers.csv" ]; then
    python3 - "$out/ours.csv" "$out/peers.csv" <<'PY'
import csv, sys
ours = {r["config"]: r for r in csv.DictReader(open(sys.argv[1]))}
peers = {r["config"]: r for r in csv.DictReader(open(sys.argv[2]))}
# Steady state: our iter_ms vs the peer's marginal iteration; per call: our call_ms (whole call
# / niter, setup included) vs the peer's whole call / niter.
# "fk best": the peer's fastest steady-state repeat (its iterations follow the host's state);
# "fk fit": the slope of its call time over 5 to 40 iterations (median over repeats).
print(f"{'config':24s} {'ours iter':>9s} {'TFLOP/s':>8s} {'fk iter':>8s} {'speedup':>8s} {'fk best':>8s} "
      f"{'speedup':>8s} {'fk fit':>8s} {'speedup':>8s} {'ours call':>9s} {'fk call':>8s} {'speedup':>8s} "
      f"{'dense torch':>11s}")
for n, r in ours.items():
    p = peers.get(n, peers.get(n.removesuffix("_tf32"), {}))  # our TF32 mode beside the peer's TF32
    fk = float(p.get("flash_kmeans_ms", "nan")); fki = float(p.get("flash_kmeans_iter_ms", "nan"))
    fkb = float(p.get("flash_kmeans_iter_min_ms", "nan")); dt = float(p.get("dense_torch_ms", "nan"))
    fkf = float(p.get("flash_kmeans_iter_fit_ms", "nan"))
    o, oc = float(r["iter_ms"]), float(r["call_ms"])
    print(f"{n:24s} {o:9.3f} {float(r['tflops']):8.1f} {fki:8.3f} {fki / o:7.2f}x {fkb:8.3f} {fkb / o:7.2f}x "
          f"{fkf:8.3f} {fkf / o:7.2f}x {oc:9.3f} {fk:8.3f} {fk / oc:7.2f}x {dt:11.3f}")
PY
  fi
  return $status
}

# What the card's matrix units sustain at the power cap, beside ours in the same call (run 52).
ceiling() {
  unpack
  nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv,noheader | tee "$out/device.txt"
  nvidia-smi --query-gpu=timestamp,power.draw,clocks.sm,temperature.gpu,clocks_throttle_reasons.active \
    --format=csv,noheader -lms 200 > "$out/smi.csv" &
  local smi=$! status=0
  python3 bench/gemm_ceiling.py || status=1
  date +%T; "$bin/bench_scale" --n 32000000 --dtype f16 --k 16384 --niter 48 --devices 0 --streaming auto || status=1
  if [ -d .peers/flash_kmeans ]; then # the peer for as long (2 + 30 iterations)
    date +%T; python3 bench/peers/run_peers_large.py --flash-kmeans-path .peers --n 32000000 --dtype f16 --k 16384 \
      --m 30 --devices 0 || status=1
  fi
  date +%T; kill "$smi" 2> /dev/null || true
  return $status
}

case "${1:-}" in
  build) build ;;
  run) run ;;
  scale) scale ;;
  multi) multi ;;
  python) unpack && python_gpu ;;
  ceiling) ceiling ;;
  *) echo "usage: scripts/gpu.sh build|run|scale|multi|python|ceiling" >&2; exit 2 ;;
esac
