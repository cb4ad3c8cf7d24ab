"""`mpirun -np N seq2seq-es train` (Open MPI, and MPICH's or Intel MPI's hydra): the ranks come
from the MPI launcher's variables. Every process trained alone before, and all but one stopped
at the run folder's lock. The environments below are what the launchers export (captured from
Open MPI 4.1 and MPICH 4 on this machine); the slow tests run the launchers themselves, which
scripts/test.sh installs (openmpi-bin, mpich)."""

from __future__ import annotations

import json

import pytest

from engine_runs import base_args, demo_files, run, step_losses
from seq2seq_es.launch_env import launched_rank, launched_ranks
from seq2seq_es.engine import distributed as D
from seq2seq_es.errors import Seq2SeqEsError

OPEN_MPI = {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "4",
            "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
            "OMPI_MCA_ess_base_jobid": "45481985", "PMIX_NAMESPACE": "45481985",
            "PMIX_RANK": "1"}
HYDRA = {"PMI_RANK": "3", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2",
         "PMI_FD": "6", "MASTER_ADDR": "nodo1"}


def test_open_mpi_ranks_are_read_and_every_rank_meets_at_one_port():
    env = D.read_env(OPEN_MPI)
    assert (env.rank, env.world_size, env.local_rank, env.launcher) == (1, 4, 1, "mpirun")
    assert env.master_addr == "127.0.0.1"  # every rank on this node
    # the port is the same on every rank (a hash of the job id), and MASTER_PORT wins
    assert D.read_env({**OPEN_MPI, "OMPI_COMM_WORLD_RANK": "0"}).master_port == env.master_port
    assert D.read_env({**OPEN_MPI, "MASTER_PORT": "29611"}).master_port == 29611


def test_hydra_ranks_are_read_and_a_multi_node_run_needs_its_master_addr():
    env = D.read_env(HYDRA)
    assert (env.rank, env.world_size, env.local_rank) == (3, 4, 1)
    assert (env.master_addr, env.master_port) == ("nodo1", D.DEFAULT_MASTER_PORT)
    spread = {key: value for key, value in HYDRA.items() if key != "MASTER_ADDR"}
    with pytest.raises(Seq2SeqEsError, match="MASTER_ADDR is not set.*-genv MASTER_ADDR"):
        D.read_env(spread)
    # inside a SLURM allocation mpirun puts rank 0 on its first node
    in_job = D.read_env({**spread, "SLURM_JOB_NODELIST": "nodo7,nodo8"})
    assert in_job.master_addr == "nodo7"


def test_one_mpi_rank_trains_alone_and_srun_ranks_stay_slurms():
    assert D.read_env({**OPEN_MPI, "OMPI_COMM_WORLD_SIZE": "1",
                       "OMPI_COMM_WORLD_RANK": "0"}).launcher == "none"
    # srun --mpi=pmi2 exports PMI_RANK/PMI_SIZE too: the SLURM reading (master from the
    # node list, port from the job id) stays
    srun = {"PMI_RANK": "1", "PMI_SIZE": "2", "SLURM_PROCID": "1", "SLURM_NTASKS": "2",
            "SLURM_STEP_ID": "0", "SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "nodo3",
            "SLURM_LOCALID": "0"}
    env = D.read_env(srun)
    assert (env.launcher, env.rank, env.master_addr) == ("slurm", 1, "nodo3")
    # torchrun under mpirun (one launcher per node): torchrun's ranks
    assert D.read_env({**OPEN_MPI, "RANK": "5", "WORLD_SIZE": "8"}).launcher == "torchrun"


# `salloc -N2 -n2 mpirun -np 2 --map-by ppr:2:node` (and hydra's -ppn 2): both ranks on the
# first node, each also seeing the SLURM variables of the srun that started its node's daemon.
UNDER_SALLOC = [
    {"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "0",
     "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "OMPI_MCA_ess_base_jobid": "1234",
     "SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_STEP_ID": "0", "SLURM_JOB_ID": "431",
     "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_LOCALID": "0"},
    {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
     "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "OMPI_MCA_ess_base_jobid": "1234",
     "SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_STEP_ID": "0", "SLURM_JOB_ID": "431",
     "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_LOCALID": "0"},
]


