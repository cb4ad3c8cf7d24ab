"""`slurm status` and `slurm collect`: job states, progress, errors and the results table.

Job states come from `scontrol show job` (pending, running and recently finished jobs), then
`sacct` (older jobs, where accounting is configured), then the files the job left: submitit's
result pickles, the run's OUT_OF_REQUEUES marker and its slurm_events.jsonl. Neither command
waits for a job. Metrics come from each run's metrics.jsonl; a half-written last line (the run is
still writing) is skipped, so both commands can run while jobs are going.
"""

from __future__ import annotations

import csv
import io
import json
import math
import pickle
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..errors import DataError
from .job import DONE_FILE, EVENTS_FILE, OUT_OF_REQUEUES_FILE
from .sweep import Manifest, RunPlan, describe_grid_point

METRICS_FILE = "metrics.jsonl"
FAILED_STATES = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
                 "DEADLINE", "PREEMPTED", "OUT_OF_REQUEUES", "REVOKED"}
FINISHED_STATES = FAILED_STATES | {"COMPLETED"}
# Metric names where lower is better; everything else in a results table is maximised.
_LOWER_IS_BETTER = ("loss", "perplexity", "ppl", "ter", "wer", "cer")
# Bookkeeping keys that are not task metrics.
_NOT_TASK_METRICS = ("loss", "runtime", "per_second", "tokens_per_s", "samples", "lr", "time",
                     "gen_len", "steps")
_KEY_VALUE = re.compile(r"(\w+)=(\S*)")


@dataclass
class SlurmState:
    state: str
    reason: str = ""
    restarts: int = 0
    exit_code: str = ""


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
    step: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    log: str | None = None
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.state in FAILED_STATES


# ---- SLURM queries ---------------------------------------------------------------------------

def _expand_task_ids(spec: str) -> list[str]:
    """'0-3%2' / '1,4-5' -> ['0', '1', ...] (ArrayTaskId of a pending array record)."""
    spec = spec.split("%", 1)[0]
    ids: list[str] = []
    for part in spec.split(","):
        if "-" in part:
            low, high = part.split("-", 1)
            ids.extend(str(i) for i in range(int(low), int(high) + 1))
        elif part:
            ids.append(part)
    return ids


def parse_scontrol_jobs(text: str) -> dict[str, SlurmState]:
    """`scontrol show job -o` lines -> {job id as submitit names it ('12' or '12_3'): state}."""
    states: dict[str, SlurmState] = {}
    for line in text.splitlines():
        fields = dict(_KEY_VALUE.findall(line))
        if "JobId" not in fields or "JobState" not in fields:
            continue
        state = SlurmState(state=fields["JobState"], reason=fields.get("Reason", ""),
                           restarts=int(fields.get("Restarts", "0") or 0),
                           exit_code=fields.get("ExitCode", ""))
        array_id, task_spec = fields.get("ArrayJobId"), fields.get("ArrayTaskId")
        if array_id and task_spec:
            for task_id in _expand_task_ids(task_spec):
                states[f"{array_id}_{task_id}"] = state
        else:
            states[fields["JobId"]] = state
    return states


def parse_sacct(text: str) -> dict[str, SlurmState]:
    """`sacct -n -P -X -o JobID,State,ExitCode` -> states ('CANCELLED by 0' -> 'CANCELLED')."""
    states: dict[str, SlurmState] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 3 or not parts[0]:
            continue
        job_id, state, exit_code = parts[0], parts[1].split()[0] if parts[1] else "", parts[2]
        states[job_id] = SlurmState(state=state, exit_code=exit_code)
    return states


def query_slurm(job_ids: Iterable[str]) -> dict[str, SlurmState]:
    """States of the given jobs that SLURM still knows; missing ids are simply absent."""
    job_ids = [job_id for job_id in job_ids if job_id]
    states: dict[str, SlurmState] = {}
    if shutil.which("scontrol"):
        for base in sorted({job_id.split("_", 1)[0] for job_id in job_ids}):
            result = subprocess.run(["scontrol", "show", "job", "-o", base], capture_output=True,
                                    text=True, timeout=60)
            if result.returncode == 0:
                states.update(parse_scontrol_jobs(result.stdout))
    missing = [job_id for job_id in job_ids if job_id not in states]
    if missing and shutil.which("sacct"):
        command = ["sacct", "-n", "-P", "-X", "-o", "JobID,State,ExitCode"]
        for job_id in missing:
            command += ["-j", job_id]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if result.returncode == 0:  # without accounting storage sacct fails: files decide then
            found = parse_sacct(result.stdout)
            states.update({job_id: found[job_id] for job_id in missing if job_id in found})
    return states


