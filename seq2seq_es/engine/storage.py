"""A run's files that cannot be written (disk full, quota, rights): one line, not a traceback.

A full disk during a checkpoint save ended a run with `RuntimeError: [enforce fail at
inline_container.cc:672] . unexpected pos 2406080 vs 2405972` (torch's zip writer, which drops
the errno) and left the half-written `.tmp-step_N` folder holding the space. What the user needs
instead: which folder, why, how much room there is and a checkpoint of this run takes, what is
kept, and the command that goes on. `StorageError` carries that line; the Checkpointer and the
export remove their partial folder before raising it, and `seq2seq-es train` turns any other
out-of-room OSError (metrics.jsonl, TensorBoard, final_results.json) into the same kind of line.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from pathlib import Path

from ..errors import Seq2SeqEsError

# errno values that mean "no room" (EDQUOT: a user or project quota, common on cluster storage)
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})
# torch.save's zip writer reports a failed write as a RuntimeError without errno
_TORCH_WRITE_FAILURES = ("unexpected pos", "PytorchStreamWriter failed", "file write failed")


class StorageError(Seq2SeqEsError):
    """A file or folder of the run could not be written; the message names it, the reason, the
    free space there and what was kept."""


def _errno(exc: BaseException) -> int | None:
    """The errno of an OSError, or the `(os error N)` safetensors' Rust writer puts in its text."""
    if isinstance(exc, OSError):
        return exc.errno
    found = re.search(r"\(os error (\d+)\)", str(exc))
    return int(found.group(1)) if found else None


def is_write_failure(exc: BaseException) -> bool:
    """An OSError, torch's zip writer failing to write (its RuntimeError carries no errno), or
    safetensors' writer's I/O error (a SafetensorError, no OSError either)."""
    if isinstance(exc, OSError):
        return True
    if type(exc).__name__ == "SafetensorError":
        return "I/O error" in str(exc)
    return isinstance(exc, RuntimeError) and any(text in str(exc)
                                                  for text in _TORCH_WRITE_FAILURES)


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the file system holding `path` (its nearest existing parent), or None."""
    path = Path(path).absolute()
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def folder_bytes(path: str | Path) -> int:
    """Bytes of the files under `path` (0 when it is gone)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def checkpoint_kept(name: str) -> str:
    """What a run stopped by a failed write still has, and the way on (one text for the
    Checkpointer and `seq2seq-es train`)."""
    return (f"the newest complete checkpoint, {name}, is kept, and --train.resume auto "
            "continues from it")


def megabytes(size: int | float) -> str:
    return f"{size / 2**20:.1f} MB"


def reason(exc: BaseException, path: str | Path, needed: int | None = None) -> str:
    """Why the write failed, in words: the errno's text, or for torch's errno-less error the
    free space measured against what was needed."""
    free = free_bytes(path)
    # Measured as the write failed: the partial file may still be open, so a `df` after the
    # process has ended can show more.
    room = f"{megabytes(free)} free when it failed" if free is not None else "free space unknown"
    code = _errno(exc)
    if code is not None:
        text = os.strerror(code)
        if code in NO_ROOM:
            return f"{text} ({room})"
        filename = getattr(exc, "filename", None)
        return f"{text}" + (f": {filename}" if filename else "")
    if free is not None and needed is not None and free < needed:
        return f"the disk is full ({room}; {megabytes(needed)} needed)"
    return f"the write failed ({room}; a disk quota or the file system refused it: {exc})"


@contextlib.contextmanager
def writing(path: str | Path, what: str, partial: str | Path | None = None, then: str = ""):
    """Around the writing of `what` (e.g. "the predictions") into `path`: a write failure becomes
    one StorageError naming it, after `partial` (the half-written file or folder) is removed;
    `then` ends the line (what is kept, how to go on)."""
    try:
        yield
    except Exception as exc:
        if not is_write_failure(exc):
            raise
        removed = ""
        if partial is not None and Path(partial).exists():
            if Path(partial).is_dir():
                shutil.rmtree(partial, ignore_errors=True)
            else:
                Path(partial).unlink(missing_ok=True)
            removed = "; the partial output was removed"
        raise StorageError(f"{what} could not be written in {path}: "
                           f"{reason(exc, path)}{removed}" + (f"; {then}" if then else "")) from exc
