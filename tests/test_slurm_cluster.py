"""The local two-node SLURM cluster itself (slurm/local_cluster.sh)."""

from __future__ import annotations

import subprocess

import pytest

from conftest_slurm import CLUSTER_SCRIPT, slurm_cluster  # noqa: F401  (fixture)

pytestmark = pytest.mark.slurm


def test_start_is_idempotent_and_status_lists_both_nodes(slurm_cluster):  # noqa: F811
    again = subprocess.run(["bash", str(CLUSTER_SCRIPT), "start"], capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stderr
    status = subprocess.run(["bash", str(CLUSTER_SCRIPT), "status"], capture_output=True,
                            text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    lines = {line.split()[0]: line for line in status.stdout.splitlines() if line.strip()}
    for daemon in ("slurmctld", "slurmd-node1", "slurmd-node2"):
        assert "running (pid" in lines[daemon]
    nodes = {line.split()[0] for line in status.stdout.splitlines() if line.startswith("node")}
    assert nodes == {"node1", "node2"}


def test_srun_runs_one_task_on_each_node(slurm_cluster):  # noqa: F811
    result = subprocess.run(["srun", "-N2", "-n2", "bash", "-c",
                             "echo $SLURM_PROCID $SLURMD_NODENAME"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split("\n")[:2]) == ["0 node1", "1 node2"]


def test_partitions_known_to_slurm(slurm_cluster):  # noqa: F811
    from seq2seq_es.slurm.sweep import slurm_partitions

    assert slurm_partitions() == ["debug"]
