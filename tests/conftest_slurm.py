"""The local SLURM cluster for tests marked `slurm`, and helpers to wait on its jobs.

`slurm_cluster` (session scope) runs `slurm/local_cluster.sh start` once (idempotent: a cluster
that already runs is reused) and exports SLURM_CONF; test modules import it from here. The
cluster is left running for the next session; `.ci/run` stops it.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = REPO / "slurm" / "local_cluster.sh"
STATE_DIR = Path(os.environ.get("SEQ2SEQ_ES_SLURM_DIR", "/tmp/seq2seq-es-slurm"))
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
            "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
REQUEUE_SETTLE_S = 2.0


@pytest.fixture(scope="session")
def slurm_cluster() -> Path:
    """Starts the two-node cluster (node1, node2) if needed; yields the path of its slurm.conf.
    Only for tests marked slurm: conftest.py refuses any other test that asks for it."""
    result = subprocess.run(["bash", str(CLUSTER_SCRIPT), "start"], capture_output=True,
                            text=True, timeout=600)
    if result.returncode != 0:
        pytest.fail(f"slurm/local_cluster.sh start failed:\n{result.stdout}\n{result.stderr}")
    conf = STATE_DIR / "etc" / "slurm.conf"
    os.environ["SLURM_CONF"] = str(conf)
    return conf


def job_fields(job_id: str) -> dict[str, str]:
    """`scontrol show job -o` of one job (or one array task) as a dict; {} when unknown."""
    result = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                            text=True, timeout=60)
    if result.returncode != 0 or not result.stdout.strip():
        return {}
    return dict(re.findall(r"(\w+)=(\S*)", result.stdout.splitlines()[0]))


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def wait_finished(job_id: str, timeout_s: float = 180, hurry_requeues: bool = True) -> dict:
    """Waits for the job to end. SLURM makes a requeued job wait 120 s (its BeginTime); with
    hurry_requeues the wait is cut by setting StartTime=now once the job has been pending again
    for REQUEUE_SETTLE_S. Not sooner: slurmd revokes the killed run's job credential with
    one-second resolution, and a restart launched within that second is refused ("Job credential
    revoked") and the job ends FAILED."""
    pending_since = None  # when this wait first saw the job held by its BeginTime

    def finished():
        nonlocal pending_since
        fields = job_fields(job_id)
        state = fields.get("JobState", "")
        if hurry_requeues and state == "PENDING" and fields.get("Reason") == "BeginTime":
            pending_since = pending_since or time.monotonic()
            if time.monotonic() - pending_since >= REQUEUE_SETTLE_S:
                subprocess.run(["scontrol", "update", f"JobId={fields['JobId']}",
                                "StartTime=now"], capture_output=True, timeout=60)
        else:
            pending_since = None
        return fields if state in FINISHED else None

    fields = wait_until(finished, timeout_s, f"job {job_id} to finish", interval_s=1.0)
    if fields["JobState"] != "COMPLETED":
        print_log_tail(fields)
    return fields


def print_log_tail(fields: dict[str, str], lines: int = 40) -> None:
    """The end of a job's stderr, into the test's captured output: pytest shows it when the test
    fails, so that a CI log says why a job did not complete (the job's files are gone by then)."""
    path = Path(fields.get("StdErr", ""))
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError as error:
        tail = [f"(cannot read it: {error})"]
    print(f"job {fields.get('JobId')} ended {fields['JobState']} "
          f"(ExitCode={fields.get('ExitCode')}); the end of {path}:", *tail, sep="\n")
