"""Everything about processes, ranks and collectives lives here.

Rank, world size, local rank and the master address are read in one place, from whichever
launcher started us: torchrun, `deepspeed`, and `accelerate launch` export RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR / MASTER_PORT; a bare `srun` exports only SLURM_* variables; no launcher
means one process. On CPUs the process group is gloo, on GPUs nccl.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import os
import re
import subprocess
import warnings
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.distributed as dist

from ..errors import ConfigError, Seq2SeqEsError, write_line
from ..process_exit import started_process_group
from .rendezvous import any_free_port, rendezvous_port


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # none | torchrun | mpirun | slurm

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % max(torch.cuda.device_count(), 1))
        return torch.device("cpu")


def first_host_of(nodelist: str) -> str:
    """The first host of a SLURM hostlist, as `scontrol show hostnames` would list it first:
    'node[01-03,07]' -> 'node01', 'gpu-a[12-13]' -> 'gpu-a12', 'n[001-002]-ib' -> 'n001-ib',
    'a[1-2]b[3-4]' -> 'a1b3', 'x1,y[2-3]' -> 'x1'. Every rank must agree on it without asking
    anyone: a wrong name makes the rendezvous wait for its whole timeout."""
    host = []
    for part in re.split(r"(\[[^\]]*\])", nodelist.strip()):
        if part.startswith("["):  # a range group: its first value, zero padding kept
            host.append(re.split(r"[,-]", part[1:-1], maxsplit=1)[0])
            continue
        head, comma, _ = part.partition(",")
        host.append(head)
        if comma:  # the first host ends at a comma outside brackets
            break
    return "".join(host)


def _first_slurm_host(nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True,
                             capture_output=True, text=True, timeout=30).stdout.split()
        return out[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return first_host_of(nodelist)


_said: set[str] = set()


def _say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        write_line(f"warning: {message}")  # every rank may say it: one write, no interleaving


# What torchrun and deepspeed default MASTER_PORT to: an mpirun of Intel MPI or MPICH exports no
# job id every rank shares to hash a port from (Open MPI does: OMPI_MCA_ess_base_jobid).
DEFAULT_MASTER_PORT = 29500


def read_env(environ: dict[str, str] | None = None) -> DistEnv:
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                       env.get("MASTER_ADDR", "127.0.0.1"),
                       int(env.get("MASTER_PORT", DEFAULT_MASTER_PORT)), "torchrun")
    started_by_mpirun = _mpirun_ranks(env)
    if started_by_mpirun is not None:
        return started_by_mpirun
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        if "SLURM_STEP_ID" not in env:
            # The batch script itself (sbatch --ntasks N sets SLURM_PROCID=0 there too): only
            # srun starts the other tasks, so waiting for them would hang until the timeout.
            _say_once(f"SLURM allocated {env['SLURM_NTASKS']} tasks, but this process was not "
                      "started by srun: it trains alone (start it with srun, or `seq2seq-es "
                      "slurm submit`, to use them all)")
            return DistEnv(0, 1, 0, "127.0.0.1", any_free_port(), "none")
        return DistEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]),
                       int(env.get("SLURM_LOCALID", 0)),
                       env.get("MASTER_ADDR") or _first_slurm_host(env.get("SLURM_JOB_NODELIST", "")),
                       int(env.get("MASTER_PORT") or rendezvous_port(env.get("SLURM_JOB_ID", "0"))),
                       "slurm")
    if _accelerate_started_one_of_several(env):
        _say_once("accelerate launch was asked for more than one process (num_processes or "
                  "num_machines above 1) but started only this one, without ranks: with "
                  "distributed_type MULTI_CPU or NO (or no config file on a machine without "
                  "GPUs) accelerate leaves starting the others to mpirun, and no mpirun "
                  "started this one, so it trains alone. For N ranks on one "
                  "node use `accelerate launch --multi_gpu --num_processes N` or a config with "
                  "distributed_type DEEPSPEED (configs/accelerate/zero*.yaml; both run on CPUs "
                  "too), or `torchrun --nproc_per_node N`")
    return DistEnv(0, 1, 0, "127.0.0.1", any_free_port(), "none")


def _mpirun_ranks(env: Mapping[str, str]) -> DistEnv | None:
    """The ranks of an `mpirun -np N seq2seq-es train` (Open MPI's OMPI_COMM_WORLD_*, or
    PMI_RANK/PMI_SIZE of MPICH's and Intel MPI's hydra), None for anything else. Each process
    trained alone before, and all but one stopped at the run folder's lock.

    Decided from what every rank of one launch has alike, never from a coincidence of numbers:
    inside a SLURM allocation mpirun starts its per-node daemons with srun, so each rank also
    sees SLURM_PROCID/SLURM_NTASKS of its daemon, equal to its own rank on some ranks and not on
    others. srun never exports OMPI_COMM_WORLD_*; its PMI (--mpi=pmi2) exports PMI_RANK but not
    hydra's MPI_LOCALNRANKS, and is read from SLURM_* (read_env). launch_env.launched_rank reads
    the same order.

    torch's rendezvous still needs a host and a port every rank knows: MASTER_ADDR, else this
    node where every rank is on it, else the first node of a SLURM allocation (mpirun places
    rank 0 there); MASTER_PORT, else a hash of Open MPI's job id, else 29500."""
    if "OMPI_COMM_WORLD_RANK" in env and "OMPI_COMM_WORLD_SIZE" in env:
        prefix = "OMPI_COMM_WORLD_"
        rank, size = int(env[prefix + "RANK"]), int(env[prefix + "SIZE"])
        local_rank = int(env.get(prefix + "LOCAL_RANK", 0))
        local_size = int(env.get(prefix + "LOCAL_SIZE", size))
        job = env.get("OMPI_MCA_ess_base_jobid") or env.get("PMIX_NAMESPACE")
    elif "PMI_RANK" in env and "PMI_SIZE" in env and "MPI_LOCALNRANKS" in env:
        rank, size = int(env["PMI_RANK"]), int(env["PMI_SIZE"])
        local_rank = int(env.get("MPI_LOCALRANKID", 0))
        local_size = int(env["MPI_LOCALNRANKS"])
        job = None
    else:
        return None
    if size < 2:
        return None
    addr = env.get("MASTER_ADDR")
    if not addr:
        if local_size == size:
            addr = "127.0.0.1"
        elif env.get("SLURM_JOB_NODELIST"):
            addr = _first_slurm_host(env["SLURM_JOB_NODELIST"])
        else:
            raise Seq2SeqEsError(f"MASTER_ADDR is not set, and mpirun started {size} ranks on "
                                 "several nodes outside a SLURM allocation: nothing else names "
                                 "rank 0's host. Export MASTER_ADDR=HOST and pass it on (Open "
                                 "MPI's mpirun -x MASTER_ADDR, hydra's -genv MASTER_ADDR HOST)")
    port = env.get("MASTER_PORT") or (rendezvous_port(f"mpirun-{job}") if job
                                      else DEFAULT_MASTER_PORT)
    return DistEnv(rank, size, local_rank, addr, int(port), "mpirun")


