"""SLURM resources of a run, and the submitit executor and sbatch script built from them.

The same parameter dict feeds `make_executor` (what gets submitted) and `render_sbatch` (what
`--dry-run` prints), so the printed script is the submitted one. `render_sbatch` uses submitit's
own script writer and needs no SLURM installation.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError

# SLURM signals the job this many seconds before its time limit; the engine then needs time to
# reach a step boundary and save a checkpoint collectively. SLURM may send it up to a minute early.
DEFAULT_SIGNAL_DELAY_S = 120


@dataclass
class SlurmConfig:
    """Resources and scheduling options of one SLURM job (one training run).

    gpus_per_node = 0 means CPU training with `tasks_per_node` processes per node (default 1);
    with GPUs, one task per GPU and tasks_per_node must equal gpus_per_node.
    """

    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    time_min: int = 60
    mem_gb: float | None = None
    cpus_per_task: int | None = None
    max_requeues: int = 3
    signal_delay_s: int = DEFAULT_SIGNAL_DELAY_S
    job_name: str = "seq2seq-es"
    setup: list[str] = field(default_factory=list)    # shell lines run before srun (module load ...)
    python: str | None = None                          # interpreter on the nodes; default: this one
    extra_sbatch: dict[str, Any] = field(default_factory=dict)
    folder: str | None = None                          # submitit folder; default <run_dir>/slurm

    def __post_init__(self) -> None:
        self.validate()

    @property
    def ntasks_per_node(self) -> int:
        if self.tasks_per_node is not None:
            return self.tasks_per_node
        return self.gpus_per_node if self.gpus_per_node > 0 else 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.ntasks_per_node

    def validate(self) -> None:
        _require_int(self.nodes, "slurm.nodes", minimum=1)
        _require_int(self.gpus_per_node, "slurm.gpus_per_node", minimum=0)
        if self.tasks_per_node is not None:
            _require_int(self.tasks_per_node, "slurm.tasks_per_node", minimum=1)
            if self.gpus_per_node > 0 and self.tasks_per_node != self.gpus_per_node:
                raise ConfigError("slurm.tasks_per_node",
                                  f"{self.tasks_per_node} differs from gpus_per_node "
                                  f"{self.gpus_per_node}: runs use one task per GPU")
        _require_int(self.time_min, "slurm.time_min", minimum=1)
        _require_int(self.max_requeues, "slurm.max_requeues", minimum=0)
        _require_int(self.signal_delay_s, "slurm.signal_delay_s", minimum=0)
        if self.cpus_per_task is not None:
            _require_int(self.cpus_per_task, "slurm.cpus_per_task", minimum=1)
        if self.mem_gb is not None and (isinstance(self.mem_gb, bool)
                                        or not isinstance(self.mem_gb, (int, float))
                                        or self.mem_gb <= 0):
            raise ConfigError("slurm.mem_gb", f"expected a positive number of GB, got {self.mem_gb!r}")
        for key in ("partition", "account", "qos", "constraint", "python"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"slurm.{key}", f"expected a non-empty string, got {value!r}")
        if not isinstance(self.job_name, str) or not self.job_name:
            raise ConfigError("slurm.job_name", f"expected a non-empty string, got {self.job_name!r}")
        if not isinstance(self.setup, list) or not all(isinstance(x, str) for x in self.setup):
            raise ConfigError("slurm.setup", "expected a list of shell lines")
        if not isinstance(self.extra_sbatch, dict):
            raise ConfigError("slurm.extra_sbatch", "expected a mapping of sbatch option -> value")
        for key in self.extra_sbatch:
            if not isinstance(key, str) or not key or key.startswith("-"):
                raise ConfigError(f"slurm.extra_sbatch.{key}",
                                  "option names are written without leading dashes, e.g. mail-user")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, source: str = "slurm") -> "SlurmConfig":
        """Builds a config from a mapping (a YAML section), refusing unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError(f"{source}.{key}",
                                  f"unknown key; known keys: {', '.join(sorted(known))}")
        return cls(**dict(values))

    def replace(self, **changes: Any) -> "SlurmConfig":
        return dataclasses.replace(self, **changes)


