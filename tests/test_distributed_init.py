"""A second process group in one process (a notebook's second run, a test worker's next test)
starts on its own rendezvous: `close` puts back the launch variables `init` wrote, so the next
`read_env` does not take them for a launcher's and wait on the old port (a pytest worker hung
there for 30 minutes when another process held that port by then)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from engine_runs import REPO, subprocess_env

CHILD = textwrap.dedent("""
    import os
    import torch.distributed as dist
    from seq2seq_es.engine import distributed as D

    kept, ports = [], []
    for _ in range(2):
        env = D.read_env()
        D.init(env, "gloo", timeout_min=1)
        kept.append(dist.group.WORLD)  # held on, as DeepSpeed's engine holds its groups
        ports.append(env.master_port)
        assert os.environ["MASTER_PORT"] == str(env.master_port)
        D.close()
        assert not any(key in os.environ for key in D._LAUNCH_VARIABLES), dict(os.environ)
        # a CPU run's DS_ACCELERATOR=cpu would follow a GPU child process this one starts
        assert "DS_ACCELERATOR" not in os.environ
    print("ports", *ports)
    # A launcher's variables are the launcher's again after close.
    os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(ports[0] + 1)})
    D.init(D.read_env(), "gloo", timeout_min=1)
    D.close()
    print("launcher", os.environ["MASTER_PORT"], os.environ.get("LOCAL_RANK"))