def _accelerate_started_one_of_several(env: Mapping[str, str]) -> bool:
    """Whether `accelerate launch` asked for several processes and started this one alone.

    Its simple launcher (accelerate.utils.launch.prepare_simple_launcher_cmd_env), which it uses
    for distributed_type MULTI_CPU and NO and, without a config file, wherever it sees fewer than
    two GPUs, starts ONE process and exports ACCELERATE_USE_CPU; it adds MASTER_ADDR and
    MASTER_PORT only when num_processes or num_machines is above 1, expecting the other ranks
    from mpirun (accelerate's own PartialState then reads PMI_*/OMPI_* ranks; without mpirun it
    too trains one process without a word). Its torchrun-based launchers (--multi_gpu,
    DEEPSPEED) export RANK and WORLD_SIZE, read before this. A run that trained on one rank
    where the user asked for two said nothing but `x 1 rank(s)` in its batch line."""
    return "ACCELERATE_USE_CPU" in env and "MASTER_ADDR" in env and "MASTER_PORT" in env


# Fields of an accelerate config file that `accelerate launch` acts on itself: where and how many
# processes start. They reach the run only as RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
# MASTER_PORT (read_env), or as CUDA_VISIBLE_DEVICES (gpu_ids).
ACCELERATE_LAUNCHER_FIELDS = (
    "compute_environment", "distributed_type", "num_machines", "num_processes", "machine_rank",
    "main_process_ip", "main_process_port", "rdzv_backend", "same_network", "gpu_ids",
    "main_training_function", "debug", "tpu_env", "tpu_use_cluster", "tpu_use_sudo",
    "deepspeed_config.deepspeed_hostfile", "deepspeed_config.deepspeed_multinode_launcher",
    "deepspeed_config.deepspeed_inclusion_filter", "deepspeed_config.deepspeed_exclusion_filter",
)

