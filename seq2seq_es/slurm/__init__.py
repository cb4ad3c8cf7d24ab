"""Training runs and sweeps as SLURM jobs through submitit, safe against pre-emption.

`SlurmConfig` holds a job's resources, `TrainJob` is the callable every task of the job runs,
`seq2seq_es.slurm.cli.main` implements `seq2seq-es slurm submit|sweep|status|resume|collect|bench`.
"""

from .config import SlurmConfig, make_executor, render_sbatch
from .job import EXIT_PREEMPTED, OutOfRequeuesError, TrainJob

__all__ = ["SlurmConfig", "make_executor", "render_sbatch", "TrainJob", "EXIT_PREEMPTED",
           "OutOfRequeuesError"]
