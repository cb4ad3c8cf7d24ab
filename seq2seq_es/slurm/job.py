"""The callable a SLURM job runs: distributed environment, training entry, pre-emption and requeue.

How pre-emption works (and why not with submitit's own handler)
---------------------------------------------------------------
submitit's job process (`submitit.core._submit` -> `submission.process_job`) installs signal
handlers before it calls the job: SIGUSR2 -> `SignalHandler.checkpoint_and_try_requeue`, SIGTERM and
SIGCONT -> `bypass` (logged, ignored). That USR2 handler runs wherever the main thread happens to be;
on rank 0 it calls the callable's `checkpoint()`, pickles the result over the job's submitted
pickle, runs `scontrol requeue <job>` and `sys.exit(-1)`; on every other rank it returns and does
nothing. For training that is wrong: DeepSpeed saving is collective, so rank 0 cannot save alone in
the middle of a step, and the other ranks never learn about the signal.

So the training engine takes the signals over: while its loop runs its own handlers (SIGUSR2, SIGTERM)
only set a flag, the ranks all-reduce that flag at the next step boundary, save one checkpoint
together, rank 0 writes `<run_dir>/PREEMPTED` and every rank leaves with exit status 3
(`EXIT_PREEMPTED`). TrainJob then does the requeue: after the entry returns it ignores further stop
signals (so a second SIGUSR2 cannot make submitit's handler requeue twice), and

* rank 0 checks `SLURM_RESTART_COUNT` (SLURM counts requeues of the same job id) against
  `max_requeues`; below it, it records the event and runs `scontrol requeue $SLURM_JOB_ID`, which
  puts the job back in the queue under the same id; SLURM then stops the remaining tasks. The
  restarted job unpickles the same TrainJob, and the entry resumes from the last checkpoint
  (`--train.resume auto`), so no step is lost or repeated.
* with the requeues used up, rank 0 writes `<run_dir>/OUT_OF_REQUEUES` and raises
  `OutOfRequeuesError`, a SystemExit with a one-line message (what was kept, how to go on):
  the job fails with that line at the end of its log instead of a traceback (submitit
  catches Exception only), and `slurm status` says "out of requeues".
* the other ranks leave with status 0 and let rank 0 decide: the job step runs with srun's
  --kill-on-bad-exit (so that a crashed rank cannot leave the others waiting in a collective
  until the process-group timeout), and a non-zero status there would kill rank 0 before it has
  requeued the job.
* the ranks leave through SystemExit, which submitit does not catch: no result pickle is
  written, so the job does not look finished to submitit while it waits in the queue.

A signal that arrives before the engine has installed its handlers (while the model loads) still
reaches submitit's handler: `checkpoint()` below then applies the same requeue limit (out of
requeues, it ends the job with the same one line, `OutOfRequeuesError`) and returns the unchanged
job (all state lives in the run folder's checkpoints), and submitit requeues it and exits; that exit leaves the entry as `RequeuedBySubmitit`, which TrainJob lets through instead of
reading it as the entry's exit status. One that arrives before Python has started waits for that
handler: the task's command starts with SIGUSR2 blocked (`env --block-signal`, see
config.python_command) and `__call__` unblocks it.

A signal can also arrive after training has stopped: SLURM checks time limits on a 30-second tick,
and a requeued run that needs about one tick to finish meets the next warning as it exits. Once
this run has written DONE or PREEMPTED, submitit's handler ignores signals (it would requeue a
finished job, or requeue a pre-empted one twice), and once the entry has returned both stop
signals are set to SIG_IGN: a Python handler would not do, because the interpreter puts the default
action (terminate) back while it shuts down, and the job would end FAILED after finishing.

The time limit follows the same path: the sbatch script asks SLURM for `--signal=USR2@<delay>`
before the limit (`SlurmConfig.signal_delay_s`).

SIGTERM means two things: `scancel` (the user wants the job to end) and SLURM requeueing the
job itself (`scontrol requeue`, PreemptMode=REQUEUE). The engine saves the same way for both;
then rank 0 reads the job's record (`scontrol show job`): when SLURM has already counted a
requeue (Restarts above this run's SLURM_RESTART_COUNT) the job leaves and SLURM brings it
back, otherwise it was cancelled, so it records `cancelled` and ends, its checkpoint left for
`slurm resume` (requeueing it, as before, made scancel a restart). A cluster that pre-empts by
cancelling with SIGTERM alone therefore gets no automatic requeue; one that sends the job's
signal on pre-emption (PreemptParameters=send_user_signal) does.
"""