def test_every_rank_of_mpirun_inside_salloc_meets_at_one_rendezvous():
    # rank 0's SLURM_PROCID and SLURM_NTASKS equal its own rank and size, rank 1's do not: a
    # reading by coincidence sent rank 0 to node1 on the job's port and rank 1 to 127.0.0.1 on
    # another, and the run waited dist.timeout_min (a reviewer's reproduction on the cluster).
    envs = [D.read_env(env) for env in UNDER_SALLOC]
    assert [env.rank for env in envs] == [0, 1]
    assert {(env.launcher, env.master_addr, env.master_port) for env in envs} == \
        {("mpirun", "127.0.0.1", envs[0].master_port)}
    hydra = [{key: value for key, value in env.items() if not key.startswith("OMPI")}
             | {"PMI_RANK": str(rank), "PMI_SIZE": "2", "MPI_LOCALRANKID": str(rank),
                "MPI_LOCALNRANKS": "2", "HYDI_CONTROL_FD": "7"}
             for rank, env in enumerate(UNDER_SALLOC)]
    assert {(D.read_env(env).master_addr, D.read_env(env).master_port) for env in hydra} == \
        {("127.0.0.1", D.DEFAULT_MASTER_PORT)}


@pytest.mark.parametrize("env", [
    {}, OPEN_MPI, HYDRA, *UNDER_SALLOC,
    {"RANK": "0", "WORLD_SIZE": "8", "SLURM_PROCID": "1", "SLURM_NTASKS": "2",
     "SLURM_STEP_ID": "0"},  # srun ... torchrun --rdzv-backend c10d: torch numbers the nodes
    {"RANK": "0", "WORLD_SIZE": "8", **OPEN_MPI},  # torchrun per node under mpirun
    {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "SLURM_PROCID": "1",
     "SLURM_LOCALID": "0", "SLURM_NTASKS": "2", "SLURM_STEP_ID": "0"},  # torchrun under srun
    {"SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NTASKS": "4", "SLURM_STEP_ID": "0",
     "SLURM_JOB_NODELIST": "nodo[1-2]"},  # srun, node 2's second task
    {"PMI_RANK": "1", "PMI_SIZE": "2", "PMI_JOBID": "77.0", "SLURM_PROCID": "1",
     "SLURM_NTASKS": "2", "SLURM_STEP_ID": "0", "SLURM_JOB_NODELIST": "nodo3"},  # srun pmi2
], ids=lambda env: ",".join(sorted(env))[:60] or "alone")
def test_the_notes_rank_is_the_rank_the_process_group_gets(env):
    """The notes said before the process group starts come from launch_env.launched_rank's rank
    0: it must be the process that read_env makes rank 0, or no process says them."""
    assert launched_rank(env) == D.read_env(env).rank
    # and the rank on its node, which says an error met before the process group once a node
    assert launched_ranks(env) == (D.read_env(env).rank, D.read_env(env).local_rank)


@pytest.mark.parametrize("variable", ["OMPI_COMM_WORLD_RANK", "PMI_RANK"])
def test_notes_before_the_process_group_are_said_by_mpi_rank_0_only(monkeypatch, capsys,
                                                                    variable):
    from seq2seq_es.cli import build_config

    argv = ["--task", "mlsum", "--model", "barto-tiny", "--model.attention_window", "8"]
    monkeypatch.setenv("MPI_LOCALNRANKS", "2")  # hydra's, beside PMI_RANK
    # a process group of an earlier test in this worker may have left torchrun's variables
    for name in ("RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        monkeypatch.delenv(name, raising=False)
    for rank, said in (("1", False), ("0", True)):
        monkeypatch.setenv(variable, rank)
        build_config(argv)
        assert ("note: not read by this run" in capsys.readouterr().err) is said


@pytest.mark.slow  # three two-rank runs
def test_mpirun_and_hydra_train_the_same_two_rank_run_as_torchrun(tmp_path):
    files = demo_files(tmp_path / "data", train_size=16)
    losses = {}
    for launcher in ("torchrun", "mpirun", "hydra"):
        out = tmp_path / launcher
        # an LED option on BART: a note every launcher's rank 0 says alone
        proc = run(launcher, 2, base_args(files, out, steps=3,
                                          extra=["--model.attention_window", "8"]), check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stderr.count("note: not read by this run: model.attention_window") == 1
        assert "x 2 rank(s)" in proc.stdout, proc.stdout[-2000:]
        state = json.loads((out / "checkpoints" / "step_00000003" / "trainer_state.json")
                           .read_text())
        assert state["world_size"] == 2
        losses[launcher] = step_losses(out)
    assert len(losses["torchrun"]) == 3
    assert losses["mpirun"] == losses["torchrun"] == losses["hydra"]
