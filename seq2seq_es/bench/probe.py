"""A small distributed program that keeps the training engine's pre-emption contract.

It checks a cluster before real training goes on it (`seq2seq-es slurm submit --entry
seq2seq_es.slurm.probe:main ...`; that entry is this module's `main`, re-exported by
seq2seq_es/slurm/probe.py), and the tests of seq2seq_es.slurm run it on the local cluster.
Each step all-reduces a tensor over a gloo group and logs to metrics.jsonl; a stop signal is
agreed on at the next step boundary, the state is saved, and the process exits with status 3
after writing PREEMPTED, as the engine does. It takes the train command line: `train --task T
--model M --train.output_dir DIR [--section.key VALUE ...]`, and reads these keys:

  probe.steps (20)         number of steps
  probe.step_seconds (0)   sleep per step, so that a test can signal it mid-run
  probe.setup_seconds (0)  sleep before the stop handlers are installed, as a model load would
  probe.fail ("")          fail with this message instead of training (a failing worker) ...
  probe.fail_rank (all)    ... on this rank only (the others wait in a collective)
  probe.fail_mode (raise)  raise: raise ConfigError; exit: print `error: <message>` and return 2,
                           as `seq2seq-es train` does
  probe.witness_teardown (false)  print "probe: interpreter finalized" if the interpreter tears
                           this process down (it must not: it leaves as the engine does, see
                           seq2seq_es.process_exit)
  optim.lr, train.batch_size, train.epochs   feed the final `eval/score`, so sweeps have a best point
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from .. import run_files
from ..errors import ConfigError
from ..process_exit import started_process_group

STATE_FILE = "probe_state.json"
STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


def parse_probe_args(argv: list[str]) -> dict[str, str]:
    """['train', '--task', 'T', '--a.b', 'v', '--c.d=w'] -> {'task': 'T', 'a.b': 'v', 'c.d': 'w'}."""
    args = argv[1:] if argv and argv[0] == "train" else list(argv)
    values: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(arg, "expected an option such as --probe.steps 10")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(arg[2:], "missing value")
            key, value = arg[2:], args[i + 1]
            i += 2
        values[key] = value
    return values


def final_score(options: dict[str, str]) -> float:
    """A number that depends on the grid point, so that collect has a best point to mark."""
    lr = float(options.get("optim.lr", "0"))
    batch = float(options.get("train.batch_size", "0"))
    epochs = float(options.get("train.epochs", "0"))
    return round(lr * 1e5 * 10 + batch + epochs / 10, 6)


class _StopFlag:
    def __init__(self) -> None:
        self.signum = 0

    def handle(self, signum: int, frame: Any) -> None:
        self.signum = signum


def main(argv: list[str]) -> int:
    options = parse_probe_args(argv)
    output_dir = Path(options.get("train.output_dir", "runs/probe"))
    steps = int(options.get("probe.steps", "20"))
    step_seconds = float(options.get("probe.step_seconds", "0"))

    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    started_process_group()  # the process leaves as the engine's does
    if options.get("probe.witness_teardown", "false") == "true":
        _TEARDOWN_WITNESS.append(_TeardownWitness())
    rank, world = dist.get_rank(), dist.get_world_size()
    if options.get("probe.fail"):
        failure = _fail(options, rank)
        if failure is not None:
            return failure
        dist.barrier()  # a healthy rank waits here for the one that fails
    time.sleep(float(options.get("probe.setup_seconds", "0")))
    flag = _StopFlag()
    previous = {sig: signal.signal(sig, flag.handle) for sig in STOP_SIGNALS}
    try:
        return _loop(output_dir, steps, step_seconds, options, rank, world, flag, torch, dist)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        dist.destroy_process_group()


class _TeardownWitness:
    """Held by a module global, so deleted only when the interpreter finalizes."""

    def __del__(self) -> None:
        print("probe: interpreter finalized", file=sys.stderr, flush=True)


_TEARDOWN_WITNESS: list[_TeardownWitness] = []


def _fail(options: dict[str, str], rank: int) -> int | None:
    fail_rank = options.get("probe.fail_rank")
    if fail_rank is not None and int(fail_rank) != rank:
        return None
    message = options["probe.fail"]
    if options.get("probe.fail_mode", "raise") == "exit":
        print(f"error: {message}", file=sys.stderr, flush=True)
        return 2
    raise ConfigError("probe.fail", message)


def _loop(output_dir: Path, steps: int, step_seconds: float, options: dict[str, str], rank: int,
          world: int, flag: _StopFlag, torch: Any, dist: Any) -> int:
    state_path = output_dir / STATE_FILE
    state = {"step": 0, "total": 0.0}
    if state_path.is_file():
        state = json.loads(state_path.read_text())
    if rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / run_files.PREEMPTED).unlink(missing_ok=True)
    metrics = (output_dir / run_files.METRICS).open("a", encoding="utf-8") if rank == 0 else None
    nodes: list[Any] = [None] * world
    dist.all_gather_object(nodes, os.environ.get("SLURMD_NODENAME", ""))
    try:
        while state["step"] < steps:
            contribution = torch.tensor([float(rank + 1)])
            dist.all_reduce(contribution)
            state["step"] += 1
            state["total"] += contribution.item() * state["step"]
            time.sleep(step_seconds)
            if metrics is not None:
                record = {"step": state["step"], "train/loss": round(1.0 / state["step"], 6),
                          "world_size": world, "allreduce": contribution.item(), "nodes": nodes,
                          "restart": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
                          "threads": torch.get_num_threads()}
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
            stop = torch.tensor([float(flag.signum)])
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)
            if stop.item() and state["step"] < steps:
                _save(state_path, state, rank, dist)
                if rank == 0:
                    (output_dir / run_files.PREEMPTED).write_text(json.dumps(
                        {"step": state["step"], "signal": signal.Signals(int(stop.item())).name}))
                return run_files.PREEMPTED_EXIT_CODE
        final = {"eval/score": final_score(options), "eval/total": state["total"]}
        if metrics is not None:
            metrics.write(json.dumps({"step": state["step"], **final}) + "\n")
        _save(state_path, state, rank, dist)
        if rank == 0:
            (output_dir / run_files.DONE).write_text(json.dumps({"step": state["step"], **final}))
        return 0
    finally:
        if metrics is not None:
            metrics.close()


def _save(state_path: Path, state: dict, rank: int, dist: Any) -> None:
    """Every rank holds the same state; rank 0 writes it, the barrier makes the save collective."""
    if rank == 0:
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(state_path)
    dist.barrier()
