#!/usr/bin/env bash
# The whole test suite on a fresh machine: set up, start the local two-node SLURM cluster that
# the launcher tests submit to, run pytest, stop the cluster.
#
# Plain `pytest` runs the fast tier only (pyproject's addopts: -m "not slow and not slurm and not
# gpu"); -m "not gpu" here replaces that and selects every test a machine without a GPU can run
# (the gpu-marked ones run on a lent GPU from benchmarks/gpu_all.sh). Arguments are passed on
# after it, so a -m of your own wins.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# tests/test_mpirun.py runs Open MPI's mpirun and MPICH's hydra (mpiexec.hydra) themselves.
if ! command -v mpirun.openmpi >/dev/null || ! command -v mpiexec.hydra >/dev/null; then
  [ "$(id -u)" -eq 0 ] || { echo "test.sh: installing openmpi-bin and mpich needs root" >&2; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends openmpi-bin mpich >/dev/null
fi
bash slurm/local_cluster.sh start
trap 'bash slurm/local_cluster.sh stop || true' EXIT
# Two workers, one test file each at a time: the SLURM tests mostly wait on the scheduler while
# the engine tests compute, and files keep their module-level caches of finished runs.
.venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=25 \
    -m "not gpu" tests "$@"