from __future__ import annotations

import atexit
import importlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import submitit

from .. import process_exit, run_files
from ..engine import rendezvous
from ..errors import ConfigError, lost_contact

# The engine's exit status after a stop signal saved a checkpoint (run_files defines it for both).
EXIT_PREEMPTED = run_files.PREEMPTED_EXIT_CODE
DEFAULT_ENTRY = "seq2seq_es.cli:main"


class RequeuedBySubmitit(SystemExit):
    """submitit's handler requeued the job and exits; not an exit status of the entry."""


class OutOfRequeuesError(SystemExit):
    """The job was pre-empted again after using all its requeues. A SystemExit whose code is
    the message: Python prints it and the task ends with status 1. As an exception submitit
    would log "Submitted job triggered an exception" and the interpreter a traceback, for an
    ending that is no bug (the job log then read as a crash after the engine's stop message)."""


class TrainingFailed(RuntimeError):
    """The training entry returned a non-zero exit status other than EXIT_PREEMPTED."""


def resolve_entry(spec: str) -> Callable[[list[str]], Any]:
    """'package.module:function' -> the function (imported on the node, not pickled)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"entry '{spec}' must look like package.module:function")
    return getattr(importlib.import_module(module_name), attr)


def restart_count() -> int:
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


def append_event(run_dir: str | Path, event: str, **fields: Any) -> None:
    path = Path(run_dir) / run_files.SLURM_EVENTS
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"event": event, "time": round(time.time(), 3), **fields}
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


class TrainJob(submitit.helpers.Checkpointable):
    """Runs `entry(["train", *argv])` on every task of a SLURM job and requeues it when pre-empted.

    argv: the train arguments (task, model, output dir, overrides); run_dir: the run's output folder
    (where the engine writes metrics.jsonl, PREEMPTED and DONE); entry: 'module:function' taking an
    argv list and returning (or exiting with) a status; max_requeues: how many times the job may put
    itself back in the queue. CUDA_VISIBLE_DEVICES is left as SLURM sets it: the rank's device is
    chosen in engine.distributed (DistEnv.device, and the LOCAL_RANK DeepSpeed is given).
    """

    def __init__(self, argv: list[str], *, run_dir: str | Path, entry: str = DEFAULT_ENTRY,
                 max_requeues: int = 3):
        if entry.replace(" ", "") == "seq2seq_es.cli:console":
            # console ends the process itself: submitit would save no result and the requeue
            # logic below would never run.
            raise ConfigError("--entry", "seq2seq_es.cli:console ends the process; the job "
                              f"calls an entry that returns its status: {DEFAULT_ENTRY}")
        self.argv = [str(arg) for arg in argv]
        self.run_dir = str(Path(run_dir).absolute())
        self.entry = entry
        self.max_requeues = max_requeues
        # Every rank unpickles this same id, and a requeue keeps it: it tells this job's
        # rendezvous file from one left by an older job that had the same id (see
        # rendezvous.agree_on_master_port).
        self.submission_id = rendezvous.new_submission_id()

    def __call__(self) -> dict[str, Any]:
        # Inside submitit's job process only (it sets SUBMITIT_FOLDER): a direct call, in a test
        # or a notebook, ends its process as usual.
        _task_exit["status"] = None  # this call's, not an earlier call's in the same process
        if "SUBMITIT_FOLDER" in os.environ and not _task_exit.get("registered"):
            atexit.register(_leave_without_teardown)
            _task_exit["registered"] = True
        try:
            return self._train()
        except SystemExit as exit_:
            _task_exit["status"] = process_exit.exit_status(exit_.code)
            raise
        except BaseException:
            _task_exit["status"] = 1  # the interpreter prints the traceback before atexit
            raise

    def _train(self) -> dict[str, Any]:
        # The task started with SIGUSR2 blocked (config.python_command); submitit's handler is in
        # place now, so a signal that came during start-up is delivered here, not lost.
        _guard_submitit_handler(self.run_dir)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})
        dist = self._export_distributed_env()
        restart = restart_count()
        Path(self.run_dir).mkdir(parents=True, exist_ok=True)
        self._link_logs(dist.rank)
        if dist.rank == 0:
            # Running again (the cluster, or a user's scontrol requeue, put it back): whatever
            # it ends as, it is no longer out of requeues.
            (Path(self.run_dir) / run_files.OUT_OF_REQUEUES).unlink(missing_ok=True)
            append_event(self.run_dir, "start", job_id=_job_id(), restart=restart,
                         world_size=dist.world_size, master=f"{dist.master_addr}:{dist.master_port}",
                         hosts=os.environ.get("SLURM_JOB_NODELIST", ""))
        os.environ[run_files.REQUEUES_LEFT_ENV] = str(max(0, self.max_requeues - restart))
        limit_threads_to_allocation()
        try:
            status = self._run_entry()
        except Exception as exc:
            if dist.rank == 0:  # a lost peer is said as such: another rank's error is the cause
                append_event(self.run_dir, "failed", job_id=_job_id(), restart=restart,
                             error=(lost_contact(exc) or "").removeprefix("error: ")
                             or f"{type(exc).__name__}: {exc}")
            raise
        _ignore_stop_signals()
        if status == 0:
            if dist.rank == 0:
                append_event(self.run_dir, "finished", job_id=_job_id(), restart=restart)
            return {"run_dir": self.run_dir, "restarts": restart}
        if status == EXIT_PREEMPTED:
            self._requeue_or_give_up(dist.rank, restart)
        if dist.rank == 0:
            append_event(self.run_dir, "failed", job_id=_job_id(), restart=restart, status=status)
        raise TrainingFailed(f"training exited with status {status} on rank {dist.rank}; "
                             "its error is in this task's log")

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit's USR2 handler (rank 0, before the engine's own handlers are installed)."""
        restart = restart_count()
        if restart >= self.max_requeues:
            self._mark_out_of_requeues(restart)
            # One line, as after a stop in training; returning None made submitit raise
            # UncompletedJobError, a traceback in the log for an ending that is no bug.
            saved = run_files.complete_checkpoints(Path(self.run_dir) / run_files.CHECKPOINTS)
            raise OutOfRequeuesError(self._out_of_requeues_message(
                restart, saved[-1][0] if saved else None, before_training=True))
        append_event(self.run_dir, "requeued", job_id=_job_id(), restart=restart,
                     reason="signal before the training loop")
        return super().checkpoint(*args, **kwargs)

    def _export_distributed_env(self):
        """RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT for torch's env:// rendezvous."""
        dist = submitit.helpers.TorchDistributedEnvironment()
        dist.master_port = rendezvous.agree_on_master_port(
            submitit.JobEnvironment().paths.folder, _job_id(), restart_count(), dist.rank,
            dist.world_size, submission=getattr(self, "submission_id", ""))  # "": an older pickle
        dist.export(set_cuda_visible_devices=False, overwrite=True)
        return dist

    def _run_entry(self) -> int:
        entry = resolve_entry(self.entry)
        try:
            status = entry(["train", *self.argv])
        except (RequeuedBySubmitit, OutOfRequeuesError):
            raise  # the signal handlers' endings, not the entry's exit status
        except SystemExit as exit_:
            status = exit_.code
        if status is None:
            return 0
        return status if isinstance(status, int) else 1

    def _requeue_or_give_up(self, rank: int, restart: int) -> None:
        if rank != 0:
            # Rank 0 decides and reports. Leaving with status 0 keeps srun's --kill-on-bad-exit
            # from killing rank 0 before it has requeued the job or written the marker.
            raise SystemExit(0)
        stopped = _preempted_record(self.run_dir)  # the engine's PREEMPTED: signal, step
        if stopped.get("signal") == "SIGTERM":
            self._after_sigterm(restart, stopped.get("step"))
        if restart >= self.max_requeues:
            self._mark_out_of_requeues(restart)
            raise OutOfRequeuesError(self._out_of_requeues_message(restart, stopped.get("step")))
        job_id = os.environ.get("SLURM_JOB_ID", "")
        append_event(self.run_dir, "requeued", job_id=_job_id(), restart=restart,
                     reason="pre-empted; checkpoint saved")
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True,
                                timeout=60)
        if result.returncode != 0:
            print(f"scontrol requeue {job_id} failed ({result.stderr.strip()}); a cluster that "
                  "requeues pre-empted jobs itself reports this", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_PREEMPTED)

    def _after_sigterm(self, restart: int, step: int | None) -> None:
        """SIGTERM is what `scancel` sends, and what SLURM sends when it requeues a job itself
        (`scontrol requeue`, PreemptMode=REQUEUE); the requeue signal of this package is SIGUSR2
        (time limit, and pre-emption on clusters with PreemptParameters=send_user_signal).
        SLURM has counted a requeue it started by the time the signal arrives (the job's
        Restarts is above this run's SLURM_RESTART_COUNT): the job comes back without us. Any
        other SIGTERM is a cancel: the job must end (scancel requeued it again, twice, in a
        walkthrough), keeping the checkpoint just saved for `slurm resume`. Returns only when
        the job's record cannot be read (then the SIGUSR2 path requeues, as before)."""
        job_id = os.environ.get("SLURM_JOB_ID", "")
        restarts = _slurm_restarts(job_id)
        if restarts is None:
            return
        if restarts > restart:
            append_event(self.run_dir, "requeued", job_id=_job_id(), restart=restart,
                         reason="requeued by SLURM (scontrol requeue or pre-emption); "
                                "checkpoint saved")
            raise SystemExit(EXIT_PREEMPTED)
        append_event(self.run_dir, "cancelled", job_id=_job_id(), restart=restart, step=step,
                     reason="SIGTERM (scancel); checkpoint saved, not requeued")
        print(f"SIGTERM: the job was cancelled (scancel), so it is not requeued; `seq2seq-es "
              f"slurm resume` continues it from its checkpoint at step {step}", file=sys.stderr,
              flush=True)
        raise SystemExit(EXIT_PREEMPTED)

    def _out_of_requeues_message(self, restart: int, step: int | None,
                                 before_training: bool = False) -> str:
        """The job's last line when its requeues are used up: not requeued, what was saved,
        and what continues it (a sweep's run is resumed through its sweep folder). Before
        training (a signal while the model loads) `step` is the latest checkpoint, if any."""
        run_dir = Path(self.run_dir)
        folder = (run_dir.parent if (run_dir.parent / run_files.SWEEP_MANIFEST).is_file()
                  else run_dir)
        when = "before training started, " if before_training else ""
        resume = f"`seq2seq-es slurm resume {folder}`"
        if step is not None:
            saved = f"its checkpoint at step {step} is kept, and {resume} continues it"
        elif before_training:
            saved = f"no checkpoint was saved yet, and {resume} starts it again"
        else:
            saved = f"its last checkpoint is kept, and {resume} continues it"
        return (f"out of requeues (max_requeues {self.max_requeues}, pre-empted {when}after "
                f"{restart} requeue(s)): the job is not requeued; {saved}")

    def _mark_out_of_requeues(self, restart: int) -> None:
        marker = Path(self.run_dir) / run_files.OUT_OF_REQUEUES
        marker.write_text(json.dumps({"job_id": _job_id(), "restarts": restart,
                                      "max_requeues": self.max_requeues}) + "\n")
        append_event(self.run_dir, "out_of_requeues", job_id=_job_id(), restart=restart)

    def _link_logs(self, rank: int) -> None:
        """Every rank's log, reachable from the run folder (array jobs share one submitit folder)."""
        try:
            paths = submitit.JobEnvironment().paths
        except Exception:  # outside a submitit job (direct call): nothing to link
            return
        logs = Path(self.run_dir) / run_files.LOGS
        logs.mkdir(exist_ok=True)
        for source in (paths.stdout, paths.stderr):
            link = logs / f"rank{rank}{source.suffix}"
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(source)


