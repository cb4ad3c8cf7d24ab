"""The documented SLURM probe entry, `seq2seq_es.slurm.probe:main`: the program itself lives in
seq2seq_es.bench.probe (a cluster check, measuring code rather than job submission)."""

from ..bench.probe import main

__all__ = ["main"]