# deepspeed_config fields that launcher_overrides maps or refuses (accelerate lists the ones a
# config file sets in ACCELERATE_CONFIG_DS_FIELDS; any other is refused by name). The NVMe paths
# only act with an NVMe offload device, which is refused.
ACCELERATE_DEEPSPEED_FIELDS = (
    "zero_stage", "gradient_accumulation_steps", "gradient_clipping", "offload_optimizer_device",
    "offload_param_device", "zero3_init_flag", "zero3_save_16bit_model", "deepspeed_config_file",
    "deepspeed_moe_layer_cls_names", "offload_optimizer_nvme_path", "offload_param_nvme_path",
    "mixed_precision", "deepspeed_hostfile", "deepspeed_multinode_launcher",
    "deepspeed_inclusion_filter", "deepspeed_exclusion_filter",
)


class AccelerateConfigError(ConfigError):
    """accelerate config settings seq2seq-es cannot honour; `fields` names each one."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.fields = [field for field, _ in problems]
        super().__init__("accelerate config",
                         "; ".join(f"{field} {why}" for field, why in problems))


def _true(value: str) -> bool:
    return value.strip().lower() in ("true", "1", "yes")


def launcher_overrides(environ: Mapping[str, str] | None = None,
                       cuda: bool | None = None) -> dict[str, str]:
    """Config keys from the environment `accelerate launch` exports for its config file.

    Every setting accelerate exports is either mapped to a config key or refused, all refusals
    in one AccelerateConfigError naming each accelerate field and what to use instead:

      mixed_precision           no: nothing (train.precision auto: bf16 on GPUs that have it,
                                else fp16; fp32 on CPUs); bf16, fp16: train.precision; fp8: refused
      zero_stage                dist.zero_stage
      gradient_accumulation_steps  train.grad_accum
      gradient_clipping         optim.max_grad_norm
      offload_optimizer_device  none: dist.offload_optimizer false; cpu: true; nvme: refused
      offload_param_device      none: nothing; cpu, nvme: refused (no ZeRO-Infinity)
      zero3_init_flag           false: nothing; true: refused (the model is built whole on each
                                rank and partitioned by deepspeed.initialize)
      zero3_save_16bit_model    false: nothing (final/ is fp32, train.export_dtype's default);
                                true: train.export_dtype = the run's 16-bit dtype (bf16, fp16)
                                when mixed_precision names one (with 'no' accelerate saves fp32 too)
      deepspeed_config_file     dist.deepspeed_config (merged over the generated config)
      deepspeed_moe_layer_cls_names, distributed_type FSDP / MEGATRON_LM, parallelism_config,
      enable_cpu_affinity, SageMaker: refused
      use_cpu                   true: honoured where no GPU is visible, refused where one is
      dynamo_config             backend NO: nothing; INDUCTOR (mode default, no fullgraph,
                                dynamic or regional compilation): model.compile true; else refused
    The process layout (ACCELERATE_LAUNCHER_FIELDS) is accelerate's own business. The result
    sits above YAML and below explicit command-line keys in the config precedence; a refusal
    stands whatever the command line says.
    """
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    problems: list[tuple[str, str]] = []

    def refuse(field: str, variable: str, why: str, shown: str | None = None) -> None:
        # `shown`: the setting as the config file says it, where accelerate exports it as a
        # flag ('FSDP' for ACCELERATE_USE_FSDP=true, which read "'true' is not supported").
        value = shown if shown is not None else env[variable]
        problems.append((field, f"{value!r} ({variable}) is not supported: {why}"))

    def number(field: str, variable: str, key: str, kind) -> None:
        if variable not in env:
            return
        try:
            kind(env[variable])
        except ValueError:
            what = "an integer" if kind is int else "a number"
            problems.append((field, f"{env[variable]!r} ({variable}) is not {what}"))
            return
        out[key] = env[variable]

    ds = "deepspeed_config."
    listed = [name for name in env.get("ACCELERATE_CONFIG_DS_FIELDS", "").split(",") if name]
    for name in listed:
        if name not in ACCELERATE_DEEPSPEED_FIELDS:
            problems.append((ds + name, "is not read by seq2seq-es (nor exported by accelerate "
                             "launch); remove it, or set the DeepSpeed value in a JSON file "
                             "given as deepspeed_config_file or --dist.deepspeed_config"))

    precision = env.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if precision in ("bf16", "fp16"):
        out["train.precision"] = precision
    elif precision != "no":
        refuse("mixed_precision", "ACCELERATE_MIXED_PRECISION",
               "seq2seq-es trains in bf16, fp16 or fp32 (train.precision); use mixed_precision "
               "bf16, fp16 or 'no' (bf16 on GPUs that have it)")
    number(ds + "zero_stage", "ACCELERATE_DEEPSPEED_ZERO_STAGE", "dist.zero_stage", int)
    number(ds + "gradient_accumulation_steps", "ACCELERATE_GRADIENT_ACCUMULATION_STEPS",
           "train.grad_accum", int)
    number(ds + "gradient_clipping", "ACCELERATE_GRADIENT_CLIPPING", "optim.max_grad_norm", float)

    variable = "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"
    if variable in env:
        device = env[variable].lower()
        if device in ("none", "cpu"):
            out["dist.offload_optimizer"] = "true" if device == "cpu" else "false"
        else:
            refuse(ds + "offload_optimizer_device", variable,
                   "the optimizer state is offloaded to the CPU only (ZeRO-Offload); use cpu or "
                   "none")
    variable = "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"
    if variable in env and env[variable].lower() != "none":
        refuse(ds + "offload_param_device", variable,
               "ZeRO-Infinity parameter offload is not implemented; use none "
               "(offload_optimizer_device: cpu offloads the optimizer state, the largest part)")
    variable = "ACCELERATE_DEEPSPEED_ZERO3_INIT"
    if _true(env.get(variable, "false")):
        refuse(ds + "zero3_init_flag", variable,
               "the model is loaded whole on each rank and partitioned by deepspeed.initialize "
               "(no deepspeed.zero.Init); use false")
    if _true(env.get("ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL", "false")) \
            and precision in ("bf16", "fp16"):
        out["train.export_dtype"] = precision
    if env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"):
        out["dist.deepspeed_config"] = env["ACCELERATE_DEEPSPEED_CONFIG_FILE"]
    if env.get("ACCELERATE_DEEPSPEED_MOE_LAYER_CLS_NAMES"):
        refuse(ds + "deepspeed_moe_layer_cls_names", "ACCELERATE_DEEPSPEED_MOE_LAYER_CLS_NAMES",
               "no model of seq2seq-es has mixture-of-experts layers; remove it")

    for variable, field, shown, why in (
            ("ACCELERATE_USE_FSDP", "distributed_type", "FSDP",
             "seq2seq-es shards with DeepSpeed ZeRO; use distributed_type DEEPSPEED with "
             "deepspeed_config.zero_stage 3 (configs/accelerate/zero3.yaml)"),
            ("ACCELERATE_USE_MEGATRON_LM", "distributed_type", "MEGATRON_LM",
             "seq2seq-es trains with DeepSpeed; use distributed_type DEEPSPEED"),
            ("ACCELERATE_USE_PARALLELISM_CONFIG", "parallelism_config", None,
             "tensor, context and sequence parallelism are not implemented; remove it"),
            ("ACCELERATE_USE_SAGEMAKER", "compute_environment", "AMAZON_SAGEMAKER",
             "seq2seq-es runs under LOCAL_MACHINE (or SLURM: seq2seq-es slurm)"),
            ("ACCELERATE_CPU_AFFINITY", "enable_cpu_affinity", None,
             "seq2seq-es does not pin processes to cores; use numactl or SLURM's --cpu-bind")):
        if variable in env and _true(env[variable]):
            refuse(field, variable, why, shown)
    if _true(env.get("ACCELERATE_USE_CPU", "false")):
        if torch.cuda.is_available() if cuda is None else cuda:
            refuse("use_cpu", "ACCELERATE_USE_CPU",
                   "seq2seq-es trains on the GPUs it sees; hide them with CUDA_VISIBLE_DEVICES= "
                   "to train on CPUs")

    backend = env.get("ACCELERATE_DYNAMO_BACKEND", "NO").upper()
    if backend == "INDUCTOR":
        out["model.compile"] = "true"
        for variable, field, default in (
                ("ACCELERATE_DYNAMO_MODE", "dynamo_config.dynamo_mode", "default"),
                ("ACCELERATE_DYNAMO_USE_FULLGRAPH", "dynamo_config.dynamo_use_fullgraph", "false"),
                ("ACCELERATE_DYNAMO_USE_DYNAMIC", "dynamo_config.dynamo_use_dynamic", "false"),
                ("ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION",
                 "dynamo_config.dynamo_use_regional_compilation", "false")):
            if env.get(variable, default).lower() != default:
                refuse(field, variable, f"model.compile compiles with torch.compile's defaults; "
                       f"use {default}")
    elif backend != "NO":
        refuse("dynamo_config.dynamo_backend", "ACCELERATE_DYNAMO_BACKEND",
               "model.compile compiles with inductor; use INDUCTOR or NO")
    if problems:
        raise AccelerateConfigError(problems)
    return out


# What init writes into os.environ, and close puts back (DS_ACCELERATOR: on CPUs only).
_LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                     "DS_ACCELERATOR")
# The launch variables as they were before `init` wrote them; `close` puts them back.
_environ_before_init: dict[str, str | None] | None = None


def name_cpu_accelerator() -> None:
    """On a machine without CUDA, tell DeepSpeed its accelerator is the CPU (DS_ACCELERATOR),
    instead of its warning at import that it 'was unable to detect' a GPU."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


# DeepSpeed's shared-memory collectives for CPUs, compiled by torch on a machine's first CPU run
# into its extension cache (TORCH_EXTENSIONS_DIR), under a lock file that every later start
# takes a moment and that torch waits on for ever when a killed process left it.
CPU_EXTENSION = "deepspeed_shm_comm"
STALE_LOCK_S = 600  # a build takes a few minutes on 2 cores; an older lock is likely left over


def cpu_extension_note(now: float | None = None) -> str | None:
    """What to say before DeepSpeed starts on CPUs: that it compiles its extension (a silent
    stall of minutes at a first run), or that an old lock file will keep it waiting."""
    folder = _cpu_extension_folder()
    lock = os.path.join(folder, "lock")
    age = _age_s(lock, now)
    if age is not None and age > STALE_LOCK_S:
        return (f"note: DeepSpeed waits for the lock {lock} ({age / 60:.0f} min old) before "
                f"building or loading its CPU extension; if no other process is building it (a "
                "run killed while building leaves the lock), delete that file")
    if not os.path.exists(os.path.join(folder, f"{CPU_EXTENSION}.so")):
        return (f"building DeepSpeed's CPU communication extension into {folder} (once per "
                "machine and torch version; a few minutes on 2 cores)")
    return None


def _cpu_extension_folder() -> str:
    from torch.utils.cpp_extension import _get_build_directory

    return _get_build_directory(CPU_EXTENSION, verbose=False)


def _age_s(path: str, now: float | None = None) -> float | None:
    """Seconds since `path` was last modified; None where it does not exist."""
    import time

    try:
        return (time.time() if now is None else now) - os.stat(path).st_mtime
    except OSError:
        return None


def _extension_lock_note(waited_s: float) -> str | None:
    """What a start waiting on DeepSpeed's CPU extension lock says (None where there is no lock
    or the machine has GPUs). torch's lock is a file that one process creates while it builds
    and the others wait on for ever; a run killed while building leaves it. A lock younger
    than STALE_LOCK_S at the start said nothing, and the rendezvous note blamed the ranks."""
    if torch.cuda.is_available():
        return None
    lock = os.path.join(_cpu_extension_folder(), "lock")
    age = _age_s(lock)
    if age is None:
        return None
    # This very process may be the one building (a first run): no advice to delete a young lock
    return (f"note: waiting {waited_s:.0f} s so far for DeepSpeed's CPU extension: its lock "
            f"{lock} ({age / 60:.0f} min old) says it is being built, by this run or another "
            "(a few minutes on 2 cores); a lock over "
            f"{STALE_LOCK_S // 60} minutes old while no build runs was left by a run killed "
            "while building: delete that file then")


class PortInUse(Seq2SeqEsError):
    """The rendezvous port (MASTER_PORT) is taken on this host: one line naming it and the
    launcher options that choose another (cli: `error: ...`, exit status 2)."""

    def __init__(self, env: DistEnv):
        self.port = env.master_port
        try:
            other = f" (e.g. {any_free_port()}, free now)"
        except RuntimeError:
            other = ""
        super().__init__(
            f"rank {env.rank} cannot serve the rendezvous on port {env.master_port} "
            "(MASTER_PORT): "
            "another process on this host listens there (29500 is the default of torchrun, "
            "deepspeed and accelerate launch, so often another run). Give the launcher another "
            f"port{other}: torchrun --master_port P, deepspeed --master_port P, accelerate launch "
            "--main_process_port P (or export MASTER_PORT=P; mpirun -x MASTER_PORT, hydra "
            "-genv MASTER_PORT P)")


class CpuExtensionUnbuilt(Seq2SeqEsError):
    """DeepSpeed's CPU extension could not be compiled (no C++ compiler, no Python headers): one
    line naming what the compiler said and what to install. It was a 67-line traceback of torch's
    ninja call, and a fresh machine's first run (the demo's too) ended there."""

    def __init__(self, build_output: str, folder: str):
        compiler = (f"CXX={os.environ['CXX']}" if os.environ.get("CXX")
                    else "c++, or the one CXX names")
        super().__init__(
            f"DeepSpeed's CPU communication extension ({CPU_EXTENSION}) could not be built in "
            f"{folder}: {build_failure_line(build_output)}. Training on CPUs compiles it once "
            f"per machine and torch version, with a C++ compiler ({compiler}) and Python's "
            "headers: install them (Debian/Ubuntu: apt-get install g++ "
            "python3-dev; Fedora/RHEL: dnf install gcc-c++ python3-devel; on a cluster, module "
            "load a compiler) and run again")


# What a compiler or the shell says first where a build fails: the line that names the cause.
_BUILD_FAILURE_MARKS = ("not found", "fatal error", "No such file", "error:", "cannot find",
                        "Permission denied")


def build_failure_line(build_output: str) -> str:
    """The line of a failed extension build (torch's 'Error building extension' message, which
    holds ninja's output) that says why, shortened; the message's first line without one."""
    lines = [line.strip() for line in build_output.splitlines() if line.strip()]
    # "[1/3] c++ -MMD ...": ninja's echo of the command, which holds no cause
    said = next((line for mark in _BUILD_FAILURE_MARKS for line in lines
                 if mark in line and not line.startswith("[")), lines[0] if lines else "no output")
    return said if len(said) <= 300 else said[:297] + "..."


class MasterAddrUnknown(Seq2SeqEsError):
    """MASTER_ADDR names no host this machine can resolve."""

    def __init__(self, env: DistEnv, why: str):
        super().__init__(
            f"rank {env.rank} cannot resolve the rendezvous host {env.master_addr!r} "
            f"(MASTER_ADDR: {why}); every rank would wait dist.timeout_min minutes for it. On "
            "one node leave it unset or give 127.0.0.1: torchrun/deepspeed --master_addr, "
            "accelerate launch --main_process_ip (or export MASTER_ADDR)")


def _check_master_addr(env: DistEnv, tries: int = 3, wait_s: float = 1.0) -> None:
    """Refuse a MASTER_ADDR that does not resolve (a typo, a node name from another cluster):
    torch's TCPStore retried it on every rank, rank 0 included (its own client connects to it),
    printing a warning every few seconds, for the whole rendezvous timeout (30 min by default).
    A few tries, for a resolver that fails for a moment."""
    import socket
    import time

    for attempt in range(tries):
        try:
            socket.getaddrinfo(env.master_addr, env.master_port, type=socket.SOCK_STREAM)
            return
        except socket.gaierror as exc:
            if exc.errno not in (socket.EAI_AGAIN, socket.EAI_NONAME, socket.EAI_FAIL) \
                    or attempt == tries - 1:
                raise MasterAddrUnknown(env, exc.strerror or str(exc)) from None
        time.sleep(wait_s)


def init(env: DistEnv, backend: str = "auto", timeout_min: int = 30) -> None:
    """Start the process group (also for one process: DeepSpeed needs one)."""
    global _environ_before_init
    if backend == "nccl" and not torch.cuda.is_available():
        # Checked here, not when the config is composed: a login node without GPUs composes
        # (and submits) runs for GPU nodes. (torch's own error was a traceback.)
        from ..errors import ConfigError
        raise ConfigError("dist.backend", "nccl needs CUDA GPUs and this process sees none; "
                                          "use gloo, or auto (nccl on GPUs, gloo otherwise)")
    if dist.is_initialized():
        return
    _check_master_addr(env)  # before anything is written or started: nothing to put back
    # Its worker threads outlive destroy_process_group: this process must skip finalization.
    started_process_group()
    _environ_before_init = {key: os.environ.get(key) for key in _LAUNCH_VARIABLES}
    # DeepSpeed's engine selects cuda:LOCAL_RANK itself: give it the device this rank uses, which
    # is the local rank where every node GPU is visible, and 0 where a cluster shows each task
    # only its own GPU (--gpu-bind, per-task GRES).
    device_index = env.device.index if env.device.type == "cuda" else env.local_rank
    os.environ.update({"RANK": str(env.rank), "WORLD_SIZE": str(env.world_size),
                       "LOCAL_RANK": str(device_index), "MASTER_ADDR": env.master_addr,
                       "MASTER_PORT": str(env.master_port)})
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(env.device)
    else:
        name_cpu_accelerator()  # close() takes it back: child processes
        note = cpu_extension_note() if env.local_rank == 0 else None
        if note:
            print(note, flush=True)
    import deepspeed

    # On CPUs DeepSpeed prints "... deepspeed_shm_comm_op built successfully" on every start of
    # every rank (loaded from its cache or not); anything else it prints is passed on.
    waiting = _waiting_note(env, timeout_min)
    with contextlib.redirect_stdout(io.StringIO()) as said, waiting:
        try:
            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False,
                                       timeout=datetime.timedelta(minutes=timeout_min),
                                       rank=env.rank, world_size=env.world_size)
        except dist.DistNetworkError as exc:
            if "EADDRINUSE" not in str(exc):
                raise
            # Rank 0 serves the rendezvous on MASTER_PORT. `deepspeed` and accelerate's one-process
            # launcher default it to 29500, as torchrun does, so a second run on one machine
            # met another run's port: a 30-line TCPStore traceback per start, after every rank
            # had loaded its libraries, that named no launcher option.
            close()  # the launch variables back, for a caller that goes on (a test, a notebook)
            raise PortInUse(env) from None
        except RuntimeError as exc:
            if f"Error building extension '{CPU_EXTENSION}'" not in str(exc):
                raise
            close()
            raise CpuExtensionUnbuilt(str(exc), _cpu_extension_folder()) from None
    for line in said.getvalue().splitlines():
        if not line.endswith("built successfully"):
            print(line)
    # Deprecations inside DeepSpeed's ZeRO collectives: nothing a user could act on.
    for name in ("all_gather_into_tensor", "reduce_scatter_tensor"):
        warnings.filterwarnings("ignore", message=f"`torch.distributed.{name}` is deprecated",
                                category=FutureWarning)