""")


def test_a_second_group_in_one_process_gets_its_own_rendezvous():
    proc = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # (the child asserts that close left no launch variable behind; each read_env then chose
    # a free port of its own)
    ports = next(line for line in proc.stdout.splitlines() if line.startswith("ports")).split()
    port, local_rank = next(line for line in proc.stdout.splitlines()
                            if line.startswith("launcher")).split()[1:]
    assert port == str(int(ports[1]) + 1) and local_rank == "None"


def test_children_of_a_test_worker_inherit_nothing_init_wrote():
    # CI: an in-process run left DS_ACCELERATOR=cpu in its worker, the child above inherited it,
    # and its own init/close then kept it as the launcher's.
    from engine_runs import LAUNCHER_VARIABLES
    from seq2seq_es.engine import distributed as D

    assert set(D._LAUNCH_VARIABLES) <= set(LAUNCHER_VARIABLES)


def test_nccl_without_cuda_is_one_config_error(monkeypatch):
    # It was torch's "Distributed package doesn't have NCCL built in" traceback.
    from seq2seq_es.engine import distributed as D
    from seq2seq_es.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without GPUs

    with pytest.raises(ConfigError, match="config key 'dist.backend': nccl needs CUDA GPUs"):
        D.init(D.read_env({}), "nccl")


def test_a_first_cpu_run_says_it_builds_deepspeeds_extension_and_an_old_lock_is_named(
        tmp_path, monkeypatch):
    # The first CPU run of a machine stalled for minutes without a word (a walkthrough timed
    # 167 s), and a lock left by a killed build kept every later run waiting for ever.
    import time

    from seq2seq_es.engine.distributed import CPU_EXTENSION, STALE_LOCK_S, cpu_extension_note

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    note = cpu_extension_note()
    assert note.startswith("building DeepSpeed's CPU communication extension into ")
    folder = next(tmp_path.rglob(CPU_EXTENSION))  # where torch builds it
    assert str(folder) in note
    (folder / f"{CPU_EXTENSION}.so").write_bytes(b"")
    assert cpu_extension_note() is None  # built: nothing to say
    lock = folder / "lock"
    lock.write_text("")
    assert cpu_extension_note() is None  # a fresh lock: another rank or job is building
    old = time.time() - STALE_LOCK_S - 120
    os.utime(lock, (old, old))
    note = cpu_extension_note()
    assert f"waits for the lock {lock} (12 min old)" in note and "delete that file" in note


def test_a_rank_waiting_for_the_others_says_what_it_waits_for(monkeypatch, capfd):
    # RANK=0 WORLD_SIZE=2 left in a shell: `train` printed nothing and waited for a rank that
    # never came until dist.timeout_min (30 min by default)
    import time

    from seq2seq_es.engine import distributed as D

    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    env = D.DistEnv(0, 2, 0, "127.0.0.1", 29611, "torchrun")
    with D._waiting_note(env, 30, after_s=0.05):
        time.sleep(0.5)
    assert capfd.readouterr().err == (
        "note: waiting 0 s so far for the other ranks: this is rank 0 of 2 (RANK and WORLD_SIZE "
        "in the environment), meeting at 127.0.0.1:29611; the wait ends at dist.timeout_min "
        "(30 min); if no launcher started this process, they were left in the shell: unset "
        "RANK and WORLD_SIZE to train alone\n")
    # under torchrun, and on a node's other ranks, or a group met in time: nothing
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    with D._waiting_note(env, 30, after_s=0.05):
        time.sleep(0.3)
    assert capfd.readouterr().err.endswith("(30 min)\n")
    with D._waiting_note(D.DistEnv(1, 2, 1, "127.0.0.1", 29611, "torchrun"), 30, after_s=0.05):
        time.sleep(0.3)
    with D._waiting_note(env, 30, after_s=5):
        pass
    time.sleep(0.1)
    assert capfd.readouterr().err == ""


def test_a_start_waiting_on_deepspeeds_extension_lock_names_the_lock(tmp_path, monkeypatch,
                                                                      capfd):
    # A lock under STALE_LOCK_S old (a run killed while building, restarted at once) kept one
    # process waiting in silence for ever, and two ranks said they waited for each other.
    import time

    from seq2seq_es.engine import distributed as D

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    lock = Path(D._cpu_extension_folder()) / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("")
    for env in (D.DistEnv(0, 1, 0, "127.0.0.1", 29611, "none"),
                D.DistEnv(0, 2, 0, "127.0.0.1", 29611, "torchrun")):
        with D._waiting_note(env, 30, after_s=0.05):
            time.sleep(0.5)
        said = capfd.readouterr().err
        assert said == (f"note: waiting 0 s so far for DeepSpeed's CPU extension: its lock {lock} "
                        "(0 min old) says it is being built, by this run or another (a few "
                        "minutes on 2 cores); a lock over 10 minutes old while no build runs was "
                        "left by a run killed while building: delete that file then\n"), said
    lock.unlink()  # no lock: one process says nothing, two ranks the rendezvous
    with D._waiting_note(D.DistEnv(0, 1, 0, "127.0.0.1", 29611, "none"), 30, after_s=0.05):
        time.sleep(0.3)
    assert capfd.readouterr().err == ""


def test_init_says_it_waits_when_the_other_ranks_never_come(tmp_path):
    # the note comes from D.init's rendezvous itself (a process with a leftover RANK=0
    # WORLD_SIZE=2), shortened to a second here; the process is ended once it has said it
    import signal

    from engine_runs import free_port

    child = ("from seq2seq_es.engine import distributed as D\n"
             "D.WAIT_NOTE_S = 1.0\n"
             "D.init(D.read_env(), 'gloo', timeout_min=2)\n")
    env = subprocess_env(RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                         MASTER_PORT=str(free_port()))
    env.pop("TORCHELASTIC_RUN_ID", None)
    proc = subprocess.Popen([sys.executable, "-c", child], env=env, cwd=REPO,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        said = ""
        for line in proc.stderr:  # the note comes after a second, or the test times out
            if line.startswith("note: waiting"):
                said = line
                break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert said.startswith("note: waiting 1 s so far for the other ranks: this is rank 0 of 2 "
                           "(RANK and WORLD_SIZE in the environment), meeting at 127.0.0.1:")
    assert "unset RANK and WORLD_SIZE to train alone" in said


@pytest.mark.parametrize("compiler_says, cause", [
    ("", "/bin/sh: 1: {cxx}: not found"),
    # a compiler (torch asks its version first) on a machine without Python's headers: its
    # compilations (-c) fail
    ('case " $* " in *" -c "*) ;; *) exec g++ "$@";; esac\n'
     "echo 'x.cpp:1:10: fatal error: Python.h: No such file or directory' >&2; exit 1",
     "x.cpp:1:10: fatal error: Python.h: No such file or directory")])
def test_an_extension_that_cannot_be_built_is_one_error_naming_what_to_install(
        tmp_path, compiler_says, cause):
    # A machine without a C++ compiler or Python's headers: the first run (the demo's too) ended
    # in a 67-line traceback of torch's ninja call, with no error line (README walkthrough).
    cxx = tmp_path / ("missing-c++" if not compiler_says else "c++")
    if compiler_says:
        cxx.write_text(f"#!/bin/sh\n{compiler_says}\n")
        cxx.chmod(0o755)
    env = subprocess_env(CXX=str(cxx), TORCH_EXTENSIONS_DIR=str(tmp_path / "extensions"))
    proc = subprocess.run([sys.executable, "-m", "seq2seq_es", "train", "--task", "mlsum",
                           "--model", "barto-tiny", "--train.output_dir", str(tmp_path / "run"),
                           "--train.max_steps", "1"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    [error] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith("error: DeepSpeed's CPU communication extension (deepspeed_shm_comm) "
                            f"could not be built in {tmp_path / 'extensions'}")
    assert f": {cause.format(cxx=cxx)}. " in error
    assert f"C++ compiler (CXX={cxx}) and Python's headers" in error
    assert "apt-get install g++ python3-dev" in error
