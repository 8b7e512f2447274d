#!/usr/bin/env bash
# Runs a GoogleTest program under mpirun for ctest: mpi_run.sh MPIEXEC RANKS PROGRAM.
#
# OpenMPI 4.1 (Debian's) has a shutdown race in its runtime: now and then
# mpirun reports "process rank K with PID 0 ... exiting improperly" although
# every rank called MPI_Finalize (open-mpi/ompi#7833, #9389, #12607; a plain
# hello world shows it once in a few thousand runs, more often under load).
# The run is repeated, at most twice, only when that is the one failure: the
# message is there and every rank printed GoogleTest's PASSED line. A real
# failure (a rank that failed, crashed or hung) is never repeated.
set -u
mpiexec=$1 ranks=$2 program=$3
shift 3
log=$(mktemp "${TMPDIR:-/tmp}/measattn-mpi.XXXXXX")
trap 'rm -f "$log"' EXIT
for attempt in 1 2 3; do
  "$mpiexec" --oversubscribe -np "$ranks" "$program" "$@" >"$log" 2>&1
  rc=$?
  cat "$log"
  [ "$rc" -eq 0 ] && exit 0
  passed=$(grep -c 'PASSED  \]' "$log")
  if grep -q 'exiting improperly' "$log" && [ "$passed" -eq "$ranks" ] && [ "$attempt" -lt 3 ]; then
    echo "mpi_run.sh: all $ranks ranks passed; mpirun's shutdown race (open-mpi/ompi#7833):" \
         "run $attempt repeated" >&2
    continue
  fi
  exit "$rc"
done
