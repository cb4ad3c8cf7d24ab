"""One training process per run folder (engine.run_lock): a second run there is refused, and a
killed run leaves no lock behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine_runs import base_args, demo_files, run, subprocess_env
from seq2seq_es import run_files
from seq2seq_es.engine.run_lock import RunFolderLock
from seq2seq_es.errors import ConfigError

HOLD = ("import sys, time; from pathlib import Path; "
        "from seq2seq_es.engine.run_lock import RunFolderLock; "
        "lock = RunFolderLock(Path(sys.argv[1])); print('held', flush=True); time.sleep(600)")


def hold_in_another_process(out: Path, **env: str) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE,
                              text=True, env=subprocess_env(**env))
    assert holder.stdout.readline().strip() == "held"
    return holder


def end(holder: subprocess.Popen) -> None:
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)


def test_a_second_process_is_refused_until_the_first_is_killed(tmp_path):
    out = tmp_path / "run"
    holder = hold_in_another_process(out)
    try:
        with pytest.raises(ConfigError) as refused:
            RunFolderLock(out)
        message = str(refused.value)
        assert message.startswith(f"config key 'train.output_dir': {out} is in use: a run is "
                                  f"training there (pid {holder.pid} on ")
        assert str(out / run_files.RUN_LOCK) in message and "another train.output_dir" in message
    finally:
        end(holder)  # SIGKILL: no clean-up code of the holder runs
    lock = RunFolderLock(out)
    assert json.loads((out / run_files.RUN_LOCK).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_requeued_slurm_job_waits_for_its_earlier_runs_lock_then_goes_on(tmp_path,
                                                                          monkeypatch):
    # A node that died keeps its NFS lock until the server notices; the job's next run on
    # another node must not fail on its own earlier run's lock. Another job is still refused.
    out = tmp_path / "run"
    holder = hold_in_another_process(out, SLURM_JOB_ID="77", SLURM_RESTART_COUNT="0")
    try:
        said = []
        monkeypatch.setenv("SLURM_JOB_ID", "77")
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
        lock = RunFolderLock(out, same_job_wait_s=0.5, say=said.append)
        assert lock.fd is not None
        [note] = said
        assert "still locked by this job's earlier run" in note and "SLURM job 77" in note
        lock.release()
        monkeypatch.setenv("SLURM_JOB_ID", "78")
        with pytest.raises(ConfigError, match="is in use"):
            RunFolderLock(out, same_job_wait_s=0.5, say=said.append)
    finally:
        end(holder)


def test_a_folder_that_cannot_be_made_is_refused_before_anything_loads(tmp_path):
    with pytest.raises(ConfigError, match=r"config key 'train.output_dir': cannot write in "
                                          r"/proc/seq2seq-es-run: "):
        RunFolderLock(Path("/proc/seq2seq-es-run"))


@pytest.mark.slow
def test_training_in_a_folder_in_use_is_refused_on_every_rank(tmp_path):
    files, out = demo_files(tmp_path / "data"), tmp_path / "run"
    holder = hold_in_another_process(out)
    try:
        proc = run("torchrun", 2, base_args(files, out, steps=2), check=False, timeout=300)
    finally:
        end(holder)
    assert proc.returncode != 0
    refusal = f"is in use: a run is training there (pid {holder.pid} on "
    # rank 0, which locks, says it; rank 1 learns it from rank 0 and leaves with status 2
    # without a second copy of the line (N ranks printed N equal lines)
    said = [line for line in proc.stderr.splitlines()
            if line.startswith("error:") and refusal in line]  # not the summary's copies
    assert len(said) == 1, proc.stderr[-3000:]
    assert proc.stderr.count("exitcode  : 2") == 2
    assert not (out / run_files.METRICS).exists()  # refused before the run wrote anything
    # the lock went with the holder: the same command now trains
    run("none", 1, base_args(files, out, steps=2))
    assert (out / run_files.METRICS).exists()


def test_a_file_system_without_locks_goes_on_unguarded_and_says_so(tmp_path, monkeypatch):
    # NFS without a lock manager answers ENOLCK (no such file system here: lockf answers as
    # it would there). Training goes on with a note; evaluate's and the submission's locks too.
    import errno
    import fcntl

    from seq2seq_es.engine.run_lock import held_alone, locked_now

    def no_locks(fd, command):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "lockf", no_locks)
    said = []
    lock = RunFolderLock(tmp_path / "run", say=said.append)
    assert said == [f"note: {tmp_path / 'run' / run_files.RUN_LOCK} cannot be locked (No locks "
                    "available): nothing stops a second run in this folder"]
    lock.release()
    assert held_alone(tmp_path / ".x.lock") is not None
    fd = os.open(tmp_path / ".x.lock", os.O_RDWR)
    try:
        with pytest.raises(OSError):
            locked_now(fd)
    finally:
        os.close(fd)
