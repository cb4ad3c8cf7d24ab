"""`slurm status`: job states, progress, and failure details read from the run folders.

Job states come from `scontrol show job` (pending, running and recently finished jobs), then
`sacct` (older jobs, where accounting is configured), then the files the job left: submitit's
result pickles, the run's OUT_OF_REQUEUES marker and its slurm_events.jsonl. It never waits for
a job. Metrics come from each run's metrics.jsonl (read_metrics, which is
`seq2seq_es.metrics_log.read`: one record per step; a half-written last line, the run still
writing it, is skipped, so status can run while jobs are going) and final_results.json
(read_final_results). `slurm collect`'s results table is results_table.py, which reads a run's
final_results.json with read_final_results from here: one reader for both commands.
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import run_files
from ..errors import DataError, json_problem, lost_contact
# The one metrics.jsonl reader (merges a step's records, keeping the last values).
from ..metrics_log import read as read_metrics
from .job import DEFAULT_ENTRY
# SLURM's answers (re-exported: status, resume and the tests read them from here).
from .queries import SlurmState, parse_sacct, parse_scontrol_jobs, query_slurm  # noqa: F401
from .sweep import SEED_AXIS, Manifest, RunPlan

FAILED_STATES = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
                 "DEADLINE", "PREEMPTED", "OUT_OF_REQUEUES", "REVOKED"}
FINISHED_STATES = FAILED_STATES | {"COMPLETED"}


@dataclass
class RunStatus:
    name: str
    model: str
    task: str
    grid_point: dict[str, str]
    run_dir: str
    job_id: str | None
    state: str
    restarts: int = 0
    step: int | None = None        # the last step metrics.jsonl has
    saved_step: int | None = None  # the latest complete checkpoint: where a resume starts
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    log: str | None = None
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.state in FAILED_STATES


# ---- run folders -----------------------------------------------------------------------------

def latest_metrics(records: list[dict[str, Any]]) -> tuple[int | None, dict[str, Any]]:
    """(last step, the latest value of every metric key) over the records."""
    step = None
    values: dict[str, Any] = {}
    for record in records:
        if isinstance(record.get("step"), int):
            step = record["step"] if step is None else max(step, record["step"])
        for key, value in record.items():
            if key not in ("step", "time"):
                values[key] = value
    return step, values


def read_events(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / run_files.SLURM_EVENTS
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a killed job
    return events


def read_final_results(path: str | Path) -> dict[str, Any] | None:
    """final_results.json of a finished run (the training engine writes it last), or None."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON ({json_problem(exc)})", file=str(path),
                        line=exc.lineno) from None
    if not isinstance(data, dict) or not isinstance(data.get("validation"), dict):
        raise DataError("expected an object with a 'validation' mapping", file=str(path))
    return data


def _job_paths(folder: str, job_id: str, task: int):
    from submitit.core.utils import JobPaths

    return JobPaths(folder, job_id=job_id, task_id=task)


def _result_outcome(folder: str, job_id: str, task: int) -> tuple[str, Any] | None:
    path = _job_paths(folder, job_id, task).result_pickle
    if not path.is_file():
        return None
    try:
        with path.open("rb") as handle:
            outcome = pickle.load(handle)
    except Exception:  # a pickle being written, or one from another library version
        return None
    return outcome if isinstance(outcome, tuple) and len(outcome) == 2 else None


