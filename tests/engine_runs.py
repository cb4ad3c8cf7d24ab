"""Launch real training runs (no launcher, torchrun, deepspeed, accelerate) and read them back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from seq2seq_es import metrics_log
from seq2seq_es.demo.synthetic import write_demo_dataset

REPO = Path(__file__).resolve().parent.parent
ENTRY = str(REPO / "launch" / "train.py")


def demo_files(folder: Path, train_size: int = 48) -> dict[str, str]:
    return write_demo_dataset(folder, train_size=train_size, validation_size=5, seed=11)


def base_args(files: dict[str, str], out: Path, *, model: str = "barto-tiny", steps: int = 6,
              batch: int = 2, extra: list[str] | None = None) -> list[str]:
    return ["--task", "mlsum", "--model", model, "--train.output_dir", str(out),
            "--data.train_file", files["train"], "--data.validation_file", files["validation"],
            "--train.max_steps", str(steps), "--train.batch_size", str(batch),
            "--train.log_every", "1", "--train.precision", "fp32", "--optim.lr", "1e-3",
            "--optim.warmup_steps", "1", "--optim.weight_decay", "0.01",
            "--data.max_source_length", "96", "--data.max_target_length", "64",
            "--gen.num_beams", "1", "--gen.max_new_tokens", "6", "--gen.min_new_tokens", "0",
            "--train.progress_bar", "false",
            # Most runs compare losses and weights only; the tests that read evaluation turn it on.
            "--train.eval_at_end", "false"] + (extra or [])


# What D.init writes into os.environ (D._LAUNCH_VARIABLES; DS_ACCELERATOR=cpu on CPUs): an
# in-process run of this worker that did not close leaves them, and a child must not inherit them.
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                      "DS_ACCELERATOR")


def subprocess_env(**extra: str) -> dict[str, str]:
    """This environment for a child process, without the torchrun variables: an in-process
    engine test of the same pytest worker sets them (D.init), and a child would then take itself
    for rank 0 of that group and try to serve its rendezvous on a port this process holds."""
    env = {key: value for key, value in os.environ.items() if key not in LAUNCHER_VARIABLES}
    env.update(extra)
    return env


def _env(tmp_cache: Path | None = None) -> dict[str, str]:
    return subprocess_env(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                          PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")


def command(launcher: str, nproc: int, args: list[str], port: int = 0) -> list[str]:
    if launcher == "none":
        return [sys.executable, ENTRY, *args]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                "--master_port", str(port or free_port()), ENTRY, *args]
    if launcher == "deepspeed":
        return [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(nproc),
                "--master_port", str(port or free_port()), ENTRY, *args]
    if launcher.startswith("accelerate:"):
        config = REPO / "configs" / "accelerate" / launcher.split(":", 1)[1]
        return [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
                str(config), "--num_processes", str(nproc), "--main_process_port",
                str(port or free_port()), ENTRY, *args]
    if launcher == "mpirun":  # Open MPI's; root needs the flag (CI runs as root)
        return ["mpirun.openmpi", "--allow-run-as-root", "--oversubscribe", "-np", str(nproc),
                "-x", "MASTER_PORT=" + str(port or free_port()), sys.executable, ENTRY, *args]
    if launcher == "hydra":  # MPICH's mpiexec (Intel MPI's is hydra too)
        return ["mpiexec.hydra", "-np", str(nproc), "-genv", "MASTER_PORT",
                str(port or free_port()), sys.executable, ENTRY, *args]
    raise ValueError(launcher)


def free_port() -> int:
    from seq2seq_es.engine.rendezvous import any_free_port
    return any_free_port()


def two_gloo_ranks(worker, folder) -> tuple:
    """Run `worker(rank, port, folder)` on two spawned processes; what each wrote to
    folder/rank<r>.json, as (rank 0's, rank 1's)."""
    import json

    torch.multiprocessing.spawn(worker, args=(free_port(), str(folder)), nprocs=2)
    return tuple(json.loads((Path(folder) / f"rank{rank}.json").read_text()) for rank in (0, 1))


def run(launcher: str, nproc: int, args: list[str], *, check: bool = True,
        timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(command(launcher, nproc, args), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"run failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-8000:]}")
    return proc


class _OutputSoFar:
    """A started run's output, in a file rather than a pipe: the tests read it once the run has
    ended (or been killed), and a run logging a line a step filled a pipe's 64 KiB first and
    blocked on its next write for ever. `read()` gives everything written so far."""

    def __init__(self, file):
        self.file = file

    def read(self) -> str:
        self.file.seek(0)
        return self.file.read()


def start(launcher: str, nproc: int, args: list[str],
          extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    output = tempfile.TemporaryFile(mode="w+", encoding="utf-8")
    proc = subprocess.Popen(command(launcher, nproc, args), cwd=REPO,
                            env={**_env(), **(extra_env or {})},
                            stdout=output, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    proc.stdout = _OutputSoFar(output)
    return proc


def kill_group(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    """Kill the launcher and every process below it.

    torchrun starts its workers in sessions of their own, so killing the launcher's process
    group would leave the workers training on as orphans.
    """
    import psutil

    try:
        parent = psutil.Process(proc.pid)
        victims = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        victims = []
    for victim in victims:
        try:
            victim.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=60)
    proc.wait(timeout=60)


def wait_for(predicate, timeout: float = 300, interval: float = 0.05) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError("timed out waiting")


def step_losses(out: Path) -> dict[int, float]:
    """The logged training loss per step, the last one where a resumed run logged a step twice
    (a half-written last line, the run still writing, is skipped)."""
    return {step: r["train/loss"] for step, r in metrics_log.by_step(out, "train/loss").items()}


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "final" / "model.safetensors"))


def max_weight_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def tiny_step_engine(files: dict[str, str], env, *, grad_accum: int = 1, on_nan: str = "stop",
                     precision: str = "fp32", dropout: float | None = None, examples: int = 16,
                     total_steps: int = 20, zero_stage: int = 0,
                     weight_decay: float | None = None, attention: str = "hf",
                     model_name: str = "barto-tiny", lean_ce: bool = False):
    """(cfg, a DeepSpeed engine on `model_name` (barto-tiny), four micro-batches of 2 examples of
    the demo data's training split), built in this process: what the step-level tests run."""
    from seq2seq_es.config import RunConfig
    from seq2seq_es.engine.builders import get_collator, get_engine, get_model, get_split
    from seq2seq_es.tasks import get_task

    cfg = RunConfig()
    cfg.model.name, cfg.data.task = model_name, "mlsum"
    cfg.data.train_file = files["train"]
    cfg.data.max_source_length, cfg.data.max_target_length = 64, 32
    cfg.train.on_nan, cfg.train.batch_size, cfg.train.precision = on_nan, 2, precision
    cfg.train.grad_accum, cfg.dist.zero_stage = grad_accum, zero_stage
    cfg.model.attention, cfg.model.lean_ce = attention, lean_ce
    if dropout is not None:
        cfg.model.dropout = dropout
    if weight_decay is not None:
        cfg.optim.weight_decay = weight_decay
    model, tokenizer, spec = get_model(cfg)
    split = get_split(cfg, get_task("mlsum"), tokenizer, model, "train", examples,
                      lambda m: None)
    collate = get_collator(cfg, spec, tokenizer, model)
    batches = [collate([split.tokenized[i] for i in (2 * k, 2 * k + 1)]) for k in range(4)]
    engine, *_ = get_engine(model, cfg, env, total_steps=total_steps)
    return cfg, engine, batches
