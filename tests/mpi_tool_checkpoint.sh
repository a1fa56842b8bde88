#!/bin/sh
# The MPI tool's resumable runs, on real processes (ctest mpi_tool_checkpoint):
#   1. two ranks killed with SIGKILL once the first checkpoint is on disk; the same command run
#      again says it resumes mid-way and writes the same centroids, byte for byte, as an
#      uninterrupted run;
#   2. SIGUSR1 to mpirun (which forwards it to every rank) stops the run cleanly after the current
#      iteration (exit status 130, the checkpoint written); run again, the same centroids.
# usage: mpi_tool_checkpoint.sh MPIEXEC TOOL   (in a scratch directory: ctest's working directory)
set -u
mpiexec=$1 tool=$2
# (exec: a run started in the background with ( run ... ) & is mpirun itself, whose pid $! is)
run() { exec "$mpiexec" --oversubscribe -np 2 "$tool" --synthetic 400000 --dim 64 -k 256 --niter 16 \
          --max-points-per-centroid 100000 --backend cpu "$@"; }
fail() { echo "FAILED: $*"; exit 1; }
wait_for() { # file: up to 60 s
  i=0
  while [ ! -e "$1" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i + 1)); done
  [ -e "$1" ]
}
# Absolute checkpoint paths: the pkill pattern below then matches this test's runs only (another
# build's copy of the test may run on the machine); whatever is left running goes at the end.
ck_kill=$PWD/mpi_ck_kill.ckpt ck_usr1=$PWD/mpi_ck_usr1.ckpt
cleanup() { pkill -KILL -f "flash_mpi_kmean[s] .*$PWD/mpi_ck_" 2> /dev/null; wait; }
trap cleanup EXIT
rm -f mpi_ck_ref.fvecs mpi_ck_kill.* mpi_ck_usr1.*
(run -o mpi_ck_ref.fvecs) > mpi_ck_ref.log 2>&1 || { cat mpi_ck_ref.log; fail "the uninterrupted run"; }

(run --checkpoint "$ck_kill" -o mpi_ck_kill.fvecs) > mpi_ck_kill.log 2>&1 &
wait_for "$ck_kill" || fail "no checkpoint appeared"
# The ranks and mpirun (the bracket keeps this script's own command line from matching).
pkill -KILL -f "flash_mpi_kmean[s] .*$ck_kill" || fail "nothing to kill"
wait
(run --checkpoint "$ck_kill" -o mpi_ck_kill.fvecs) > mpi_ck_kill.log 2>&1 || { cat mpi_ck_kill.log; fail "the resumed run"; }
cat mpi_ck_kill.log
grep -Eq "^found checkpoint $ck_kill \\(([1-9]|1[0-5]) iterations done\\)" mpi_ck_kill.log ||
  fail "the rerun did not resume mid-way"
cmp mpi_ck_ref.fvecs mpi_ck_kill.fvecs || fail "killed and resumed: other centroids"

(run --checkpoint "$ck_usr1" -o mpi_ck_usr1.fvecs) > mpi_ck_usr1.log 2>&1 &
pid=$!
wait_for "$ck_usr1" || fail "no checkpoint appeared (SIGUSR1 case)"
kill -USR1 $pid
wait $pid
rc=$?
cat mpi_ck_usr1.log
[ $rc -eq 130 ] || fail "SIGUSR1: exit status $rc, not 130"
grep -q 'stopped after iteration' mpi_ck_usr1.log || fail "SIGUSR1: no stop message"
[ ! -e mpi_ck_usr1.fvecs ] || fail "SIGUSR1: a stopped run wrote its output"
(run --checkpoint "$ck_usr1" -o mpi_ck_usr1.fvecs) > mpi_ck_usr1.log 2>&1 || { cat mpi_ck_usr1.log; fail "resumed after SIGUSR1"; }
grep -q "^found checkpoint $ck_usr1" mpi_ck_usr1.log || fail "the rerun after SIGUSR1 did not resume"
cmp mpi_ck_ref.fvecs mpi_ck_usr1.fvecs || fail "stopped and resumed: other centroids"
rm -f mpi_ck_ref.* mpi_ck_kill.* mpi_ck_usr1.*
echo "mpi_tool_checkpoint: killed and stopped runs resumed to the same centroids"