def _error_line_in_log(log: Path) -> str | None:
    """The most telling line of a task's stderr: the CLI's `error: ...`, else the last exception,
    else SLURM's own `*** ... CANCELLED ... ***` notice (time limit, scancel)."""
    if not log.is_file():
        return None
    # torch prefixes the lines a rank prints once its process group is up (`[rank0]: ...`).
    lines = [_RANK_PREFIX.sub("", line.strip())
             for line in log.read_text(encoding="utf-8", errors="replace").splitlines()
             if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:"):
            return line[len("error:"):].strip()
    for line in reversed(lines):
        if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b.*", line):
            return line
    for line in reversed(lines):
        # The log goes on across requeues: a "DUE TO JOB REQUEUE" notice belongs to a start
        # that SLURM brought back, never to how the job ended (it was quoted for a job that
        # ran out of requeues two starts later).
        if line.startswith("slurmstepd") and "***" in line and "DUE TO JOB REQUEUE" not in line:
            return line[line.index("***"):]
    return None


_RANK_PREFIX = re.compile(r"^\[rank\d+\]:\s*")


def failure_details(folder: str, job_id: str, num_tasks: int) -> tuple[str | None, str | None]:
    """(error message, log path) of the task that failed first.

    When one rank fails, the others usually fail next with a collective error ("connection closed
    by peer"); the result pickle written first belongs to the rank that caused it. Such an error
    (`errors.lost_contact`) gives way to any other, whenever written: a rank that lost contact
    in the same instant as the failing rank reported may have written first.
    """
    raised: list[tuple[float, int, str, Path]] = []
    logged: list[tuple[str, Path]] = []
    for task in range(num_tasks):
        paths = _job_paths(folder, job_id, task)
        outcome = _result_outcome(folder, job_id, task)
        log_error = _error_line_in_log(paths.stderr)
        if outcome is not None and outcome[0] == "error":
            lines = [line for line in str(outcome[1]).strip().splitlines() if line.strip()]
            last = lines[-1].strip() if lines else "error"
            message = f"{log_error} ({last})" if log_error and log_error not in last else last
            written = paths.result_pickle.stat().st_mtime
            raised.append((lost_contact(last) is not None, written, task, message, paths.stderr))
        elif outcome is None and log_error:
            logged.append((log_error, paths.stderr))
    if raised:
        *_, message, log = min(raised)
        return message, str(log)
    if logged:
        return logged[0][0], str(logged[0][1])
    return None, str(_job_paths(folder, job_id, 0).stderr)


def run_status(run: RunPlan, manifest: Manifest, slurm: dict[str, SlurmState]) -> RunStatus:
    run_dir = Path(run.run_dir)
    status = RunStatus(name=run.name, model=run.model, task=run.task, grid_point=run.grid_point,
                       run_dir=run.run_dir, job_id=run.job_id, state="NOT_SUBMITTED")
    try:
        status.step, status.metrics = latest_metrics(read_metrics(run_dir / run_files.METRICS))
    except DataError as exc:
        status.note = str(exc)
    try:
        final = read_final_results(run_dir / run_files.FINAL_RESULTS)
    except DataError:
        final = None
    if final is not None:
        # A finished run went back to its best checkpoint: its result is that step's validation
        # and test scores, not the last validation metrics.jsonl logged (shown beside the test
        # of another step, they made a dev / test pair that no checkpoint has).
        status.metrics = {key: value for key, value in status.metrics.items()
                          if not key.startswith(("eval/", "test/"))}
        for split, prefix in (("validation", "eval/"), ("test", "test/")):
            status.metrics.update({prefix + key: value
                                   for key, value in (final.get(split) or {}).items()})
        if final.get("best_step") is not None and final.get("best_step") != status.step:
            status.note = "; ".join(part for part in (
                status.note, f"eval/ and test/ metrics: best step {final['best_step']} "
                             "(final_results.json)") if part)
    saved = run_files.complete_checkpoints(run_dir / run_files.CHECKPOINTS)
    status.saved_step = saved[-1][0] if saved else None
    # The current job's events only: after `slurm resume` the file also holds the earlier
    # jobs', and a resumed job showed their restart count (and their ending) as its own.
    events = [event for event in read_events(run_dir)
              if run.job_id is not None and str(event.get("job_id", "")) == run.job_id]
    status.restarts = max([int(e.get("restart", 0)) for e in events] or [0])
    if run.job_id is None:
        return status
    known = slurm.get(run.job_id)
    if known is not None:
        status.state, status.restarts = known.state, max(status.restarts, known.restarts)
        if known.state == "PENDING":
            note = pending_note(run.job_id, known)
            status.note = "; ".join(part for part in (status.note, note) if part)
    else:
        status.state = _state_from_files(manifest.submitit_folder, run.job_id, events)
        if (status.state == "UNKNOWN" and not events
                and not _job_paths(manifest.submitit_folder, run.job_id, 0).stderr.exists()):
            # a bare UNKNOWN it was: a job cancelled while pending, once SLURM forgot it
            way_on = (RESUME_HINT if status.saved_step is not None else NO_CHECKPOINT_HINT)
            status.note = "; ".join(part for part in (status.note, (
                f"SLURM no longer knows job {run.job_id}, which left no log: it never started "
                "(cancelled while it waited?)" + way_on)) if part)
    out_of_requeues = _out_of_requeues_record(run_dir, run.job_id)
    if out_of_requeues is not None and status.state not in ("PENDING", "RUNNING"):
        status.state = "OUT_OF_REQUEUES"
    if status.failed:
        status.error, status.log = failure_details(manifest.submitit_folder, run.job_id,
                                                   manifest.tasks_per_job)
        ended = _ENDED_BY_SLURM.get(status.state)
        if status.state == "FAILED" and status.error and status.error.startswith("***"):
            # `*** STEP n.0 ON node CANCELLED AT ... ***` and nothing of the run's own: its task
            # was killed (the process or its srun, not a Python error), which a resume continues
            ended = ("its task was killed (the process or its srun ended by a signal, not by "
                     f"an error of its own; SLURM said: {status.error.strip('* ').strip()})"
                     + RESUME_HINT)
        if ended and (status.error is None or status.error.startswith("***")):
            # SLURM's own `*** JOB n ... CANCELLED AT ... ***` notice (another id for an array
            # task) says neither why nor how to go on: the tool's line for the state does.
            status.error = ended
    if status.state == "OUT_OF_REQUEUES":
        # Said from the marker, not from the log: the log holds every start of the job, and its
        # last lines were an earlier start's requeue notice or the job's own farewell.
        status.error = _out_of_requeues_message(
            out_of_requeues.get("max_requeues", manifest.slurm.get("max_requeues")),
            status.saved_step, manifest, run)
    if (status.state in ("CANCELLED", "UNKNOWN") and events
            and events[-1].get("event") == "cancelled"):
        # scancel: the job saved before it ended (slurm.job), which SLURM's notice does not say
        status.state = "CANCELLED"
        status.error = (f"cancelled (scancel) after saving a checkpoint at step "
                        f"{events[-1].get('step')}" + RESUME_HINT)
    elif status.saved_step is None and manifest.entry == DEFAULT_ENTRY:
        # A training run that never completed a checkpoint starts again from its first step.
        status.note = status.note and status.note.replace(RESUME_HINT, NO_CHECKPOINT_HINT)
        status.error = status.error and status.error.replace(RESUME_HINT, NO_CHECKPOINT_HINT)
    if status.failed or status.state == "UNKNOWN":
        # Its job ended, yet a process trains in its folder: a job the manifest no longer tracks
        # (two resumes at once: the tracked one failed on the folder's lock). It read FAILED
        # only, while the run trained.
        from ..engine.run_lock import describe_holder, training_now
        holder = training_now(run_dir)
        if holder is not None:
            status.note = "; ".join(part for part in (
                status.note, f"training now, in a process this sweep does not track "
                             f"({describe_holder(holder)})") if part)
    return status


# Pending reasons (SLURM's job reason codes) under which a job cannot start as it was submitted:
# the request is outside what its partition, account or QOS allows, so it waits until the request
# or the limits change, and squeue shows nothing but PENDING and the code. Left out: reasons that
# pass by themselves (Priority, Resources, Dependency, BeginTime, JobArrayTaskLimit, the
# aggregate Grp* limits), and ReqNodeNotAvail, which SLURM also shows for nodes that are busy,
# reserved or briefly unavailable during backfill (pending_note says which nodes, when SLURM
# names them). Value: what the reason means for this job, then what to submit instead.
_NEVER_STARTS: dict[str, tuple[str, str]] = {
    "PartitionNodeLimit": ("it asks for more (or fewer) nodes than its partition allows, or the "
                           "partition's nodes are down or drained", "fewer --nodes"),
    "PartitionTimeLimit": ("its time limit is above its partition's", "a shorter --time"),
    "PartitionConfig": ("its request does not fit its partition's configuration (node count, "
                        "time limit, GPUs, CPUs or memory)", "fewer --nodes, a shorter --time or a "
                                                       "smaller request"),
    "BadConstraints": ("no node has what it asks for (--constraint, or GPUs, CPUs or memory per "
                       "node)", "another --constraint or a smaller request"),
    "InvalidAccount": ("its account is not valid", "another --account"),
    "InvalidQOS": ("its QOS is not valid", "another --qos"),
    "AccountNotAllowed": ("its account may not use the partition", "another --account or "
                                                                    "--partition"),
    "QOSNotAllowed": ("its QOS may not be used in the partition", "another --qos or "
                                                                  "--partition"),
    "DependencyNeverSatisfied": ("a job it depends on ended in a way that can never satisfy "
                                 "the dependency", "no such dependency (`--sbatch dependency=` "
                                 "drops the one it carries)"),
}
# "A portion of the job request exceeds a maximum limit (e.g., PerJob, PerNode) for the requested
# association/QOS" (AssocMaxNodesPerJobLimit, QOSMaxWallDurationPerJobLimit, QOSMaxGRESPerNode,
# ...); not AssocMaxJobsLimit or QOSMaxJobsPerUserLimit, which count running jobs and pass. And
# QOSMin* (QOSMinGRES, QOSMinCpuNotSatisfied, ...): the request is below the QOS's minimum.
_PER_JOB_LIMIT = re.compile(r"^(Assoc|QOS)Max\w*Per(Job|Node)")
_QOS_MINIMUM = re.compile(r"^QOSMin")


def never_starts(reason: str) -> tuple[str, str] | None:
    """(what it means, what to submit instead) for a pending reason under which the job cannot
    start as submitted, else None. `reason` as scontrol shows it (ReqNodeNotAvail,_Unavail...)."""
    code = reason.split(",", 1)[0]
    if code in _NEVER_STARTS:
        return _NEVER_STARTS[code]
    if _PER_JOB_LIMIT.match(code):
        return ("it asks for more than a per-job or per-node limit of its account or QOS allows",
                "a smaller request (nodes, GPUs, CPUs, memory or --time)")
    if _QOS_MINIMUM.match(code):
        return ("it asks for less than its QOS's minimum", "a larger request or another --qos")
    return None


def pending_note(job_id: str, state: SlurmState) -> str:
    """Why a pending job waits: SLURM's reason, for every pending job (squeue's NODELIST(REASON)),
    and for a reason under which it cannot start as submitted, that it will not start by itself
    and what to do."""
    # scontrol writes the reason's spaces as underscores (ReqNodeNotAvail,_Reserved_for_maintenance)
    # where squeue shows them; None: the scheduler has not looked at the job yet.
    code, comma, detail = state.reason.partition(",")
    reason = "" if code == "None" else code + comma + detail.replace("_", " ")
    if not reason:
        return "requeued, waiting" if state.restarts else ""
    note = f"{'requeued, waiting' if state.restarts else 'waiting to start'} ({reason})"
    if reason == "JobArrayTaskLimit":
        note += ": at most --max-parallel runs of the sweep run at once"
    if reason.startswith("ReqNodeNotAvail, UnavailableNodes:"):
        # Nodes that are down, drained or not responding: SLURM waits for an administrator to
        # return them. Not certain never to start (backfill lists nodes here for a while too).
        note += (": the nodes it needs are down, drained or not responding; it starts once they "
                 "are back (`sinfo -R` says why they are out), or submitted to fewer or other "
                 "nodes")
    elif reason == "ReqNodeNotAvail, Reserved for maintenance":
        note += (": its time limit reaches into a maintenance reservation; it starts after the "
                 "maintenance, or before it if submitted with a shorter --time")
    blocked = never_starts(state.reason)
    if blocked is not None:
        meaning, instead = blocked
        note += (f": {meaning}, so it will not start until the request or the partition "
                 f"changes; scancel {job_id} and `seq2seq-es slurm resume` its folder with "
                 f"{instead}")  # a new submit into the run's folder is refused
    return note


# What a job's state says when its tasks left no error of their own.
RESUME_HINT = "; `seq2seq-es slurm resume` continues it from its last checkpoint"
NO_CHECKPOINT_HINT = ("; it saved no checkpoint, so `seq2seq-es slurm resume` starts it again "
                      "from its first step")
_ENDED_BY_SLURM = {
    "CANCELLED": "cancelled (scancel, or an administrator)" + RESUME_HINT,
    "TIMEOUT": "killed at its time limit without a requeue: raise --signal-delay-s so that the "
               "checkpoint fits before the limit" + RESUME_HINT,
    "NODE_FAIL": "a node of the job failed" + RESUME_HINT,
    "OUT_OF_MEMORY": "killed by SLURM for using more memory than it asked for; `seq2seq-es "
                     "slurm resume --mem-gb GB` continues it from its last checkpoint with more",
    "PREEMPTED": "pre-empted and not requeued (the cluster's PreemptMode cancels)" + RESUME_HINT,
}


def _out_of_requeues_record(run_dir: Path, job_id: str | None) -> dict[str, Any] | None:
    """The run's OUT_OF_REQUEUES marker (job_id, restarts, max_requeues) when it is the current
    job's; None without one. A marker of an earlier job (a resumed job that has not started
    yet, which would remove it) says nothing of this one; an unreadable one counts as this
    job's (it was written by a job that could not finish writing it)."""
    path = run_dir / run_files.OUT_OF_REQUEUES
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict):
        return {}
    if record.get("job_id") and job_id is not None and str(record["job_id"]) != job_id:
        return None
    return record


