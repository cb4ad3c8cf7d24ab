"""One training process per run folder: rank 0 holds a lock on <run>/train.lock while it trains.

Two `train` commands on one folder (a second terminal, a job submitted twice, a `--train.resume
auto` while the first still runs) both trained before: their records interleaved in
metrics.jsonl and their checkpoints landed in one checkpoints/ folder, each resumable into a mix
of the two runs.

The lock is a POSIX record lock (fcntl.lockf): the kernel drops it when the process ends,
SIGKILL included, so a crashed run never leaves its folder locked, and NFS hands it to the
server's lock manager, so it holds between nodes. It belongs to the process (not inherited by
forked data-loader workers). The file stays after the run: deleting it would let two processes
lock two different files under one name. Its text says who holds it, for the refusal.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from .. import run_files
from ..errors import ConfigError

# A requeued SLURM job can start before the server has noticed that the node of its last run
# died (its locks are released when the node's lock manager restarts or the lease ends): the
# same job waits this long for its own earlier run's lock, then goes on without it.
SAME_JOB_WAIT_S = 90.0


def _slurm_job() -> dict:
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return {}
    return {"slurm_job": job, "slurm_restart": int(os.environ.get("SLURM_RESTART_COUNT") or 0)}


def _holder_text() -> bytes:
    return (json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                        "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        **_slurm_job(), "command": " ".join(sys.argv)}) + "\n").encode()


def read_holder(path: Path) -> dict:
    """What a lock file says of its holder (`_holder_text`); {} while it is being written."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # written a moment from now, or by hand
        return {}
    return holder if isinstance(holder, dict) else {}


def describe_holder(holder: dict) -> str:
    """'pid 12 on node1, SLURM job 34, since 2026-...' (or 'another process'), for messages."""
    if "pid" not in holder:
        return "another process"
    where = f"pid {holder['pid']} on {holder.get('host', '?')}"
    if holder.get("slurm_job"):
        where += f", SLURM job {holder['slurm_job']}"
    return where + (f", since {holder['since']}" if holder.get("since") else "")


def _earlier_run_of_this_job(holder: dict) -> bool:
    mine = _slurm_job()
    return bool(mine) and holder.get("slurm_job") == mine["slurm_job"] \
        and isinstance(holder.get("slurm_restart"), int) \
        and holder["slurm_restart"] < mine["slurm_restart"]


class RunFolderLock:
    """Held by the process that trains in `out` until release() (or its end)."""

    def __init__(self, out: Path, same_job_wait_s: float = SAME_JOB_WAIT_S,
                 say=lambda message: print(message, file=sys.stderr)):
        self.path, self.fd = out / run_files.RUN_LOCK, None
        # A folder this start made, left holding nothing but the lock by a refusal during the
        # set-up (a bad data file, a length that cuts most targets), is removed again: it looked
        # like a run that had started.
        self.made_folder, self.held = not out.exists(), False
        try:
            out.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # here, before the model and the data are loaded
            raise ConfigError("train.output_dir", f"cannot write in {out}: "
                              f"{exc.strerror or exc}") from None
        deadline = time.monotonic() + same_job_wait_s
        while True:
            try:
                if locked_now(self.fd):
                    break
            except OSError as exc:
                # A filesystem without locks (ENOLCK: NFS without a lock manager): train as
                # before, and say what is not guarded.
                say(f"note: {self.path} cannot be locked ({exc.strerror}): nothing stops "
                    "a second run in this folder")
                return
            holder = read_holder(self.path)
            if not _earlier_run_of_this_job(holder):
                self.release()
                raise ConfigError("train.output_dir", f"{out} is in use: a run is training "
                                  f"there ({describe_holder(holder)}; {self.path}). Two runs in "
                                  "one folder would mix their metrics and checkpoints: "
                                  "wait for it to end (then --train.resume auto continues "
                                  "it), or give another train.output_dir") from None
            if time.monotonic() >= deadline:
                say(f"note: {self.path} is still locked by this job's earlier run "
                    f"({describe_holder(holder)}), which SLURM has ended; going on without it")
                return
            time.sleep(2.0)
        self.held = True  # only the holder may remove the folder: another start may be in it
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, _holder_text(), 0)

    def release(self) -> None:
        if self.fd is not None:
            if self.made_folder and self.held:
                self._remove_if_only_the_lock()
            os.close(self.fd)  # closing the file drops the process's lock on it
            self.fd = None

    def _remove_if_only_the_lock(self) -> None:
        """Unlinked while still held, so no other start can lock this file after it is gone."""
        try:
            if [entry.name for entry in os.scandir(self.path.parent)] == [self.path.name]:
                self.path.unlink()
                self.path.parent.rmdir()
        except OSError:  # a file written meanwhile, or the folder not ours to remove: kept
            pass

    def __del__(self) -> None:  # a Trainer whose set-up failed after locking
        self.release()


# struct flock on Linux (x86_64, aarch64): short l_type, short l_whence, off_t l_start,
# off_t l_len, pid_t l_pid, padded to 32 bytes.
_FLOCK = "hhqqi4x"


def training_now(out: Path) -> dict | None:
    """Whether a process holds `out`'s lock, that is, trains there now: its holder text ({} when
    unreadable), or None when no process holds it (finished, crashed, killed, never started) or
    the lock cannot be asked about. Asks the kernel (F_GETLK) and takes no lock itself, so a run
    starting this moment is never refused because `collect` looked. A lock held by this very
    process is not seen (POSIX locks are per process)."""
    import fcntl
    import struct

    path = out / run_files.RUN_LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
        if struct.unpack(_FLOCK, answer)[0] == fcntl.F_UNLCK:
            return None
    except OSError:  # no lock manager (NFS without one): nothing to tell
        return None
    finally:
        os.close(fd)
    return read_holder(path)


class HeldFile:
    """A POSIX lock on a file, held until `release()` or until the object goes."""

    def __init__(self, fd: int):
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the file drops the process's lock on it
            self.fd = None

    def __del__(self) -> None:
        self.release()


def locked_now(fd: int, wait: bool = False) -> bool:
    """Take this process's POSIX lock on the open file `fd`: True once taken; False where
    another process holds it (with `wait`, waits for it instead). An OSError where the file
    system cannot lock (ENOLCK: NFS without a lock manager): the callers go on unguarded."""
    import fcntl

    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise
    return True


def held_alone(path: Path) -> HeldFile | None:
    """A POSIX lock on `path` (created) for this process; None where another process holds it
    (its text, written here, says who: `read_holder`). A file system without locks is not
    guarded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not locked_now(fd):
            os.close(fd)
            return None
    except OSError:
        return HeldFile(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, _holder_text(), 0)
    return HeldFile(fd)


def hold_run_folder(out: Path, env) -> RunFolderLock | None:
    """Rank 0 locks `out`; every rank raises its refusal (D.decided_by_main). The other ranks
    hold nothing: None."""
    from . import distributed as D

    return D.decided_by_main(env, lambda: RunFolderLock(out))
