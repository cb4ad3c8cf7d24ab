#!/usr/bin/env bash
# The whole test suite on a fresh machine: set up, start the local two-node SLURM cluster that
# the launcher tests submit to, run pytest, stop the cluster.
#
# Plain `pytest` runs the fast tier only (pyproject's addopts: -m "not slow and not slurm");
# -m "slow or not slow" here replaces that and selects every test. Arguments are passed on after
# it, so a -m of your own wins (bash scripts/test.sh -m "not gpu").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash slurm/local_cluster.sh start
trap 'bash slurm/local_cluster.sh stop || true' EXIT
# Two workers, one test file each at a time: the SLURM tests mostly wait on the scheduler while
# the engine tests compute, and files keep their module-level caches of finished runs.
.venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=25 \
    -m "slow or not slow" tests "$@"
