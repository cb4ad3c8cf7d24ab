"""A process that started a process group leaves through process_exit.leave: the exit handlers
run, the output is flushed, the status is the one a normal exit gives, and the interpreter does
not finalize (where the process groups' worker threads, which DeepSpeed keeps alive past
destroy_process_group, can abort a finished run). Each case runs in a child process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from engine_runs import REPO, subprocess_env

CHILD = textwrap.dedent("""
    import atexit, sys
    import seq2seq_es.cli as cli
    from seq2seq_es.engine import distributed as D

    class Finalized:
        def __del__(self):
            print("finalized", flush=True)

    KEEP = Finalized()  # a module global: deleted only when the interpreter finalizes
    atexit.register(lambda: print("exit handlers ran", flush=True))

    def probe(argv):
        group, outcome = argv
        if group == "group":
            D.init(D.read_env({}), "gloo")
            D.close()  # as Trainer.close: the groups' threads live on
        print("no newline at the end", end="")
        if outcome == "raise":
            raise RuntimeError("the probe failed")
        if outcome == "exit-message":
            sys.exit("a message instead of a status")
        if outcome == "pool":  # a live thread pool (inductor keeps one) must not hang the exit
            from concurrent.futures import ThreadPoolExecutor
            POOLS.append(ThreadPoolExecutor(2))
            POOLS[0].submit(print, "pool ran")
            return 0
        return int(outcome)

    POOLS = []

    cli.COMMANDS["probe"] = probe
    cli.console(["probe", *sys.argv[1:]])
""")


def plain_env() -> dict[str, str]:
    """The environment of a user's shell: stdout block-buffered (no PYTHONUNBUFFERED)."""
    env = subprocess_env()
    env.pop("PYTHONUNBUFFERED", None)
    return env


def run_child(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, *args], cwd=REPO, env=plain_env(),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("outcome, status", [("0", 0), ("3", 3), ("raise", 1),
                                             ("exit-message", 1), ("pool", 0)])
def test_a_process_with_a_process_group_leaves_without_finalizing(outcome, status):
    proc = run_child("group", outcome)
    assert proc.returncode == status, proc.stderr
    assert "no newline at the end" in proc.stdout  # flushed before os._exit
    assert "exit handlers ran" in proc.stdout
    assert "finalized" not in proc.stdout, "the interpreter finalized"
    if outcome == "raise":
        assert "RuntimeError: the probe failed" in proc.stderr
    if outcome == "exit-message":
        assert "a message instead of a status" in proc.stderr


def test_a_process_without_one_exits_as_usual():
    proc = run_child("none", "3")
    assert proc.returncode == 3, proc.stderr
    assert "exit handlers ran" in proc.stdout and "finalized" in proc.stdout


def test_a_reader_that_leaves_early_gets_no_traceback():
    # `seq2seq-es list | head -1`: stdout is a pipe whose reader has already gone.
    read_end, write_end = os.pipe()
    os.close(read_end)
    proc = subprocess.run([sys.executable, "-m", "seq2seq_es", "list"], cwd=REPO,
                          env=plain_env(), stdout=write_end, stderr=subprocess.PIPE,
                          text=True, timeout=120)
    os.close(write_end)
    assert proc.returncode == 141
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