# ---- run folders -----------------------------------------------------------------------------

def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """metrics.jsonl records; a broken line in the middle is an error, a broken last line is
    skipped (the run is writing it)."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for row, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if row == len(lines):
                break
            raise DataError(f"not valid JSON ({exc.msg})", file=str(path), row=row) from None
        if not isinstance(record, dict):
            raise DataError("expected a JSON object", file=str(path), row=row)
        records.append(record)
    return records


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
    path = Path(run_dir) / EVENTS_FILE
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a killed job
    return events


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
    lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines()
             if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:"):
            return line[len("error:"):].strip()
    for line in reversed(lines):
        if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b.*", line):
            return line
    for line in reversed(lines):
        if line.startswith("slurmstepd") and "***" in line:
            return line[line.index("***"):]
    return None


def failure_details(folder: str, job_id: str, num_tasks: int) -> tuple[str | None, str | None]:
    """(error message, log path) of the task that failed first.

    When one rank fails, the others usually fail next with a collective error ("connection closed
    by peer"); the result pickle written first belongs to the rank that caused it.
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
            raised.append((written, task, message, paths.stderr))
        elif outcome is None and log_error:
            logged.append((log_error, paths.stderr))
    if raised:
        _, _, message, log = min(raised)
        return message, str(log)
    if logged:
        return logged[0][0], str(logged[0][1])
    return None, str(_job_paths(folder, job_id, 0).stderr)


def run_status(run: RunPlan, manifest: Manifest, slurm: dict[str, SlurmState]) -> RunStatus:
    run_dir = Path(run.run_dir)
    status = RunStatus(name=run.name, model=run.model, task=run.task, grid_point=run.grid_point,
                       run_dir=run.run_dir, job_id=run.job_id, state="NOT_SUBMITTED")
    try:
        status.step, status.metrics = latest_metrics(read_metrics(run_dir / METRICS_FILE))
    except DataError as exc:
        status.note = str(exc)
    events = read_events(run_dir)
    status.restarts = max([int(e.get("restart", 0)) for e in events] or [0])
    if run.job_id is None:
        return status
    known = slurm.get(run.job_id)
    if known is not None:
        status.state, status.restarts = known.state, max(status.restarts, known.restarts)
        if known.state == "PENDING" and known.restarts:
            status.note = status.note or f"requeued, waiting ({known.reason})"
    else:
        status.state = _state_from_files(manifest.submitit_folder, run.job_id, events)
    if (run_dir / OUT_OF_REQUEUES_FILE).exists() and status.state not in ("PENDING", "RUNNING"):
        status.state = "OUT_OF_REQUEUES"
        status.note = f"out of requeues (max_requeues {manifest.slurm.get('max_requeues')})"
    if status.failed:
        status.error, status.log = failure_details(manifest.submitit_folder, run.job_id,
                                                   manifest.tasks_per_job)
        status.error = status.error or _ENDED_BY_SLURM.get(status.state)
    return status


# What a job's state says when its tasks left no error of their own.
_ENDED_BY_SLURM = {
    "CANCELLED": "cancelled (scancel, or an administrator)",
    "TIMEOUT": "killed at its time limit without a requeue: raise --signal-delay-s so that the "
               "checkpoint fits before the limit",
    "NODE_FAIL": "a node of the job failed",
    "OUT_OF_MEMORY": "killed by SLURM for using more memory than it asked for (--mem-gb)",
    "PREEMPTED": "pre-empted and not requeued (the cluster's PreemptMode cancels)",
}


def _state_from_files(folder: str, job_id: str, events: list[dict[str, Any]]) -> str:
    outcome = _result_outcome(folder, job_id, 0)
    if outcome is not None:
        return "COMPLETED" if outcome[0] == "success" else "FAILED"
    if events and events[-1].get("event") == "finished":
        return "COMPLETED"
    if events and events[-1].get("event") in ("failed", "out_of_requeues"):
        return "FAILED"
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
    header = ("RUN", "JOB", "STATE", "STEP", "METRICS")
    rows = [(s.name, s.job_id or "-", s.state + (f" (restarts {s.restarts})" if s.restarts else ""),
             "-" if s.step is None else str(s.step), _shown_metrics(s.metrics)) for s in statuses]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    lines = [f"{manifest.path}: {len(statuses)} run(s)"]
    for row, status in zip([header, *rows], [None, *statuses]):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4])
        if status is None:
            continue
        if status.note:
            lines.append(f"    note: {status.note}")
        if status.failed:
            lines.append(f"    error: {status.error or 'no error message found'}")
            lines.append(f"    log: {status.log}")
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status.state] = counts.get(status.state, 0) + 1
    lines.append("summary: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    return "\n".join(lines)


def status_json(statuses: list[RunStatus]) -> str:
    from dataclasses import asdict

    return json.dumps([asdict(status) for status in statuses], indent=1)


# ---- collect ---------------------------------------------------------------------------------

@dataclass
class Cell:
    value: float
    grid_point: dict[str, str]
    final: bool


@dataclass
class ResultsTable:
    models: list[str]
    columns: list[tuple[str, str]]          # (task, metric)
    cells: dict[tuple[str, str, str], Cell]  # (model, task, metric) -> best grid point
    grid_labels: dict[str, str]             # describe_grid_point(point) -> 'g1', 'g2', ...


def is_task_metric(metric: str) -> bool:
    return not any(word in metric for word in _NOT_TASK_METRICS)


def lower_is_better(metric: str) -> bool:
    return any(word in metric.lower() for word in _LOWER_IS_BETTER)


def final_metrics(run_dir: Path, split: str) -> dict[str, float]:
    """The latest value of every `<split>/<metric>` task metric of the run."""
    _, latest = latest_metrics(read_metrics(run_dir / METRICS_FILE))
    prefix = f"{split}/"
    out = {}
    for key, value in latest.items():
        if not key.startswith(prefix) or isinstance(value, bool):
            continue
        metric = key[len(prefix):]
        if isinstance(value, (int, float)) and math.isfinite(value) and is_task_metric(metric):
            out[metric] = float(value)
    return out


def build_table(manifest: Manifest, split: str = "eval",
                metrics: list[str] | None = None) -> ResultsTable:
    models: list[str] = []
    columns: list[tuple[str, str]] = []
    cells: dict[tuple[str, str, str], Cell] = {}
    labels: dict[str, str] = {}
    for run in manifest.runs:
        labels.setdefault(describe_grid_point(run.grid_point), f"g{len(labels) + 1}")
        if run.model not in models:
            models.append(run.model)
        run_dir = Path(run.run_dir)
        values = final_metrics(run_dir, split)
        final = (run_dir / DONE_FILE).exists()
        for metric, value in values.items():
            if metrics and metric not in metrics:
                continue
            if (run.task, metric) not in columns:
                columns.append((run.task, metric))
            key = (run.model, run.task, metric)
            best = cells.get(key)
            better = (best is None or (value < best.value if lower_is_better(metric)
                                       else value > best.value))
            if better:
                cells[key] = Cell(value=value, grid_point=run.grid_point, final=final)
    task_order = list(dict.fromkeys(run.task for run in manifest.runs))
    columns.sort(key=lambda column: task_order.index(column[0]))
    return ResultsTable(models=models, columns=columns, cells=cells, grid_labels=labels)


def _number(value: float) -> str:
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4f}"


