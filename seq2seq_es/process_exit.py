"""How a process that started a process group leaves: exit handlers, then no interpreter teardown.

Why. DeepSpeed keeps references to the process groups past `destroy_process_group` (its engine,
optimizer and `deepspeed.utils.groups` hold them: a two-rank run still has its two gloo groups'
`gloo_tcp_loop` and `pt_gloo_runloop` threads after `Trainer.close`), so those C++ worker threads
still run while Python finalizes. A worker that then needs the GIL (to free a tensor whose Python
object died while a collective still held it) is ended by Python with `pthread_exit`, whose forced
unwinding through C++ `noexcept` frames aborts the process: "terminate called without an active
exception", exit -6, after a run that finished and wrote everything. torchrun then reports the run
failed (and kills the other ranks); under SLURM, srun's --kill-on-bad-exit fails the job. CI saw it
twice in about forty full test runs, always after the export, on a rank that had nothing left to do.

What. `leave(status)` does what a normal exit does before it finalizes: it waits for the
non-daemon Python threads and runs the `atexit` handlers (trackers, `logging.shutdown`, temporary
folders); then it flushes stdout and stderr and ends the process with `os._exit(status)`. The
finalization that could abort is skipped, nothing a normal exit would have written is. A SLURM
task (submitit runs our callable and then exits on its own) leaves the same way from an `atexit`
handler: `slurm.job.TrainJob`. Only processes that started a process group leave this way
(`distributed.init` calls `started_process_group`); `seq2seq-es score` or `list` exit normally.

This module imports nothing from the package and no third-party library: the command line
imports it at start-up.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn

_process_group_started = False


def started_process_group() -> None:
    """Called by `distributed.init`: this process must leave through `leave`."""
    global _process_group_started
    _process_group_started = True


def must_leave_without_teardown() -> bool:
    return _process_group_started


def _wait_for_threads() -> None:
    """What the interpreter does first at exit: tell thread pools to stop (concurrent.futures
    registers that with threading; inductor keeps one), then join the non-daemon threads. A
    plain join of a live ThreadPoolExecutor's workers would wait forever."""
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
        return
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()


def _flush_everything() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing left to write to
            pass
    try:  # C libraries' buffered stdout (NCCL_DEBUG lines into a SLURM log): exit() flushes it
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


def leave(status: int, *, exit_handlers: bool = True) -> NoReturn:
    """Wait for the non-daemon threads, run the exit handlers, flush (Python's streams and the C
    library's), and end the process with `status`, skipping finalization. `exit_handlers=False`
    from inside an `atexit` handler (the interpreter has joined the threads and is running the
    handlers already; a second run would repeat those that ran)."""
    try:
        if exit_handlers:
            _wait_for_threads()
            atexit._run_exitfuncs()
    finally:
        _flush_everything()
        os._exit(status)


def exit_with(status: int) -> NoReturn:
    """For a module's `__main__`: sys.exit(status), or leave(status) where a process group was
    started."""
    if must_leave_without_teardown():
        leave(status)
    sys.exit(status)


def exit_status(code: object) -> int:
    """The status a `SystemExit(code)` gives: None is 0, an int itself (modulo 256, as the shell
    sees it), anything else (a message, which Python prints) 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    return 1