def _out_of_requeues_message(max_requeues: Any, saved_step: int | None, manifest: Manifest,
                             run: RunPlan) -> str:
    """What a run out of requeues left, and the command that continues it (the folder `slurm
    resume` takes: the sweep's for a sweep's run)."""
    folder = Path(manifest.path) if manifest.path else Path(run.run_dir)
    if folder.suffix == ".json":
        folder = folder.parent
    resume = f"`seq2seq-es slurm resume {folder}`"
    if str(max_requeues) == "0":
        # The resumed job keeps the submitted settings: with 0 the next pre-emption ends it
        # the same way, so the way out names the flag that lets SLURM requeue it.
        resume = f"`seq2seq-es slurm resume {folder} --max-requeues N`"
    head = f"out of requeues (max_requeues {max_requeues})"
    if saved_step is not None:
        return f"{head}: checkpoint at step {saved_step}; {resume} continues it"
    if manifest.entry == DEFAULT_ENTRY:
        return f"{head}: it saved no checkpoint, so {resume} starts it again from its first step"
    return f"{head}; {resume} continues it from its last checkpoint"


def _state_from_files(folder: str, job_id: str, events: list[dict[str, Any]]) -> str:
    outcome = _result_outcome(folder, job_id, 0)
    if outcome is not None:
        return "COMPLETED" if outcome[0] == "success" else "FAILED"
    if events and events[-1].get("event") == "finished":
        return "COMPLETED"
    if events and events[-1].get("event") in ("failed", "out_of_requeues"):
        return "FAILED"
    # SLURM has forgotten the job (no accounting; MinJobAge passed): its own notice in the log
    # still says how it ended, where status showed a bare UNKNOWN with no way on
    notice = _error_line_in_log(_job_paths(folder, job_id, 0).stderr) or ""
    if notice.startswith("***") and "CANCELLED AT" in notice:
        return "TIMEOUT" if "DUE TO TIME LIMIT" in notice else "CANCELLED"
    return "UNKNOWN"