# How long a rank waits for the others in silence before it says what it waits for.
WAIT_NOTE_S = 60.0


@contextlib.contextmanager
def _waiting_note(env: DistEnv, timeout_min: int, after_s: float | None = None):
    """A line on stderr (once per node) when the start has not completed after WAIT_NOTE_S:
    on CPUs, DeepSpeed's extension lock where one is there (`_extension_lock_note`); else the
    rendezvous: a launch variable left in the shell (RANK=0 WORLD_SIZE=2 from an earlier
    torchrun) waited for a rank that never comes, silently, until dist.timeout_min."""
    import threading

    if env.local_rank != 0:
        yield
        return
    after_s = WAIT_NOTE_S if after_s is None else after_s
    where = {"torchrun": "RANK and WORLD_SIZE in the environment", "mpirun": "mpirun's ranks",
             "slurm": "srun's tasks"}.get(env.launcher, env.launcher)
    unlaunched = env.launcher == "torchrun" and "TORCHELASTIC_RUN_ID" not in os.environ
    message = (f"waiting {after_s:.0f} s so far for the other ranks: this is rank {env.rank} of "
               f"{env.world_size} ({where}), meeting at {env.master_addr}:{env.master_port}; "
               f"the wait ends at dist.timeout_min ({timeout_min} min)"
               + ("; if no launcher started this process, they were left in the shell: "
                  "unset RANK and WORLD_SIZE to train alone" if unlaunched else ""))

    def say() -> None:
        note = _extension_lock_note(after_s)
        if note or env.world_size > 1:
            write_line(note or f"note: {message}")

    timer = threading.Timer(after_s, say)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def close() -> None:
    """End the process group and put the launch variables back as they were before `init`: a
    second run in the same process (a notebook, a test worker) must not take the variables the
    first one wrote for a launcher's, and rendezvous on its port, which another process may hold
    by then (a test worker waited there for a peer that never came)."""
    global _environ_before_init
    if dist.is_initialized():
        dist.destroy_process_group()
    if _environ_before_init is not None:
        for key, value in _environ_before_init.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _environ_before_init = None


