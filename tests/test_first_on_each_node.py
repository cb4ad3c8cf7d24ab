"""Data preparation runs on each node's first rank before the others (`first_on_each_node`):
they then read its caches instead of every rank reading and tokenizing the whole data set at
once (a scale audit measured two ranks each tokenizing 15k rows for 47 s, where one took 23 s,
and racing to write the same cache files). A failure of the first rank stops the others."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from engine_runs import two_gloo_ranks

pytestmark = pytest.mark.slow  # two spawned ranks: every multi-process run is in the slow tier


def _worker(rank: int, port: int, folder: str) -> None:
    import torch.distributed as dist

    from seq2seq_es.engine.distributed import DistEnv, first_on_each_node
    from seq2seq_es.errors import DataError, Seq2SeqEsError

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    env = DistEnv(rank, 2, rank, "127.0.0.1", port, "torchrun")   # one node, two ranks
    times = {}

    def prepare():
        times["start"] = time.time()
        time.sleep(0.5)   # the first rank's long tokenization
        times["end"] = time.time()
        return f"data of rank {rank}"

    seen = {"result": first_on_each_node(env, prepare), **times}

    ran_after_failure = []

    def failing():
        ran_after_failure.append(rank)
        raise DataError("line 7: bad row", file="train.jsonl")

    try:
        first_on_each_node(env, failing)
    except Seq2SeqEsError as exc:
        seen["failure"] = [type(exc).__name__, str(exc), getattr(exc, "said_elsewhere", False)]
    seen["prepared_after_failure"] = ran_after_failure
    Path(folder, f"rank{rank}.json").write_text(json.dumps(seen))
    dist.destroy_process_group()


def test_the_first_rank_prepares_first_and_its_failure_stops_the_others(tmp_path):
    first, other = two_gloo_ranks(_worker, tmp_path)
    assert (first["result"], other["result"]) == ("data of rank 0", "data of rank 1")
    assert other["start"] >= first["end"]          # after the first rank, not beside it
    # the failing rank raises its own error; the other one stops without preparing anything
    assert first["failure"] == ["DataError", "file train.jsonl: line 7: bad row", False]
    assert other["failure"] == ["Seq2SeqEsError", "the data preparation failed on another "
                                "rank, which says why", True]
    assert (first["prepared_after_failure"], other["prepared_after_failure"]) == ([0], [])


# The package's entry, each rank noting when it read its data: rank 0 late, so that a rank 1
# that did not wait for it would start first.
TIMED_ENTRY = """
import json, os, sys, time
from seq2seq_es.engine import builders, trainer

def timed(function):
    def reading(*args, **kwargs):
        rank = os.environ["RANK"]
        if rank == "0":
            time.sleep(2)
        start = time.time()
        result = function(*args, **kwargs)
        with open(os.path.join(os.environ["TIMES"], f"{sys.argv[1]}_{rank}.json"), "w") as f:
            json.dump({"start": start, "end": time.time()}, f)
        return result
    return reading

trainer.Trainer.read_splits = timed(trainer.Trainer.read_splits)
builders.get_split = timed(builders.get_split)
from seq2seq_es.cli import console
console(sys.argv[1:])
"""


def test_train_and_evaluate_read_their_data_on_the_first_rank_first(tmp_path):
    # The engine's own calls: train (Trainer.read_splits) and evaluate (get_split) read the
    # data through first_on_each_node; a mutation that called them directly passed the test
    # of the function alone.
    import subprocess
    import sys

    from engine_runs import REPO, _env, base_args, demo_files, free_port

    files = demo_files(tmp_path / "data", train_size=8)
    entry = tmp_path / "timed.py"
    entry.write_text(TIMED_ENTRY)
    times = tmp_path / "times"
    times.mkdir()
    out = tmp_path / "run"
    env = {**_env(), "PYTHONPATH": str(REPO), "TIMES": str(times)}
    for command in (["train", *base_args(files, out, steps=2)],
                    ["evaluate", str(out), "--split", "validation"]):
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                               "2", "--master_port", str(free_port()), str(entry), *command],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        first, other = (json.loads((times / f"{command[0]}_{rank}.json").read_text())
                        for rank in (0, 1))
        assert other["start"] >= first["end"], (command[0], first, other)