def format_markdown(table: ResultsTable) -> str:
    if not table.columns:
        return "No final metrics yet (no run has written metrics.jsonl with evaluation results)."
    header = ["model"] + [f"{task} {metric}" for task, metric in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    any_partial = False
    for model in table.models:
        cells = [model]
        for task, metric in table.columns:
            cell = table.cells.get((model, task, metric))
            if cell is None:
                cells.append("–")
                continue
            label = table.grid_labels[describe_grid_point(cell.grid_point)]
            mark = "" if cell.final else "*"
            any_partial = any_partial or not cell.final
            cells.append(f"{_number(cell.value)} ({label}){mark}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Each cell: the best grid point of that model and task metric, named in brackets:")
    for description, label in table.grid_labels.items():
        lines.append(f"- {label}: {description}")
    if any_partial:
        lines.append("")
        lines.append("* from a run that has not finished: not final")
    return "\n".join(lines) + "\n"


def format_csv(table: ResultsTable) -> str:
    """Same layout as the markdown table, with the best grid point in a column beside each value."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["model"]
    for task, metric in table.columns:
        header += [f"{task} {metric}", f"{task} {metric} grid point", f"{task} {metric} final"]
    writer.writerow(header)
    for model in table.models:
        row: list[str] = [model]
        for task, metric in table.columns:
            cell = table.cells.get((model, task, metric))
            if cell is None:
                row += ["", "", ""]
            else:
                row += [repr(cell.value), describe_grid_point(cell.grid_point),
                        "yes" if cell.final else "no"]
        writer.writerow(row)
    return buffer.getvalue()