def _require_int(value: Any, key: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(key, f"expected an integer >= {minimum}, got {value!r}")


def load_slurm_yaml(path: str | Path) -> dict[str, Any]:
    """The `slurm:` section of a YAML file (or the whole file when it has no such section)."""
    from ..config import read_yaml  # a key set twice is refused, as in run files

    path = Path(path)
    loaded = read_yaml(path, flag="--slurm-config")
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError("--slurm-config", f"file {path} must hold a mapping")
    section = loaded.get("slurm", loaded)
    if not isinstance(section, dict):
        raise ConfigError("slurm", f"file {path}: the slurm section must be a mapping")
    return section


def sbatch_parameters(config: SlurmConfig, *, array_parallelism: int | None = None) -> dict[str, Any]:
    """submitit SlurmExecutor parameters (sbatch names) for this config."""
    params: dict[str, Any] = {
        "job_name": config.job_name,
        "time": config.time_min,
        "nodes": config.nodes,
        "ntasks_per_node": config.ntasks_per_node,
        "signal_delay_s": config.signal_delay_s,
        # The job requeues itself after a pre-emption; --requeue allows it even where the cluster's
        # JobRequeue default is 0.
        "additional_parameters": {"requeue": True, **config.extra_sbatch},
        # A rank that dies ends the step at once instead of leaving the others blocked in a
        # collective until the process-group timeout.
        "srun_args": ["--kill-on-bad-exit=1"],
    }
    optional = {"partition": config.partition, "account": config.account, "qos": config.qos,
                "constraint": config.constraint, "cpus_per_task": config.cpus_per_task}
    params.update({key: value for key, value in optional.items() if value is not None})
    if config.gpus_per_node > 0:
        params["gpus_per_node"] = config.gpus_per_node
    if config.mem_gb is not None:
        params["mem"] = _mem_string(config.mem_gb)
    if config.setup:
        params["setup"] = list(config.setup)
    if array_parallelism is not None:
        params["array_parallelism"] = array_parallelism
    return params


def _mem_string(mem_gb: float) -> str:
    if float(mem_gb).is_integer():
        return f"{int(mem_gb)}GB"
    return f"{int(mem_gb * 1024)}MB"


def python_command(config: SlurmConfig) -> str:
    """The interpreter command of every task, started with SIGUSR2 blocked where `env` can do it.

    SLURM checks time limits on a 30-second tick, so a `--signal=USR2@delay` can arrive the moment
    a job (or its requeued restart) starts, before Python has installed any handler; SIGUSR2's
    default action then kills the task and the job ends FAILED instead of requeueing. Blocked, the
    signal stays pending through exec until TrainJob unblocks it, by which time submitit's handler
    is in place. GNU env has --block-signal since coreutils 8.31; where it lacks it, the plain
    command is used and the start-up window stays open. Which of the two is decided by the batch
    script's shell on the job's first node, whose coreutils are the compute nodes' (a login node
    often runs a newer OS: asked there, `env --block-signal` failed every task of a job on
    nodes with an older coreutils).
    """
    python = config.python if config.python else shlex.quote(sys.executable)
    return f"$(env --block-signal=USR2 true 2>/dev/null && echo env --block-signal=USR2) {python}"


def make_executor(config: SlurmConfig, folder: str | Path, *,
                  array_parallelism: int | None = None):
    """A submitit SlurmExecutor that writes its pickles and every rank's logs under `folder`."""
    import submitit

    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=config.max_requeues,
                                      python=python_command(config))
    executor.update_parameters(**sbatch_parameters(config, array_parallelism=array_parallelism))
    return executor


def render_sbatch(config: SlurmConfig, folder: str | Path, *, array_size: int | None = None,
                  array_parallelism: int | None = None) -> str:
    """The sbatch script submitit would submit for this config, without submitting anything."""
    from submitit.slurm.slurm import _make_sbatch_string

    folder = Path(folder).expanduser().absolute()
    command = " ".join([python_command(config), "-u -m submitit.core._submit",
                        shlex.quote(str(folder))])
    params = sbatch_parameters(config, array_parallelism=array_parallelism)
    if array_size is not None:
        params["map_count"] = array_size
    return _make_sbatch_string(command=command, folder=folder, **params)