# The status this task's process ends with, once TrainJob.__call__ has raised; None after it
# returned (submitit then saves the result, and the status follows from what it saved).
_task_exit: dict[str, Any] = {"status": None, "registered": False}


def _leave_without_teardown() -> None:
    """atexit handler of a task that ran training: end the process as process_exit.leave does,
    with the status the interpreter would have used, instead of finalizing (where the process
    groups' worker threads can abort a finished task, and srun's --kill-on-bad-exit would then
    kill a rank 0 that has not yet requeued the job). Registered when the job starts, it runs
    after the handlers registered during training (trackers) and before those registered at
    start-up, of which only logging's matters: its shutdown is called here."""
    if not process_exit.must_leave_without_teardown():
        return
    status = _task_exit["status"]
    if status is None:  # returned: submitit saved ("success", result), or ("error", ...) and raised
        try:
            outcome = submitit.core.utils.pickle_load(submitit.JobEnvironment().paths.result_pickle)
        except Exception:  # nothing saved: the interpreter decides, as without this handler
            return
        status = 0 if outcome[0] == "success" else 1
    logging.shutdown()
    process_exit.leave(status, exit_handlers=False)


def limit_threads_to_allocation(environ=None) -> int | None:
    """torch's CPU threads as many as the CPUs SLURM gave the task (SLURM_CPUS_PER_TASK), where
    the user set no OMP_NUM_THREADS: on a node without CPU binding each task's torch took every
    core, and two 1-CPU jobs on one node ran 30-50x slower than one alone. The number set, or
    None where nothing was changed."""
    environ = os.environ if environ is None else environ
    cpus = environ.get("SLURM_CPUS_PER_TASK", "")
    if "OMP_NUM_THREADS" in environ or not cpus.isdigit() or int(cpus) < 1:
        return None
    environ["OMP_NUM_THREADS"] = cpus
    import torch  # its pool may already be sized: set it too

    torch.set_num_threads(int(cpus))
    return int(cpus)


