"""The rank a launcher gave this process, read from its environment before any process group
exists: the notes said once before the process group starts (config) and an error said once
per node (errors.run_command) read it.

Imports nothing of the package (a bottom layer: errors imports it).
"""

from __future__ import annotations

import os
from typing import Mapping


def launched_rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's rank as its launcher set it, before any process group exists, read in
    the order engine.distributed.read_env reads it (a test keeps the two equal): torchrun,
    deepspeed and accelerate (RANK with WORLD_SIZE), Open MPI's mpirun (OMPI_COMM_WORLD_RANK),
    MPICH's and Intel MPI's hydra (PMI_RANK with MPI_LOCALNRANKS, which srun's PMI does not
    export), srun (SLURM_PROCID); 0 for a process started alone. A launcher nested in another
    (torchrun per node under srun or mpirun) numbers the ranks itself: the first one wins."""
    return launched_ranks(environ)[0]


def launched_ranks(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(rank, rank on this node) as the launcher set them, read as `launched_rank` reads."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env.get("LOCAL_RANK", 0))
    if "OMPI_COMM_WORLD_RANK" in env:
        return int(env["OMPI_COMM_WORLD_RANK"]), int(env.get("OMPI_COMM_WORLD_LOCAL_RANK", 0))
    if "PMI_RANK" in env and "MPI_LOCALNRANKS" in env:
        return int(env["PMI_RANK"]), int(env.get("MPI_LOCALRANKID", 0))
    return int(env.get("SLURM_PROCID", 0)), int(env.get("SLURM_LOCALID", 0))


def first_launched_process() -> bool:
    """Whether this process is rank 0 of whatever launched it (or was launched alone): where a
    note said before the process group starts is said once, not once per rank."""
    return launched_rank() == 0
