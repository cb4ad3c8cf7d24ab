"""What SLURM says about jobs: `scontrol show job` and `sacct`, parsed into SlurmState.

Its own module, below monitor (status) and sweep (submission checks), which both ask.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Iterable

_KEY_VALUE = re.compile(r"(\w+)=(\S*)")


@dataclass
class SlurmState:
    state: str
    reason: str = ""
    restarts: int = 0
    exit_code: str = ""


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