def _alone() -> bool:
    """One process: a reduction over ranks is the value itself."""
    return not (dist.is_initialized() and dist.get_world_size() > 1)


def all_reduce_sum(values: list[float] | torch.Tensor, device: torch.device) -> list[float]:
    """Sum over ranks, in float64; a tensor stays on its device until the one read-back. Host
    values of one process never go to the device (a copy there and back waits for the GPU)."""
    if isinstance(values, torch.Tensor):
        t = values.to(device=device, dtype=torch.float64)
    elif _alone():
        return [float(value) for value in values]
    else:
        t = torch.tensor(values, dtype=torch.float64, device=device)
    if not _alone():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_max(value: float | list[float], device: torch.device) -> float | list[float]:
    """Maximum over ranks of one value, or of each value of a list in one collective. One
    process returns the host values as they are: the trainer asks every step (the stop signal,
    the save clock), and a device round trip made the host wait for the step's kernels to end,
    leaving the GPU idle while the next batch was read and collated (host-overhead audit)."""
    values = value if isinstance(value, list) else [value]
    result = [float(v) for v in values] if _alone() else PendingMax(values, device).read()
    return result if isinstance(value, list) else result[0]


class PendingMax:
    """The maximum over ranks of each of `values`, begun now and read later (`read`).
    Collective: every rank begins one at the same point.

    On a GPU nothing here waits for the device: the values go up from pinned memory and the
    result comes back into pinned memory without blocking, queued behind the kernels already
    launched, and `read` waits for that copy's event only, not for kernels queued after it.
    (A plain `torch.tensor(values, device=cuda)` copies from pageable memory and synchronises;
    `.tolist()` on the device tensor would wait for everything queued since.)"""

    def __init__(self, values: list[float], device: torch.device):
        host = torch.tensor(values, dtype=torch.float64)
        self.event = None
        if device.type != "cuda":
            dist.all_reduce(host, op=dist.ReduceOp.MAX)   # gloo: done when it returns
            self.host = host
            return
        on_device = host.pin_memory().to(device, non_blocking=True)
        dist.all_reduce(on_device, op=dist.ReduceOp.MAX)
        self.host = torch.empty_like(host).pin_memory()
        self.host.copy_(on_device, non_blocking=True)
        self.event = torch.cuda.Event()
        self.event.record()

    def read(self) -> list[float]:
        if self.event is not None:
            self.event.synchronize()
        return self.host.tolist()