def _preempted_record(run_dir: str) -> dict:
    try:
        record = json.loads((Path(run_dir) / run_files.PREEMPTED).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _slurm_restarts(job_id: str) -> int | None:
    """How many times SLURM has requeued the job so far (scontrol's Restarts), or None when
    the record cannot be read."""
    if not job_id:
        return None
    try:
        result = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                                text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"\bRestarts=(\d+)", result.stdout)
    return int(found.group(1)) if result.returncode == 0 and found else None


def _job_id() -> str:
    """The id users see: <array job>_<index> for array tasks, else SLURM_JOB_ID."""
    array_id = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_id:
        return f"{array_id}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return os.environ.get("SLURM_JOB_ID", "")


class _StopMarkers:
    """Whether this run has written DONE or PREEMPTED since it started (compared by inode and
    mtime, not by clock, so a file server's clock does not matter)."""

    def __init__(self, run_dir: str | Path):
        self.paths = [Path(run_dir) / name for name in (run_files.DONE, run_files.PREEMPTED)]
        self.at_start = [self._identity(path) for path in self.paths]

    @staticmethod
    def _identity(path: Path):
        try:
            stat = path.stat()
        except OSError:
            return None
        return stat.st_ino, stat.st_mtime_ns

    def written_since_start(self) -> bool:
        for path, before in zip(self.paths, self.at_start):
            now = self._identity(path)
            if now is not None and now != before:
                return True
        return False


def _guard_submitit_handler(run_dir: str) -> None:
    """Wrap submitit's SIGUSR2 handler: ignored once training has stopped, and its requeue exit
    raised as RequeuedBySubmitit. Outside a submitit job (no Python handler) nothing changes."""
    submitit_handler = signal.getsignal(signal.SIGUSR2)
    if not callable(submitit_handler):
        return
    markers = _StopMarkers(run_dir)

    def handler(signum: int, frame: Any) -> None:
        if markers.written_since_start():
            print(f"ignoring {signal.Signals(signum).name}: training already stopped",
                  file=sys.stderr, flush=True)
            return
        try:
            submitit_handler(signum, frame)
        except OutOfRequeuesError:
            raise  # TrainJob.checkpoint's own ending: not requeued
        except SystemExit as exit_:
            raise RequeuedBySubmitit(exit_.code) from None

    signal.signal(signal.SIGUSR2, handler)


def _ignore_stop_signals() -> None:
    # SIG_IGN, not a Python handler: Python restores SIG_DFL for its handlers at shutdown.
    for sig in (signal.SIGUSR2, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
