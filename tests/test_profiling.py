"""train.profile_steps A-B: a torch.profiler trace (Chrome JSON) and an operator table of
training steps A..B per rank in RUN/profile/, without changing what the run trains."""

from __future__ import annotations

import json

import pytest

from engine_runs import base_args, demo_files, run, step_losses
from seq2seq_es.config import compose
from seq2seq_es.errors import ConfigError


@pytest.mark.parametrize("value, says", [
    ("ten", "expected a step or a range of steps such as 10-12, got 'ten'"),
    ("3-2", "expected 1 <= first step <= last step, got '3-2'"),
    ("0-2", "expected 1 <= first step <= last step, got '0-2'"),
])
def test_a_bad_range_is_refused_by_its_key(value, says):
    with pytest.raises(ConfigError) as error:
        compose("mlsum", "barto-tiny", overrides={"train.profile_steps": value})
    assert error.value.key == "train.profile_steps" and says in str(error.value)


def test_a_range_reads_as_first_and_last_step():
    train = compose("mlsum", "barto-tiny", overrides={"train.profile_steps": "4-6"}).train
    assert train.profile_range() == (4, 6)
    assert compose("mlsum", "barto-tiny", overrides={
        "train.profile_steps": "5"}).train.profile_range() == (5, 5)
    assert compose("mlsum", "barto-tiny").train.profile_range() is None


@pytest.mark.slow
def test_profiled_steps_leave_a_trace_and_train_as_unprofiled_ones(tmp_path):
    files = demo_files(tmp_path / "data", train_size=16)
    plain, profiled = tmp_path / "plain", tmp_path / "profiled"
    run("none", 1, base_args(files, plain, steps=4))
    proc = run("none", 1, base_args(files, profiled, steps=4,
                                    extra=["--train.profile_steps", "2-3"]))
    assert step_losses(profiled) == step_losses(plain)  # the profiler changes no number
    trace = json.loads((profiled / "profile" / "rank0_steps2-3.json").read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    assert {"aten::mm", "aten::addmm"} & names  # the model's matmuls are in it
    table = (profiled / "profile" / "rank0_steps2-3.txt").read_text()
    assert "Self CPU" in table and "aten::" in table
    assert "profiled steps 2-3:" in proc.stdout
    assert "USDT:" not in proc.stderr  # libkineto's profiler_start/stop lines
    assert sorted(p.name for p in (profiled / "profile").iterdir()) == [
        "rank0_steps2-3.json", "rank0_steps2-3.txt"]
    # a range the run does not train is said, not profiled
    out = tmp_path / "short"
    proc = run("none", 1, base_args(files, out, steps=2, extra=["--train.profile_steps", "2-3"]))
    assert "train.profile_steps 2-3: not profiled, the run trains steps 1-2" in proc.stdout
    assert not (out / "profile").exists()


def test_only_kinetos_lines_are_dropped_from_stderr_while_the_profiler_starts(capfd):
    import os

    from seq2seq_es.engine.profiling import _kineto_lines_dropped

    with _kineto_lines_dropped():
        os.write(2, b"USDT:2026-12-03 10343:10343 SyncActivityProfilerHandler.cpp:52] "
                    b"profiler_start\n")
        os.write(2, b"a C++ warning of another library\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "a C++ warning of another library\nafter\n"


def test_a_process_without_stderr_profiles_as_before(tmp_path):
    # `2>&-`: sys.stderr is None, and taking fd 2 aside raised AttributeError in the first
    # version of the kineto filter, where the profiler had run fine.
    import os
    import subprocess
    import sys

    from engine_runs import REPO, subprocess_env

    child = ("import sys, torch\n"
             "from pathlib import Path\n"
             "from seq2seq_es.engine.profiling import StepProfiler\n"
             "said = []\n"
             "profiler = StepProfiler((1, 1), Path(sys.argv[1]), 0, torch.device('cpu'), "
             "said.append)\n"
             "profiler.before(1)\n"
             "torch.ones(4, 4) @ torch.ones(4, 4)\n"
             "profiler.after(1)\n"
             "print(said[0])\n")
    proc = subprocess.run([sys.executable, "-c", child, str(tmp_path)], cwd=REPO,
                          stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                          env=subprocess_env(), timeout=120, preexec_fn=lambda: os.close(2))
    assert proc.returncode == 0
    assert proc.stdout.startswith("profiled steps 1-1:")
    assert (tmp_path / "rank0_steps1-1.json").exists()