def gather_objects(obj, world_size: int) -> list:
    if world_size == 1:
        return [obj]
    out = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def decided_by_main(env, decide):
    """`decide()` on rank 0 only, its result there (None on the other ranks); an error of the
    package's it raises (a ConfigError, a DataError naming a damaged file) is raised on every
    rank (one broadcast), so no rank waits in a later collective for a rank 0 that has stopped.
    For what only rank 0 can or should check or hold, or what every rank would find alike (a
    folder or checkpoint refusal printed once, not once per rank)."""
    result, refusal, raised = None, None, None
    if env.is_main:
        try:
            result = decide()
        except ConfigError as exc:
            refusal, raised = ("config", exc.key, exc.reason), exc
        except Seq2SeqEsError as exc:
            refusal, raised = ("other", str(exc)), exc
        except Exception as exc:  # noqa: BLE001 (any failure: the others must not wait for it)
            refusal, raised = ("other", f"rank 0 failed: {type(exc).__name__}: {exc}"), exc
    if env.world_size > 1:
        refusal = broadcast_object(refusal)
    if raised is not None:
        raise raised
    if refusal is not None:
        error = ConfigError(*refusal[1:]) if refusal[0] == "config" else \
            Seq2SeqEsError(refusal[1])
        # Rank 0 says it; the others' copies only stop them (N ranks printed N equal lines)
        error.said_elsewhere = True
        raise error
    return result


