"""Everything about processes, ranks and collectives lives here.

Rank, world size, local rank and the master address are read in one place, from whichever
launcher started us: torchrun, `deepspeed`, and `accelerate launch` export RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR / MASTER_PORT; a bare `srun` exports only SLURM_* variables; no launcher
means one process. On CPUs the process group is gloo, on GPUs nccl.
"""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # none | torchrun | slurm

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % max(torch.cuda.device_count(), 1))
        return torch.device("cpu")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _first_slurm_host(nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True,
                             capture_output=True, text=True, timeout=30).stdout.split()
        return out[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return nodelist.split(",")[0].split("[")[0]


def read_env(environ: dict[str, str] | None = None) -> DistEnv:
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                       env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)),
                       "torchrun")
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        job_id = int(env.get("SLURM_JOB_ID", "0"))
        return DistEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]),
                       int(env.get("SLURM_LOCALID", 0)),
                       env.get("MASTER_ADDR") or _first_slurm_host(env.get("SLURM_JOB_NODELIST", "")),
                       int(env.get("MASTER_PORT", 20000 + job_id % 20000)), "slurm")
    return DistEnv(0, 1, 0, "127.0.0.1", _free_port(), "none")


def launcher_overrides(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Settings that `accelerate launch` passes through its environment (from its config file).

    They sit above YAML and below explicit command-line keys in the config precedence.
    """
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    if "ACCELERATE_DEEPSPEED_ZERO_STAGE" in env:
        out["dist.zero_stage"] = env["ACCELERATE_DEEPSPEED_ZERO_STAGE"]
    # accelerate's "no" means "not set" here: our own "auto" then picks bf16 on GPUs.
    if env.get("ACCELERATE_MIXED_PRECISION") == "bf16":
        out["train.precision"] = "bf16"
    if "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" in env:
        out["train.grad_accum"] = env["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"]
    if "ACCELERATE_GRADIENT_CLIPPING" in env:
        out["optim.max_grad_norm"] = env["ACCELERATE_GRADIENT_CLIPPING"]
    return out


def init(env: DistEnv, backend: str = "auto", timeout_min: int = 30) -> None:
    """Start the process group (also for one process: DeepSpeed needs one)."""
    if dist.is_initialized():
        return
    os.environ.update({"RANK": str(env.rank), "WORLD_SIZE": str(env.world_size),
                       "LOCAL_RANK": str(env.local_rank), "MASTER_ADDR": env.master_addr,
                       "MASTER_PORT": str(env.master_port)})
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(env.device)
    import deepspeed

    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False,
                               timeout=datetime.timedelta(minutes=timeout_min),
                               rank=env.rank, world_size=env.world_size)


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float] | torch.Tensor, device: torch.device) -> list[float]:
    """Sum over ranks, in float64; a tensor stays on its device until the one read-back."""
    if isinstance(values, torch.Tensor):
        t = values.to(device=device, dtype=torch.float64)
    else:
        t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_max(value: float | list[float], device: torch.device) -> float | list[float]:
    """Maximum over ranks of one value, or of each value of a list in one collective."""
    t = torch.tensor(value if isinstance(value, list) else [value], dtype=torch.float64,
                     device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist() if isinstance(value, list) else t.item()


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


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