def sweep_status(manifest: Manifest) -> list[RunStatus]:
    slurm = query_slurm(run.job_id for run in manifest.runs if run.job_id)
    return [run_status(run, manifest, slurm) for run in manifest.runs]


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _shown_metrics(metrics: dict[str, Any]) -> str:
    keys = [key for key in metrics if key == "train/loss" or key.startswith(("eval/", "test/"))]
    return " ".join(f"{key}={_format_value(metrics[key])}" for key in keys)


def format_status(manifest: Manifest, statuses: list[RunStatus]) -> str:
    # STEP: the last logged step; SAVED: the latest checkpoint, where a requeue or `resume`
    # starts (steps after it are trained again).
    header = ("RUN", "JOB", "STATE", "STEP", "SAVED", "METRICS")
    rows = [(s.name, s.job_id or "-", s.state + (f" (restarts {s.restarts})" if s.restarts else ""),
             "-" if s.step is None else str(s.step),
             "-" if s.saved_step is None else str(s.saved_step), _shown_metrics(s.metrics))
            for s in statuses]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(5)]
    seeds = (f" ({len(manifest.seeds)} seeds per grid point: {SEED_AXIS} "
             f"{', '.join(str(seed) for seed in manifest.seeds)})" if manifest.seeds else "")
    lines = [f"{manifest.path}: {len(statuses)} run(s){seeds}"]
    for row, status in zip([header, *rows], [None, *statuses]):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[5])
        if status is None:
            continue
        if status.note:
            lines.append(f"    note: {status.note}")
        if status.failed:
            # A cancel is what someone chose, not a fault of the run: `error:` made users look
            # for a bug after their own scancel.
            label = "ended" if status.state == "CANCELLED" else "error"
            lines.append(f"    {label}: {status.error or 'no error message found'}")
            if status.log and Path(status.log).exists():
                lines.append(f"    log: {status.log}")
            elif status.log:
                # SLURM makes a job's log as it starts: one cancelled while pending has none.
                lines.append(f"    no log: the job never started ({status.log} does not exist)")
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status.state] = counts.get(status.state, 0) + 1
    lines.append("summary: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    return "\n".join(lines)


def status_json(statuses: list[RunStatus]) -> str:
    from dataclasses import asdict

    return json.dumps([asdict(status) for status in statuses], indent=1)
