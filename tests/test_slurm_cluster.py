"""The local two-node SLURM cluster itself (slurm/local_cluster.sh)."""

from __future__ import annotations

import subprocess
from pathlib import Path

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


@pytest.mark.parametrize("nodelist", ["node[01-03,07]", "gpu-a[12-13]", "a[1-2]b[3-4]",
                                      "x1,y[2-3]", "c[3,5-6],d1", "node[7]", "node5"])
def test_the_first_host_without_scontrol_is_the_one_scontrol_lists_first(slurm_cluster, nodelist):  # noqa: F811
    # Ranks fall back to our parser where scontrol is missing (containers); a wrong master
    # address makes the rendezvous wait for its whole timeout.
    from seq2seq_es.engine.distributed import first_host_of

    listed = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                            text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert first_host_of(nodelist) == listed.stdout.split()[0]


def test_a_batch_script_process_trains_alone_and_srun_tasks_join(slurm_cluster, tmp_path):  # noqa: F811
    # sbatch --ntasks 2 sets SLURM_PROCID=0 and SLURM_NTASKS=2 in the batch script itself: taken
    # for rank 0 of 2 there, a directly started run would wait for a rank 1 that never comes.
    import sys

    from conftest_slurm import wait_finished

    probe = ("from seq2seq_es.engine.distributed import read_env; e = read_env(); "
             "print('ENV', e.launcher, e.rank, e.world_size)")
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\n"
                      f"cd {Path(__file__).resolve().parents[1]}\n"
                      f"{sys.executable} -c \"{probe}\"\n"
                      f"srun -n2 {sys.executable} -c \"{probe}\"\n")
    out = tmp_path / "job.out"
    # sbatch exports this environment: without the torchrun variables an in-process engine test
    # of this worker may have set, which read_env rightly takes first
    from engine_runs import subprocess_env
    submitted = subprocess.run(["sbatch", "--parsable", "-N2", "--ntasks", "2", "-o", str(out),
                                str(script)], capture_output=True, text=True, timeout=60,
                               env=subprocess_env())
    assert submitted.returncode == 0, submitted.stderr
    wait_finished(submitted.stdout.strip().split(";")[0], timeout_s=120)
    text = out.read_text()
    envs = sorted(line for line in text.splitlines() if line.startswith("ENV"))
    assert envs == ["ENV none 0 1", "ENV slurm 0 2", "ENV slurm 1 2"], text
    assert "not started by srun: it trains alone" in text