def on_every_rank(env, action, elsewhere: str):
    """`action()` on every rank, its result; a failure on any rank stops every rank together:
    the failing rank raises its own error, the others one saying `elsewhere` (said_elsewhere:
    the failing rank prints). Without it, a rank whose own file failed left the others to go on
    (rank 0 said "resumed from ..." for a resume that did not happen) until a later collective
    broke. Collective."""
    result, failure = None, None
    try:
        result = action()
    except Exception as exc:  # noqa: BLE001 (any failure: the others must not go on)
        failure = exc
    failed = all_reduce_max(float(failure is not None), env.device)  # one process: its own
    if failure is not None:
        raise failure
    if failed:
        error = Seq2SeqEsError(elsewhere)
        error.said_elsewhere = True
        raise error
    return result


def first_on_each_node(env, prepare):
    """`prepare()` on each node's first rank (local rank 0), then on the node's other ranks,
    which read the caches it filled (hub downloads, cleaned local files, tokenized splits):
    every rank reading and tokenizing the whole data set at once took N ranks N times the CPU
    and memory, and raced to write the same cache files. The other ranks wait in a collective,
    so dist.timeout_min bounds the first rank's preparation (as the Trainer's ddp_timeout does).

    A failure of a first rank is raised there, and every other rank stops with a short error
    that the failing rank says (said_elsewhere), rather than waiting in a later collective."""
    if env.world_size == 1 or not dist.is_initialized():
        return prepare()
    first = env.local_rank == 0
    result = on_every_rank(env, prepare if first else (lambda: None),
                           "the data preparation failed on another rank, which says why")
    return result if first else prepare()


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
