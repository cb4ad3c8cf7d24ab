"""SLURM resources of a run, and the submitit executor and sbatch script built from them.

The same parameter dict feeds `make_executor` (what gets submitted) and `render_sbatch` (what
`--dry-run` prints), so the printed script is the submitted one. `render_sbatch` uses submitit's
own script writer and needs no SLURM installation.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..config import check_folder
from ..errors import ConfigError, did_you_mean

# SLURM signals the job this many seconds before its time limit; the engine then needs time to
# reach a step boundary and save a checkpoint collectively. SLURM may send it up to a minute early.
DEFAULT_SIGNAL_DELAY_S = 120
# How much earlier than `--signal=USR2@delay` asks SLURM may send the signal ("due to the
# resolution of event handling by Slurm, the signal may be sent up to 60 seconds earlier than
# specified", sbatch --signal).
SLURM_SIGNAL_SLACK_S = 60

# sbatch options the tool renders itself (sbatch_parameters, and submitit's script writer: job
# name, time, nodes, tasks, signal, output, error, open-mode, array), by their sbatch name: what
# sets each one instead. An extra_sbatch entry of the same name is written after them and wins,
# while the manifest, `status` and the requeue logic go on by the tool's value (`--sbatch time=30`
# ran a 30-minute job recorded as 10; `signal=USR1@60` killed it without the checkpoint the USR2
# handler saves), so such entries are refused. wckey, also submitit's, is left to the user.
OWNED_SBATCH_OPTIONS: dict[str, str] = {
    "time": "--time (slurm.time_min)",
    "signal": "--signal-delay-s (slurm.signal_delay_s): the job must get SIGUSR2, whose handler "
              "saves a checkpoint before the job requeues; another signal ends it without one",
    "nodes": "--nodes (slurm.nodes)",
    "ntasks-per-node": "--gpus-per-node (one task per GPU) or, on CPUs, --tasks-per-node "
                       "(slurm.gpus_per_node, slurm.tasks_per_node)",
    "ntasks": "--nodes with --gpus-per-node or --tasks-per-node: the world size is made of them",
    "gpus-per-node": "--gpus-per-node (slurm.gpus_per_node)",
    "cpus-per-task": "--cpus-per-task (slurm.cpus_per_task)",
    "mem": "--mem-gb (slurm.mem_gb)",
    "partition": "--partition (slurm.partition)",
    "account": "--account (slurm.account)",
    "qos": "--qos (slurm.qos)",
    "constraint": "--constraint (slurm.constraint)",
    "job-name": "--job-name (slurm.job_name)",
    "output": "slurm.folder: every rank's log goes there, where `status` and the run's logs/ "
              "links find it",
    "error": "slurm.folder: every rank's log goes there, where `status` and the run's logs/ "
             "links find it",
    "open-mode": "seq2seq-es itself (append): a requeued start must add to the earlier starts' "
                 "logs, not replace them",
    "array": "seq2seq-es itself: a sweep is one job array of its runs; --max-parallel sets how "
             "many run at once",
    "requeue": "seq2seq-es itself: the job requeues itself after a pre-emption or its time limit; "
               "--max-requeues (slurm.max_requeues) bounds how often",
    "no-requeue": "seq2seq-es itself: the job requeues itself after a pre-emption or its time "
                  "limit; --max-requeues (slurm.max_requeues) bounds how often",
    "parsable": "submitit, which reads sbatch's usual answer for the job id (with --parsable "
                "the job was submitted but reported as refused)",
}
# sbatch's one-letter options by their long names. submitit writes every option as `--KEY`, and
# `#SBATCH --H` or `--d=afterok:1` is no option sbatch knows (`--d` is ambiguous), so a one-letter
# key must be given by its long name.
SBATCH_LONG_NAMES: dict[str, str] = {
    "a": "array", "A": "account", "b": "begin", "B": "extra-node-info", "c": "cpus-per-task",
    "C": "constraint", "d": "dependency", "D": "chdir", "e": "error", "F": "nodefile",
    "G": "gpus", "h": "help", "H": "hold", "i": "input", "J": "job-name", "k": "no-kill",
    "L": "licenses", "m": "distribution", "M": "clusters", "n": "ntasks", "N": "nodes",
    "o": "output", "O": "overcommit", "p": "partition", "q": "qos", "Q": "quiet",
    "s": "oversubscribe", "S": "core-spec", "t": "time", "v": "verbose", "V": "version",
    "w": "nodelist", "W": "wait", "x": "exclude",
}


# Other spellings of those options: sbatch's one-letter forms, and submitit's parameter names
# (`timeout_min`, `mem_gb`, ...; its AutoExecutor's `slurm_` prefix is dropped before this look-up).
_SBATCH_ALIASES: dict[str, str] = {
    **SBATCH_LONG_NAMES, "timeout-min": "time", "signal-delay-s": "signal",
    "tasks-per-node": "ntasks-per-node", "num-gpus": "gpus-per-node", "mem-gb": "mem",
    "name": "job-name", "array-parallelism": "array",
}


# sbatch's options that take no value (or an optional one), given bare: `--sbatch exclusive`
# renders `#SBATCH --exclusive`. Any other option needs OPTION=VALUE: a bare word was rendered as
# `#SBATCH --WORD`, which sbatch refuses (an unknown option) or reads without the value it needs.
# requeue, no-requeue and parsable are flags too, refused as the tool's own (OWNED_SBATCH_OPTIONS).
SBATCH_FLAG_OPTIONS: frozenset[str] = frozenset({
    "contiguous", "exclusive", "get-user-env", "hold", "ignore-pbs", "nice", "no-kill",
    "overcommit", "oversubscribe", "propagate", "quiet", "reboot", "spread-job",
    "use-min-nodes", "verbose",
})
# Flags that stop sbatch from submitting the script as a job submitit can follow: sbatch then
# prints something else than the job id submitit reads, or waits for the whole job.
NOT_SUBMITTING_SBATCH_FLAGS: dict[str, str] = {
    "test-only": "sbatch then only estimates when the job would start and submits nothing",
    "wait": "sbatch then waits until the job has ended, and so would the submission",
    "help": "sbatch then prints its help and submits nothing",
    "usage": "sbatch then prints its usage and submits nothing",
    "version": "sbatch then prints its version and submits nothing",
}
def sbatch_key_message(key: str) -> str | None:
    """Why the extra sbatch option `key` (dashes stripped) cannot be written as submitit writes
    it, else None: a one-letter form (`--KEY` is no sbatch option) or a flag that keeps sbatch
    from submitting the job (NOT_SUBMITTING_SBATCH_FLAGS)."""
    if len(key) == 1:
        long = SBATCH_LONG_NAMES.get(key)
        return (f"{key} is a one-letter form, which the script cannot hold (submitit writes "
                f"every option as --OPTION); give its long name"
                + (f", {long}" if long else " (sbatch --help lists them)"))
    flag = key.replace("_", "-")
    if flag in NOT_SUBMITTING_SBATCH_FLAGS:
        return f"{key} cannot be given: {NOT_SUBMITTING_SBATCH_FLAGS[flag]}"
    return None


def owned_sbatch_option(key: str) -> str | None:
    """What sets the sbatch option `key` when the tool renders it itself (OWNED_SBATCH_OPTIONS),
    else None. Spelled as --sbatch takes it: leading dashes, underscores for dashes, a one-letter
    form or submitit's name all name the same option (`_as_sbatch_flag` writes `mem_gb` as
    `--mem-gb`, and sbatch reads `--time=30` and `time=30` alike)."""
    name = key.strip().lstrip("-")
    if len(name) > 1:  # one-letter options are case-sensitive (-N nodes, -n ntasks)
        name = name.replace("_", "-").lower()
        if name.startswith("slurm-"):
            name = name[len("slurm-"):]
    name = _SBATCH_ALIASES.get(name, name)
    return OWNED_SBATCH_OPTIONS.get(name)


def owned_sbatch_message(key: str) -> str | None:
    """The refusal of an extra sbatch option the tool sets itself, else None."""
    setter = owned_sbatch_option(key)
    if setter is None:
        return None
    if setter.startswith("seq2seq-es itself"):
        return f"{key} is set by {setter}"
    option, _, why = setter.partition(": ")
    return f"{key} is set by {option}; use that" + (f" ({why})" if why else "")


def sbatch_spelling(key: str) -> str:
    """An extra_sbatch key as sbatch spells the option: hyphens, and a long name lowercase (a
    one-letter form keeps its case: -H is hold, -h help)."""
    key = key.strip().lstrip("-")
    return (key.lower() if len(key) > 1 else key).replace("_", "-")


def one_spelling_each(extra_sbatch: Mapping[str, Any]) -> None:
    """Refuse two keys of extra_sbatch that are one sbatch option (mail_type and mail-type):
    one would silently replace the other."""
    spelt_as: dict[str, str] = {}
    for key in extra_sbatch:
        spelling = sbatch_spelling(str(key))
        if spelling in spelt_as:
            raise ConfigError(f"slurm.extra_sbatch.{key}",
                              f"is the sbatch option {spelling}, which '{spelt_as[spelling]}' "
                              "sets too: keep one")
        spelt_as[spelling] = str(key)


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
                                                       # (a sweep's: <sweep_dir>/slurm)

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

    def check_for_submission(self) -> None:
        """What must hold before this config is rendered or submitted, beyond validate(): no
        extra sbatch option that the tool sets itself, a signal delay that leaves time to train,
        and a submitit folder this machine can create.

        Not part of validate(), which also runs when `status` reads the SLURM settings of a
        manifest written before these checks existed: a job that never trained for one of these
        reasons must still get its status.
        """
        for key in self.extra_sbatch:
            refusal = owned_sbatch_message(key) or sbatch_key_message(key)
            if refusal:
                raise ConfigError(f"slurm.extra_sbatch.{key}", refusal)
        self._check_signal_delay()
        if self.folder is not None:
            check_submitit_folder(self.folder)

    def _check_signal_delay(self) -> None:
        """The signal must come after the job has started, even when SLURM sends it its
        SLURM_SIGNAL_SLACK_S early: a window within that slack may be signalled as the job
        starts (`--time 1 --signal-delay-s 30`: the warning came at start-up, every start was
        requeued at once and the job never trained). Only that is refused: a short debug job
        with the default delay (`--time 5`: 3 minutes to train per start) is the user's call."""
        limit_s = self.time_min * 60
        delay = self.signal_delay_s
        if delay >= limit_s:
            raise ConfigError("slurm.signal_delay_s",
                              f"{delay} s (--signal-delay-s) is not shorter than the time limit "
                              f"of {self.time_min} min = {limit_s} s (slurm.time_min, --time): "
                              "the job would be told to stop as it starts and never train")
        if delay + SLURM_SIGNAL_SLACK_S >= limit_s:
            most_delay = limit_s - SLURM_SIGNAL_SLACK_S - 1
            least_time = math.ceil((delay + SLURM_SIGNAL_SLACK_S + 1) / 60)
            fix = (f"--signal-delay-s {most_delay} or less, or " if most_delay >= 0 else "") + \
                f"--time {least_time} or more"
            raise ConfigError("slurm.signal_delay_s",
                              f"{delay} s (--signal-delay-s) leaves too little of the time limit "
                              f"of {self.time_min} min (slurm.time_min, --time) to train: SLURM "
                              f"may send the signal up to {SLURM_SIGNAL_SLACK_S} s early, so "
                              f"delay + {SLURM_SIGNAL_SLACK_S} s must be shorter than the limit; "
                              "use " + fix)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, source: str = "slurm") -> "SlurmConfig":
        """Builds a config from a mapping (a YAML section), refusing unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in known:  # `time: 30` for time_min: the near miss first
                raise ConfigError(f"{source}.{key}",
                                  f"unknown key; {did_you_mean(str(key), known)}"
                                  f"known keys: {', '.join(sorted(known))}")
        return cls(**dict(values))

    def replace(self, **changes: Any) -> "SlurmConfig":
        return dataclasses.replace(self, **changes)


def _require_int(value: Any, key: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(key, f"expected an integer >= {minimum}, got {value!r}")


def check_submitit_folder(folder: str | Path, key: str = "slurm.folder") -> None:
    """Refuses a submitit folder that cannot be made on this machine, without making it (a dry
    run writes nothing): a path that is a file or lies under one, or whose nearest existing
    folder is not writable. make_executor still creates it and names `key` if that fails (the
    writability asked here is os.access's, which root passes almost everywhere)."""
    check_folder(key, str(folder))  # a file, or a path under one
    path = Path(folder).expanduser().absolute()  # as submitit's executor takes it
    place = next(place for place in (path, *path.parents) if place.exists())  # a folder now
    if not os.access(place, os.W_OK | os.X_OK):
        where = f"{folder} is not writable" if place == path else \
            f"{place} is not writable, so {folder} cannot be created there"
        raise ConfigError(key, f"{where}; give another path")


def create_submitit_folder(folder: str | Path, key: str = "slurm.folder") -> Path:
    """Makes the submitit folder (where submit writes its pickles and the ranks their logs) before
    anything is submitted, naming `key` instead of failing deep inside submitit's submit."""
    check_submitit_folder(folder, key)
    path = Path(folder).expanduser().absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(key, f"cannot create the folder {folder}: {exc.strerror or exc}; give "
                          "another path") from None
    return path


def load_slurm_yaml(path: str | Path) -> dict[str, Any]:
    """The `slurm:` section of a YAML file (or the whole file when it has no such section).
    A run config's sections (train:, model:, ...) are refused, beside a `slurm:` section or
    without one: nothing reads them there, and a run config given here was reported as unknown
    SlurmConfig keys (`slurm.train`), which did not say which file the key belongs in."""
    from ..config import SECTIONS, read_yaml  # a key set twice is refused, as in run files

    path = Path(path)
    loaded = read_yaml(path, flag="--slurm-config")
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError("--slurm-config", f"file {path} must hold a mapping")
    run_sections = [str(key) for key in loaded if str(key) in SECTIONS]
    if run_sections:
        named = ", ".join(f"{key}:" for key in run_sections)
        if "slurm" not in loaded:
            raise ConfigError("--slurm-config", f"file {path} has no slurm: section and looks "
                              f"like a run config ({named}); pass it to the run after -- as "
                              f"`-- --config {path}`, and SLURM settings as flags or in a file "
                              "with a slurm: section")
        # `train` refuses a file with a slurm: section, so such a file serves one purpose only.
        raise ConfigError("--slurm-config", f"file {path} has run config sections ({named}) "
                          "beside its slurm: section, which nothing would read: put them in a "
                          f"run config file of their own, given after -- as `--config FILE`")
    section = loaded.get("slurm", loaded)
    if not isinstance(section, dict):
        raise ConfigError("slurm", f"file {path}: the slurm section must be a mapping")
    return section


def sbatch_parameters(config: SlurmConfig, *, array_parallelism: int | None = None) -> dict[str, Any]:
    """submitit SlurmExecutor parameters (sbatch names) for this config.

    Checks the config for submission first: both the script `--dry-run` prints and the one
    submitted are made from these parameters, whichever command built the config (submit, sweep,
    bench or resume).
    """
    config.check_for_submission()
    params: dict[str, Any] = {
        "job_name": config.job_name,
        "time": config.time_min,
        "nodes": config.nodes,
        "ntasks_per_node": config.ntasks_per_node,
        "signal_delay_s": config.signal_delay_s,
        # The job requeues itself after a pre-emption; --requeue allows it even where the cluster's
        # JobRequeue default is 0.
        # As sbatch spells them: a file's Mail_Type rendered `--Mail-Type`, which sbatch does
        # not know. Two spellings of one option are refused where a file is read
        # (one_spelling_each); errors before this name the key as the user wrote it.
        "additional_parameters": {"requeue": True, **{
            sbatch_spelling(key): value for key, value in config.extra_sbatch.items()}},
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
    """A submitit SlurmExecutor that writes its pickles and every rank's logs under `folder`.

    The folder is made here: submitit would make it only while submitting, and an unusable path
    (under a file, in a read-only place) then ended in a traceback.
    """
    import submitit

    params = sbatch_parameters(config, array_parallelism=array_parallelism)
    create_submitit_folder(folder)
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=config.max_requeues,
                                      python=python_command(config))
    executor.update_parameters(**params)
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
