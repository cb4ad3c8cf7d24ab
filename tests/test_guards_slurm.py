"""Guards from the fourth mutation audit of seq2seq_es/slurm/: what a cluster user relies on
and no other fast test pinned down.

- the job's own life (slurm.job.TrainJob): a pre-empted job with requeues left puts itself back
  in the queue (`scontrol requeue`) and is not reported failed; at exactly `max_requeues` it
  gives up with OUT_OF_REQUEUES; SIGTERM tells SLURM's own requeue from `scancel`; the signal
  handler ignores signals once the run has stopped;
- what SLURM says (slurm.queries): sacct's and scontrol's answers, as the commands print them;
- status and collect (slurm.monitor, slurm.results_table): states read from the job's own
  files, seeds averaged with the right spread, the paper's layout;
- sweeps (slurm.sweep, paper_grid): the paper's grid and pairs, seeds, resume never
  resubmitting a finished run or one whose job is still queued.

No cluster: SLURM's commands are stood in for by small scripts on PATH that print what the
real ones print (captured from the local cluster, or as documented), and run folders are
written as the engine and TrainJob write them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import statistics
from pathlib import Path

import pytest

from seq2seq_es import run_files
from seq2seq_es.slurm import job as slurm_job
from seq2seq_es.slurm.config import SlurmConfig
from seq2seq_es.slurm.job import (DEFAULT_ENTRY, EXIT_PREEMPTED, OutOfRequeuesError,
                                  RequeuedBySubmitit, TrainingFailed, TrainJob)
from seq2seq_es.slurm.monitor import run_status
from seq2seq_es.slurm.queries import parse_sacct, parse_scontrol_jobs, query_slurm
from seq2seq_es.slurm.sweep import RUN_MANIFEST, RunPlan, new_manifest

# `scontrol show job -o 423` on the local cluster: a job that SLURM requeued once (Restarts=1).
SCONTROL_423 = (
    "JobId=423 JobName=seq2seq-es UserId=root(0) GroupId=root(0) MCS_label=N/A "
    "Priority=4294901734 Nice=0 Account=(null) QOS=(null) JobState={state} Reason=None "
    "Dependency=(null) Requeue=1 Restarts={restarts} BatchFlag=1 Reboot=0 ExitCode=0:0 "
    "RunTime=00:01:16 TimeLimit=00:15:00 TimeMin=N/A SubmitTime=2026-12-03T16:16:43 "
    "EligibleTime=2026-12-03T16:16:46 AccrueTime=2026-12-03T16:18:44 "
    "StartTime=2026-12-03T16:16:47 EndTime=2026-12-03T16:18:03 Deadline=N/A SuspendTime=None "
    "SecsPreSuspend=0 LastSchedEval=2026-12-03T16:16:47 Scheduler=Main Partition=debug "
    "AllocNode:Sid=localhost:0 ReqNodeList=(null) ExcNodeList=(null) NodeList=node1 "
    "BatchHost=node1 NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* "
    "TRES=cpu=1,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=1:0:*:* CoreSpec=* "
    "MinCPUsNode=1 MinMemoryNode=0 MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 "
    "OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) Power= ")
# What scontrol says of a job it no longer knows (it prints this on stderr and exits 1).
SCONTROL_UNKNOWN = "slurm_load_jobs error: Invalid job id specified"
# `sacct -n -P -X -o JobID,State,ExitCode`: pipe-separated, no header; a cancel names its user.
SACCT = ("98|COMPLETED|0:0\n"
         "99|CANCELLED by 1000|0:15\n"
         "300_1|TIMEOUT|0:0\n"
         "300_2|OUT_OF_MEMORY|0:125\n"
         "301|NODE_FAIL|1:0\n"
         "302|FAILED|1:0\n")


# ---- SLURM's commands, as printed ------------------------------------------------------------

@pytest.fixture
def slurm_bin(tmp_path, monkeypatch):
    """Stand-ins for scontrol and sacct on PATH: `show job -o ID` prints answers[ID] (exit 1
    with scontrol's own words for an id it does not know), `requeue ID` succeeds, sacct prints
    answers['sacct']; every call is recorded in calls.log."""
    folder = tmp_path / "bin"
    folder.mkdir()
    answers = folder / "answers"
    answers.mkdir()
    log = folder / "calls.log"
    for name in ("scontrol", "sacct"):
        script = folder / name
        script.write_text(
            "#!/bin/sh\n"
            f'echo "{name} $*" >> "{log}"\n'
            + (f'if [ "$1" = "requeue" ]; then exit 0; fi\n'
               f'last=""; for a in "$@"; do last="$a"; done\n'
               f'if [ -f "{answers}/$last" ]; then cat "{answers}/$last"; exit 0; fi\n'
               f'echo "{SCONTROL_UNKNOWN}" >&2; exit 1\n'
               if name == "scontrol" else
               f'if [ -f "{answers}/sacct" ]; then cat "{answers}/sacct"; exit 0; fi\n'
               'echo "sacct: error: Slurm accounting storage is disabled" >&2; exit 1\n'))
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")

    class Bin:
        def answer(self, key: str, text: str) -> None:
            (answers / key).write_text(text + "\n")

        def forget(self, key: str) -> None:
            (answers / key).unlink()

        def calls(self) -> list[str]:
            return log.read_text().splitlines() if log.exists() else []

    return Bin()


# ---- the job's own life ----------------------------------------------------------------------

@pytest.fixture
def job_env(monkeypatch):
    """A task of job 423 (not an array task), its signal dispositions restored afterwards."""
    monkeypatch.setenv("SLURM_JOB_ID", "423")
    for name in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT",
                 "SUBMITIT_FOLDER"):
        monkeypatch.delenv(name, raising=False)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR2, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _events(run_dir: Path) -> list[dict]:
    path = run_dir / run_files.SLURM_EVENTS
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _preempted(run_dir: Path, step: int, name: str) -> None:
    """PREEMPTED as the engine writes it after a stop signal's save."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / run_files.PREEMPTED).write_text(json.dumps({"step": step, "signal": name}))


def test_a_preempted_job_with_requeues_left_requeues_itself_and_is_not_failed(
        tmp_path, job_env, slurm_bin):
    """A job pre-empted (SIGUSR2) with requeues left runs `scontrol requeue <its id>`, records
    a requeue (not a failure), leaves no OUT_OF_REQUEUES marker, and exits 3 so that its
    training resumes when SLURM brings it back; at exactly max_requeues it gives up instead."""
    run_dir = tmp_path / "run"
    _preempted(run_dir, 40, "SIGUSR2")
    job = TrainJob(["--task", "mlsum"], run_dir=run_dir, max_requeues=2)
    with pytest.raises(SystemExit) as raised:
        job._requeue_or_give_up(0, 1)  # one requeue used of two
    assert not isinstance(raised.value, OutOfRequeuesError)
    assert raised.value.code == EXIT_PREEMPTED
    assert "scontrol requeue 423" in slurm_bin.calls()
    assert [event["event"] for event in _events(run_dir)] == ["requeued"]
    assert _events(run_dir)[0]["restart"] == 1
    assert not (run_dir / run_files.OUT_OF_REQUEUES).exists()

    with pytest.raises(OutOfRequeuesError):
        job._requeue_or_give_up(0, 2)  # both used: the limit is reached, not passed
    assert slurm_bin.calls().count("scontrol requeue 423") == 1
    assert json.loads((run_dir / run_files.OUT_OF_REQUEUES).read_text())["restarts"] == 2


def test_the_other_ranks_of_a_preempted_job_leave_with_status_0(tmp_path, job_env, slurm_bin):
    """Only rank 0 requeues: the other ranks leave with status 0, since srun's
    --kill-on-bad-exit would kill rank 0 before its requeue on any other status."""
    run_dir = tmp_path / "run"
    _preempted(run_dir, 40, "SIGUSR2")
    job = TrainJob(["--task", "mlsum"], run_dir=run_dir, max_requeues=2)
    with pytest.raises(SystemExit) as raised:
        job._requeue_or_give_up(1, 0)
    assert raised.value.code == 0
    assert slurm_bin.calls() == [] and _events(run_dir) == []


def test_sigterm_tells_slurms_own_requeue_from_scancel(tmp_path, job_env, slurm_bin):
    """After SIGTERM the job reads its record: Restarts above its own count is SLURM requeueing
    it (the job leaves and comes back by itself, no second requeue); the same count is a
    scancel (the job ends, cancelled, its checkpoint kept, not requeued); no record at all
    falls back to requeueing, as after SIGUSR2."""
    run_dir = tmp_path / "run"
    _preempted(run_dir, 40, "SIGTERM")
    job = TrainJob(["--task", "mlsum"], run_dir=run_dir, max_requeues=3)

    slurm_bin.answer("423", SCONTROL_423.format(state="REQUEUED", restarts=2))
    with pytest.raises(SystemExit) as raised:
        job._requeue_or_give_up(0, 1)
    assert raised.value.code == EXIT_PREEMPTED
    assert _events(run_dir)[-1]["event"] == "requeued"
    assert not any(call.startswith("scontrol requeue") for call in slurm_bin.calls())

    slurm_bin.answer("423", SCONTROL_423.format(state="RUNNING", restarts=1))
    with pytest.raises(SystemExit):
        job._requeue_or_give_up(0, 1)
    assert _events(run_dir)[-1]["event"] == "cancelled"
    assert _events(run_dir)[-1]["step"] == 40
    assert not any(call.startswith("scontrol requeue") for call in slurm_bin.calls())

    slurm_bin.forget("423")
    with pytest.raises(SystemExit):
        job._requeue_or_give_up(0, 1)  # scontrol knows no such job: requeue as after USR2
    assert "scontrol requeue 423" in slurm_bin.calls()


def test_a_sigusr2_preemption_never_asks_whether_it_was_cancelled(tmp_path, job_env, slurm_bin):
    """SIGUSR2 (time limit, pre-emption with send_user_signal) always requeues: only SIGTERM
    can be a scancel."""
    run_dir = tmp_path / "run"
    _preempted(run_dir, 12, "SIGUSR2")
    slurm_bin.answer("423", SCONTROL_423.format(state="RUNNING", restarts=0))
    job = TrainJob(["--task", "mlsum"], run_dir=run_dir, max_requeues=3)
    with pytest.raises(SystemExit):
        job._requeue_or_give_up(0, 0)
    assert slurm_bin.calls() == ["scontrol requeue 423"]
    assert [event["event"] for event in _events(run_dir)] == ["requeued"]


def _entry_module(tmp_path: Path, monkeypatch, body: str) -> str:
    """A training entry `guard_entry_N:main` (module on sys.path) with the given body."""
    name = f"guard_entry_{abs(hash((str(tmp_path), body)))}"
    (tmp_path / f"{name}.py").write_text("import sys\n\ndef main(argv):\n" + body)
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"{name}:main"


def _one_rank(job: TrainJob, monkeypatch, rank: int = 0) -> None:
    """The task's distributed environment without submitit's job environment (no SLURM job)."""
    monkeypatch.setattr(job, "_export_distributed_env",
                        lambda: type("Dist", (), {"rank": rank, "world_size": 2,
                                                  "master_addr": "node1", "master_port": 20001})())


@pytest.mark.parametrize("body, outcome", [
    ("    return None\n", "finished"),
    ("    return 0\n", "finished"),
    ("    return 3\n", "preempted"),
    ("    raise SystemExit(3)\n", "preempted"),
    ("    raise SystemExit('error: bad config')\n", "failed"),
    ("    return 1\n", "failed"),
])
def test_the_entrys_exit_status_decides_finished_requeued_or_failed(
        tmp_path, job_env, slurm_bin, monkeypatch, body, outcome):
    """A run that returned (or exited) 0/None finished; status 3 is a pre-emption, requeued
    and not counted as failed; any other status, or an exit with a message, failed. Once the
    entry has returned, both stop signals are ignored (a late time-limit signal must not kill
    a run that has finished)."""
    run_dir = tmp_path / "run"
    if outcome == "preempted":
        _preempted(run_dir, 40, "SIGUSR2")
    job = TrainJob(["--task", "mlsum"], run_dir=run_dir,
                   entry=_entry_module(tmp_path, monkeypatch, body), max_requeues=3)
    _one_rank(job, monkeypatch)
    if outcome == "finished":
        assert job._train() == {"run_dir": str(run_dir.absolute()), "restarts": 0}
    elif outcome == "preempted":
        with pytest.raises(SystemExit) as raised:
            job._train()
        assert raised.value.code == EXIT_PREEMPTED
        assert "scontrol requeue 423" in slurm_bin.calls()
    else:
        with pytest.raises(TrainingFailed):
            job._train()
    events = [event["event"] for event in _events(run_dir)]
    assert events == ["start", {"finished": "finished", "preempted": "requeued",
                                "failed": "failed"}[outcome]]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN


def test_only_rank_0_writes_the_jobs_events(tmp_path, job_env, monkeypatch):
    """Events are rank 0's: a two-rank job that finished reads start + finished once, not
    once per rank (status counts restarts and reads the ending from them)."""
    run_dir = tmp_path / "run"
    job = TrainJob(["--task", "mlsum"], run_dir=run_dir,
                   entry=_entry_module(tmp_path, monkeypatch, "    return 0\n"))
    _one_rank(job, monkeypatch, rank=1)
    job._train()
    assert _events(run_dir) == []
    _one_rank(job, monkeypatch, rank=0)
    job._train()
    assert [event["event"] for event in _events(run_dir)] == ["start", "finished"]


def test_the_engine_is_told_the_requeues_the_job_has_left(tmp_path, job_env, monkeypatch):
    """After one of three requeues the engine's stop line may promise a requeue: the job
    tells it 2 are left (0 only once all are used)."""
    run_dir = tmp_path / "run"
    seen = tmp_path / "left.txt"
    job = TrainJob(["--task", "mlsum"], run_dir=run_dir, max_requeues=3, entry=_entry_module(
        tmp_path, monkeypatch,
        f"    import os\n    open({str(seen)!r}, 'a').write("
        f"os.environ[{run_files.REQUEUES_LEFT_ENV!r}] + ' ')\n    return 0\n"))
    _one_rank(job, monkeypatch)
    for restart in (1, 3):
        monkeypatch.setenv("SLURM_RESTART_COUNT", str(restart))
        job._train()
    assert seen.read_text().split() == ["2", "0"]


def test_a_job_running_again_is_no_longer_out_of_requeues(tmp_path, job_env, monkeypatch):
    """A job out of requeues that a user requeued by hand (or resumed) runs again: its start
    removes the OUT_OF_REQUEUES marker, so status does not call a finished job out of
    requeues."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / run_files.OUT_OF_REQUEUES).write_text(
        json.dumps({"job_id": "423", "restarts": 3, "max_requeues": 3}) + "\n")
    job = TrainJob(["--task", "mlsum"], run_dir=run_dir,
                   entry=_entry_module(tmp_path, monkeypatch, "    return 0\n"))
    _one_rank(job, monkeypatch)
    job._train()
    assert not (run_dir / run_files.OUT_OF_REQUEUES).exists()


def test_submitits_requeue_from_inside_the_entry_is_not_an_exit_status(
        tmp_path, job_env, monkeypatch):
    """A signal while the model loads goes to submitit's handler, which requeues and exits:
    that exit leaves the entry as RequeuedBySubmitit, never read as the training's status
    (it would be a failure, and the job would requeue a second time)."""
    run_dir = tmp_path / "run"
    job = TrainJob(["--task", "mlsum"], run_dir=run_dir, entry=_entry_module(
        tmp_path, monkeypatch,
        "    from seq2seq_es.slurm.job import RequeuedBySubmitit\n"
        "    raise RequeuedBySubmitit(-1)\n"))
    with pytest.raises(RequeuedBySubmitit):
        job._run_entry()


def test_a_signal_before_training_requeues_within_the_limit_only(tmp_path, job_env, monkeypatch):
    """submitit's handler asks TrainJob.checkpoint before it requeues: below max_requeues it
    gets the same job back to submit again (and a 'requeued' event); at max_requeues the job
    ends with one line and the OUT_OF_REQUEUES marker instead."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    job = TrainJob(["--task", "mlsum"], run_dir=run_dir, max_requeues=2)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    again = job.checkpoint()
    assert again is not None and again.function is job
    assert [event["event"] for event in _events(run_dir)] == ["requeued"]
    assert not (run_dir / run_files.OUT_OF_REQUEUES).exists()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    with pytest.raises(OutOfRequeuesError) as raised:
        job.checkpoint()
    assert "before training started" in str(raised.value.code)
    assert (run_dir / run_files.OUT_OF_REQUEUES).exists()


def test_the_signal_handler_ignores_a_signal_once_the_run_has_stopped(tmp_path, job_env):
    """SLURM's time-limit tick can meet a run as it exits: once the run wrote DONE (or
    PREEMPTED) since it started, submitit's handler is not called (it would requeue a
    finished job); before that, its requeue exit is raised as RequeuedBySubmitit."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / run_files.DONE).write_text("")  # an earlier finish: the handler still runs
    calls = []

    def submitits(signum, frame):
        calls.append(signum)
        raise SystemExit(-1)

    signal.signal(signal.SIGUSR2, submitits)
    slurm_job._guard_submitit_handler(str(run_dir))
    guarded = signal.getsignal(signal.SIGUSR2)
    with pytest.raises(RequeuedBySubmitit):
        guarded(signal.SIGUSR2, None)
    assert calls == [signal.SIGUSR2]
    os.utime(run_dir / run_files.DONE, ns=(1, 1))  # written again: this run finished
    guarded(signal.SIGUSR2, None)
    assert calls == [signal.SIGUSR2]


def test_an_array_tasks_out_of_requeues_is_its_own_in_status(tmp_path, job_env, monkeypatch):
    """A sweep's task is job `<array>_<index>` in the manifest: the marker TrainJob writes
    must name it so, or status took the run for another job's and showed it merely FAILED."""
    monkeypatch.setenv("SLURM_JOB_ID", "302")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "300")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    run_dir = tmp_path / "run"
    _preempted(run_dir, 40, "SIGUSR2")
    job = TrainJob(["--task", "mlsum"], run_dir=run_dir, max_requeues=1)
    with pytest.raises(OutOfRequeuesError):
        job._requeue_or_give_up(0, 1)
    run = RunPlan(name="run", model="barto", task="mlsum", grid_point={}, run_dir=str(run_dir),
                  argv=[], job_id="300_2")
    manifest = new_manifest("run", [run], {}, SlurmConfig(max_requeues=1), tmp_path / "slurm",
                            DEFAULT_ENTRY, [], None)
    status = run_status(run, manifest, parse_sacct("300_2|FAILED|1:0\n"))
    assert status.state == "OUT_OF_REQUEUES"
    assert status.error.startswith("out of requeues (max_requeues 1)")


def test_an_earlier_jobs_out_of_requeues_marker_says_nothing_of_a_resumed_job(
        tmp_path, job_env):
    """Job 423 ran out of requeues; `slurm resume` submitted 430, which was cancelled while
    pending (it never started, so the marker is still there): status says CANCELLED, not
    out of requeues, because the marker names job 423."""
    run_dir = tmp_path / "run"
    _preempted(run_dir, 40, "SIGUSR2")
    with pytest.raises(OutOfRequeuesError):
        TrainJob(["--task", "mlsum"], run_dir=run_dir, max_requeues=1)._requeue_or_give_up(0, 1)
    run = RunPlan(name="run", model="barto", task="mlsum", grid_point={}, run_dir=str(run_dir),
                  argv=[], job_id="430")
    manifest = new_manifest("run", [run], {}, SlurmConfig(max_requeues=1), tmp_path / "slurm",
                            DEFAULT_ENTRY, [], None)
    assert run_status(run, manifest, parse_sacct("430|CANCELLED by 0|0:0\n")).state == "CANCELLED"


# ---- what SLURM says -------------------------------------------------------------------------

def test_sacct_states_are_read_as_sacct_prints_them():
    """`sacct -n -P` lines: the state is the second field ('CANCELLED by 1000' is CANCELLED,
    a failure), the exit code the third; array tasks keep their '<array>_<index>' id."""
    states = parse_sacct(SACCT)
    assert {job_id: state.state for job_id, state in states.items()} == {
        "98": "COMPLETED", "99": "CANCELLED", "300_1": "TIMEOUT", "300_2": "OUT_OF_MEMORY",
        "301": "NODE_FAIL", "302": "FAILED"}
    assert states["99"].exit_code == "0:15" and states["300_2"].exit_code == "0:125"


def test_status_asks_sacct_for_the_jobs_scontrol_has_forgotten(tmp_path, slurm_bin):
    """scontrol keeps finished jobs a few minutes; after that only sacct knows them. Each id
    comes from the first that knows it, and sacct's other lines (jobs not asked about) are
    not taken."""
    slurm_bin.answer("423", SCONTROL_423.format(state="RUNNING", restarts=1))
    slurm_bin.answer("sacct", SACCT)
    states = query_slurm(["423", "99", "300_1", "777"])
    assert {job_id: state.state for job_id, state in states.items()} == {
        "423": "RUNNING", "99": "CANCELLED", "300_1": "TIMEOUT"}
    assert states["423"].restarts == 1
    words = next(call for call in slurm_bin.calls() if call.startswith("sacct")).split()
    asked = [job_id for word, value in zip(words, words[1:]) if word == "-j"
             for job_id in value.split(",")]
    assert sorted(asked) == ["300_1", "777", "99"]  # not 423, which scontrol answered
    # an array task is asked of scontrol by its array job's id
    assert "scontrol show job -o 300" in slurm_bin.calls()


def test_scontrol_lines_of_a_pending_array_name_every_task():
    """A pending array record covers its tasks ('1-3%2': tasks 1, 2 and 3, two at a time);
    each task's run reads that state, and its requeue count."""
    text = ("JobId=501 ArrayJobId=500 ArrayTaskId=0 JobState=RUNNING Reason=None Restarts=1\n"
            "JobId=500 ArrayJobId=500 ArrayTaskId=1-3,5%2 JobState=PENDING "
            "Reason=JobArrayTaskLimit Restarts=0\n")
    states = parse_scontrol_jobs(text)
    assert sorted(states) == ["500_0", "500_1", "500_2", "500_3", "500_5"]
    assert states["500_0"].restarts == 1 and states["500_3"].state == "PENDING"
    assert states["500_5"].reason == "JobArrayTaskLimit"


# ---- status ----------------------------------------------------------------------------------

def _submitted_run(tmp_path: Path, job_id: str, events: list[dict] | None = None,
                   name: str = "run") -> tuple[RunPlan, object]:
    """A `slurm submit` run folder whose job is `job_id`, with TrainJob's events."""
    run_dir = tmp_path / name
    run_dir.mkdir()
    run = RunPlan(name=name, model="barto", task="mlsum", grid_point={}, run_dir=str(run_dir),
                  argv=[], job_id=job_id)
    manifest = new_manifest("run", [run], {}, SlurmConfig(), run_dir / "slurm", DEFAULT_ENTRY,
                            [], None)
    manifest.submitted = True
    manifest.write(run_dir / RUN_MANIFEST)
    (run_dir / "slurm").mkdir()
    for event in events or []:
        fields = {key: value for key, value in event.items() if key != "event"}
        slurm_job.append_event(run_dir, event["event"], **fields)
    return run, manifest


@pytest.mark.parametrize("sacct_line, says", [
    ("TIMEOUT|0:0", "killed at its time limit without a requeue: raise --signal-delay-s"),
    ("OUT_OF_MEMORY|0:125", "killed by SLURM for using more memory than it asked for; "
                            "`seq2seq-es slurm resume --mem-gb GB`"),
    ("NODE_FAIL|1:0", "a node of the job failed"),
    ("CANCELLED by 1000|0:15", "cancelled (scancel, or an administrator)"),
])
def test_a_job_slurm_ended_is_failed_with_what_to_do(tmp_path, sacct_line, says):
    """A job killed at its time limit, for its memory, by a node or by scancel (as sacct
    reports it once scontrol has forgotten it) is shown failed, with what happened and the
    command that goes on from its checkpoint."""
    run, manifest = _submitted_run(tmp_path, "77", [{"event": "start", "job_id": "77",
                                                     "restart": 0}])
    status = run_status(run, manifest, parse_sacct(f"77|{sacct_line}\n"))
    assert status.failed
    assert status.error.startswith(says)


def _submitit_result(manifest, job_id: str, outcome: tuple) -> None:
    """The result pickle submitit writes for task 0 when the job's callable returns/raises."""
    from submitit.core.utils import JobPaths, cloudpickle_dump

    paths = JobPaths(manifest.submitit_folder, job_id=job_id, task_id=0)
    paths.result_pickle.parent.mkdir(parents=True, exist_ok=True)
    cloudpickle_dump(outcome, paths.result_pickle)


def test_a_job_slurm_has_forgotten_is_read_from_what_it_left(tmp_path):
    """Without accounting, a finished job is known from its files alone: submitit's result
    says COMPLETED or FAILED; without one, the job's own last event says (finished:
    COMPLETED, failed: FAILED, requeued: not failed, only unknown)."""
    run, manifest = _submitted_run(tmp_path, "77", name="ok")
    _submitit_result(manifest, "77", ("success", {"run_dir": run.run_dir, "restarts": 1}))
    assert run_status(run, manifest, {}).state == "COMPLETED"
    run, manifest = _submitted_run(tmp_path, "78", name="raised")
    _submitit_result(manifest, "78", ("error", "Traceback ...\nValueError: bad"))
    status = run_status(run, manifest, {})
    assert status.state == "FAILED" and "ValueError: bad" in status.error

    start = {"event": "start", "job_id": "79", "restart": 0}
    run, manifest = _submitted_run(tmp_path, "79", [start, {"event": "finished",
                                                            "job_id": "79", "restart": 0}],
                                   name="finished")
    assert run_status(run, manifest, {}).state == "COMPLETED"
    run, manifest = _submitted_run(tmp_path, "79", [start, {"event": "requeued",
                                                            "job_id": "79", "restart": 0}],
                                   name="requeued")
    status = run_status(run, manifest, {})
    assert status.state == "UNKNOWN" and not status.failed and status.restarts == 0


def test_a_requeued_job_waiting_in_the_queue_is_not_failed(tmp_path):
    """A pre-empted job that requeued itself waits as PENDING with its restarts counted:
    status shows it waiting, not failed."""
    run, manifest = _submitted_run(tmp_path, "423", [
        {"event": "start", "job_id": "423", "restart": 0},
        {"event": "requeued", "job_id": "423", "restart": 0, "reason": "pre-empted"}])
    states = parse_scontrol_jobs(SCONTROL_423.format(state="PENDING", restarts=1).replace(
        "Reason=None", "Reason=BeginTime"))
    status = run_status(run, manifest, states)
    assert (status.state, status.restarts, status.failed) == ("PENDING", 1, False)
    assert status.note == "requeued, waiting (BeginTime)"
    # the moment between the requeue and the queue: SLURM's REQUEUED state, no failure either
    status = run_status(run, manifest, parse_scontrol_jobs(
        SCONTROL_423.format(state="REQUEUED", restarts=1)))
    assert (status.state, status.failed, status.error) == ("REQUEUED", False, None)


def test_a_cut_out_of_requeues_marker_still_says_out_of_requeues(tmp_path):
    """A job killed while writing OUT_OF_REQUEUES leaves a cut file: it was this job's, and
    status still says out of requeues (with how to go on), not a bare FAILED."""
    run, manifest = _submitted_run(tmp_path, "77", [
        {"event": "start", "job_id": "77", "restart": 1}])
    (Path(run.run_dir) / run_files.OUT_OF_REQUEUES).write_text('{"job_id": "77", "resta')
    status = run_status(run, manifest, parse_sacct("77|FAILED|1:0\n"))
    assert status.state == "OUT_OF_REQUEUES"
    assert status.error.startswith("out of requeues (max_requeues 3)")


# ---- collect: which run, which step ----------------------------------------------------------

def _metrics(run_dir: Path, records: list[dict]) -> None:
    """metrics.jsonl as the engine logs it: one JSON line per record."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / run_files.METRICS).write_text("".join(json.dumps(r) + "\n" for r in records))


def test_a_running_run_that_never_logged_the_main_metric_shows_its_latest_evaluation(tmp_path):
    """A run still going whose evaluations hold no main metric (loss only, say) is shown at
    its latest evaluation, with the test scores of that step only."""
    from seq2seq_es.slurm.results_table import run_result

    run_dir = tmp_path / "barto__mlsum__lr-3e-5"
    _metrics(run_dir, [{"step": 10, "eval/loss": 3.0}, {"step": 10, "test/loss": 3.1},
                       {"step": 20, "train/loss": 2.7},
                       {"step": 30, "eval/loss": 2.9}])
    run = RunPlan(name=run_dir.name, model="barto", task="mlsum", grid_point={},
                  run_dir=str(run_dir), argv=[])
    result = run_result(run, "rougeL")
    assert (result.best_step, result.validation, result.test) == (30, {"loss": 2.9}, None)
    assert not result.final


def _final(run_dir: Path, model: str, task: str, validation: dict, test: dict | None,
           best_step: int = 40, main_metric: str = "rougeL") -> None:
    """final_results.json as the engine's Trainer.finish writes it (write_json_atomic)."""
    from seq2seq_es.engine.run_dir import write_json_atomic

    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / run_files.FINAL_RESULTS, {
        "task": task, "model": model, "main_metric": main_metric, "best_step": best_step,
        "steps": 50, "validation": validation, "test": test})


def _sweep(sweep_dir: Path, pairs, grid, seeds=None):
    """A sweep planned and its manifest written as `slurm sweep` does; its run folders made."""
    from seq2seq_es.slurm.sweep import SWEEP_MANIFEST, plan_sweep

    runs = plan_sweep(sweep_dir, list(pairs), grid, [], seeds=list(seeds or [])).runs
    manifest = new_manifest("sweep", runs, grid, SlurmConfig(), sweep_dir / "slurm",
                            "seq2seq_es.slurm.probe:main", [], 2, seeds=list(seeds or []))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    manifest.write(sweep_dir / SWEEP_MANIFEST)
    for run in runs:
        Path(run.run_dir).mkdir(parents=True, exist_ok=True)
    return manifest


def test_without_a_task_metric_runs_are_chosen_by_their_loss_not_by_a_speed(tmp_path):
    """An entry whose evaluations log a throughput before the loss: with no task metric the
    loss chooses (the lowest), never samples_per_second."""
    from seq2seq_es.slurm.results_table import build_table

    manifest = _sweep(tmp_path / "sweep", [("barto", "mlsum")], {"optim.lr": ["3e-5", "5e-5"]})
    fast, good = (Path(run.run_dir) for run in manifest.runs)
    _metrics(fast, [{"step": 10, "eval/samples_per_second": 9.0, "eval/loss": 2.0}])
    _metrics(good, [{"step": 10, "eval/samples_per_second": 5.0, "eval/loss": 1.5}])
    choice = build_table(manifest).chosen[("barto", "mlsum")]
    assert choice.selected_by == "loss"
    assert choice.result.run.run_dir == str(good)


def test_a_family_average_over_an_unfinished_run_is_marked_not_final(tmp_path):
    """The summarization average of a model whose WikiLingua run is still going carries the
    '*' of an unfinished result (and final 'no' in the CSV), though its MLSUM run finished."""
    from seq2seq_es.slurm.results_table import build_table, format_csv, format_markdown

    manifest = _sweep(tmp_path / "sweep", [("barto", "mlsum"), ("barto", "wikilingua")],
                      {"optim.lr": ["3e-5"]})
    done, going = (Path(run.run_dir) for run in manifest.runs)
    scores = {"rouge1": 30.0, "rouge2": 12.0, "rougeL": 24.0}
    _final(done, "barto", "mlsum", scores, scores)
    _metrics(going, [{"step": 20, **{f"eval/{k}": v for k, v in scores.items()}}])
    table = build_table(manifest)
    row = next(line for line in format_markdown(table).splitlines()
               if line.startswith("| BARTO |"))
    assert row.endswith("| 22.00 / –* | 25.49 |")  # then the paper's figure
    [average] = [row for row in csv.DictReader(io.StringIO(format_csv(table)))
                 if row["task"].startswith("avg:")]
    assert (average["task"], average["final"], average["paper"]) == (
        "avg:mlsum+wikilingua", "no", "25.49")


def test_two_runs_of_one_seed_are_not_averaged_as_seeds(tmp_path):
    """Run folders of the same settings and the same seed (a run trained twice) are two runs,
    each a grid point of its own: averaging them would show a spread over 'seeds' that is no
    spread over seeds."""
    from seq2seq_es.slurm.results_table import build_table
    from seq2seq_es.slurm.sweep import load_runs

    for name, seed, score in (("first", 1, 20.0), ("again", 1, 22.0), ("other", 2, 21.0)):
        folder = tmp_path / "runs" / name
        folder.mkdir(parents=True)
        (folder / run_files.CONFIG).write_text(
            f"model:\n  name: barto\ndata:\n  task: mlsum\noptim:\n  lr: 3.0e-05\n"
            f"train:\n  seed: {seed}\n  output_dir: {folder}\n")
        _final(folder, "barto", "mlsum", {"rougeL": score}, {"rougeL": score - 1})
    table = build_table(load_runs([str(tmp_path / "runs")]))
    choice = table.chosen[("barto", "mlsum")]
    assert choice.result.spread is None and choice.compared == 3
    assert choice.result.validation == {"rougeL": 22.0}


def _config_yaml(run: RunPlan) -> None:
    """config.yaml as the engine's RunLog writes it: the run's arguments composed as `train`
    composes them, dumped by config.dump."""
    from seq2seq_es.config import dump
    from seq2seq_es.slurm.sweep import compose_run

    dump(compose_run(run.task, run.model, run.argv[4:]), Path(run.run_dir) / run_files.CONFIG)


def test_a_run_of_the_batch_axis_is_not_left_out_for_its_micro_batch(tmp_path):
    """The grid's batch axis is the effective batch; the run trains it as micro-batch x
    accumulation, so its config.yaml holds another train.batch_size. That is the planned run,
    and its scores fill the cell."""
    from seq2seq_es.slurm.results_table import build_table

    manifest = _sweep(tmp_path / "sweep", [("t5s", "mlsum")], {"train.batch_size": ["16"]})
    [run] = manifest.runs
    _config_yaml(run)
    config = run_files.read_run_config(run.run_dir)
    assert int(config["train"]["batch_size"]) == 4  # t5s' default micro-batch
    assert int(config["train"]["batch_size"]) * int(config["train"]["grad_accum"]) == 16
    _final(Path(run.run_dir), "t5s", "mlsum", {"rougeL": 24.0}, {"rougeL": 23.0})
    table = build_table(manifest)
    assert table.notes == []
    assert table.chosen[("t5s", "mlsum")].result.validation == {"rougeL": 24.0}


def test_a_cancelled_job_says_where_it_saved(tmp_path):
    """scancel of a running job: TrainJob saved and recorded 'cancelled' with the step;
    status says so and that `slurm resume` goes on from it."""
    run, manifest = _submitted_run(tmp_path, "77", [
        {"event": "start", "job_id": "77", "restart": 0},
        {"event": "cancelled", "job_id": "77", "restart": 0, "step": 40}])
    status = run_status(run, manifest, parse_sacct("77|CANCELLED by 0|0:15\n"))
    assert status.state == "CANCELLED"
    assert status.error.startswith("cancelled (scancel) after saving a checkpoint at step 40; "
                                   "`seq2seq-es slurm resume` continues it")


def test_the_csv_counts_each_means_seeds_per_split(tmp_path):
    """The CSV's dev_n and test_n say over how many seeds each mean is: a seed that finished
    without test scores counts in dev_n, not in test_n."""
    from seq2seq_es.slurm.results_table import build_table, format_csv

    manifest = _sweep(tmp_path / "sweep", [("barto", "mlsum")], {"optim.lr": ["3e-5"]},
                      seeds=["1", "2"])
    first, second = (Path(run.run_dir) for run in manifest.runs)
    _final(first, "barto", "mlsum", {"rougeL": 20.0}, {"rougeL": 19.0})
    _final(second, "barto", "mlsum", {"rougeL": 23.0}, None)
    [row] = [row for row in csv.DictReader(io.StringIO(format_csv(build_table(manifest))))
             if row["metric"] == "rougeL"]
    assert (row["dev_n"], row["test_n"], row["seeds"]) == ("2", "1", "1;2")
    assert float(row["dev"]) == 21.5 and float(row["test"]) == 19.0
    assert float(row["dev_std"]) == pytest.approx(statistics.stdev([20.0, 23.0]))
    assert row["test_std"] == ""


def test_seeds_are_no_setting_the_labels_hide(tmp_path):
    """The seeds of a grid point differ in train.seed by design: collect does not warn that
    they 'differ outside the sweep's grid' (it does for a key a resume changed on one run)."""
    from seq2seq_es.slurm.results_table import build_table

    manifest = _sweep(tmp_path / "sweep", [("barto", "mlsum")], {"optim.lr": ["3e-5"]},
                      seeds=["1", "2"])
    for run, score in zip(manifest.runs, (20.0, 22.0)):
        _config_yaml(run)
        _final(Path(run.run_dir), "barto", "mlsum", {"rougeL": score}, {"rougeL": score})
    assert build_table(manifest).warnings == []
    changed = manifest.runs[1]
    changed.argv += ["--optim.weight_decay", "0.1"]
    _config_yaml(changed)
    [warning] = build_table(manifest).warnings
    assert "differ outside the sweep's grid" in warning and "optim.weight_decay" in warning
    assert "train.seed" not in warning


def test_seeds_are_listed_in_numeric_order(tmp_path):
    """Run folders trained with seeds 10 and 2: the table's seed line reads 2, 10."""
    from seq2seq_es.slurm.results_table import build_table, format_markdown
    from seq2seq_es.slurm.sweep import load_runs

    for seed, score in ((10, 20.0), (2, 22.0)):
        folder = tmp_path / "runs" / f"s{seed}"
        folder.mkdir(parents=True)
        (folder / run_files.CONFIG).write_text(
            f"model:\n  name: barto\ndata:\n  task: mlsum\n"
            f"train:\n  seed: {seed}\n  output_dir: {folder}\n")
        _final(folder, "barto", "mlsum", {"rougeL": score}, {"rougeL": score})
    out = format_markdown(build_table(load_runs([str(tmp_path / "runs")])))
    assert "mean of 2 seeds (train.seed 2, 10) ± their sample standard deviation" in out


def test_grid_points_whose_means_are_over_fewer_seeds_are_named(tmp_path):
    """A grid point with one seed scored against one with three: the mean of one seed is no
    steadier than a single run, and the table says the counts differ."""
    from seq2seq_es.slurm.results_table import build_table, format_markdown

    manifest = _sweep(tmp_path / "sweep", [("barto", "mlsum")], {"optim.lr": ["3e-5", "5e-5"]},
                      seeds=["1", "2", "3"])
    for run in manifest.runs:
        if run.grid_point["optim.lr"] == "3e-5" or run.grid_point["train.seed"] == "1":
            _final(Path(run.run_dir), "barto", "mlsum", {"rougeL": 20.0}, {"rougeL": 20.0})
    out = format_markdown(build_table(manifest))
    assert ("the grid points' dev rougeL means are over different numbers of seeds: g1 3, g2 1"
            in out)


def test_a_metric_only_the_test_split_has_shows_its_test_value(tmp_path):
    """A metric scored on test only shows '– / value', not a bare '–' that hides it."""
    from seq2seq_es.slurm.results_table import build_table, format_markdown

    manifest = _sweep(tmp_path / "sweep", [("barto", "mlsum")], {"optim.lr": ["3e-5"]})
    _final(Path(manifest.runs[0].run_dir), "barto", "mlsum", {"rougeL": 24.0},
           {"rougeL": 23.0, "bleu": 10.0})
    row = next(line for line in format_markdown(build_table(manifest)).splitlines()
               if line.startswith("| BARTO |"))
    assert row.startswith("| BARTO | g1 | 24.00 / 23.00 | – / 10.00 |")


# ---- sweeps and resume -----------------------------------------------------------------------

@pytest.mark.parametrize("state, resumed", [
    *[(state, False) for state in ("PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD",
                                   "REQUEUE_FED", "CONFIGURING", "COMPLETING", "SUSPENDED",
                                   "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED",
                                   "SPECIAL_EXIT", "RESV_DEL_HOLD")],
    *[(state, True) for state in ("COMPLETED", "CANCELLED", "TIMEOUT", "FAILED",
                                  "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED")],
])
def test_resume_never_gives_a_run_a_second_job_nor_resubmits_a_finished_one(
        tmp_path, state, resumed):
    """`slurm resume` submits again the unfinished runs whose job has ended; a run whose job
    SLURM still holds (queued, requeued, held, running, suspended, ...) is left to it (two jobs
    would train into one folder), and a finished run (DONE) is never submitted again."""
    from seq2seq_es.slurm.sweep import runs_to_resume

    manifest = _sweep(tmp_path / "sweep", [("barto", "mlsum")],
                      {"optim.lr": ["1e-5", "2e-5", "3e-5"]})
    manifest.submitted = True
    done, asked, ended = manifest.runs
    for run, job_id in zip(manifest.runs, ("10", "11", "12")):
        run.job_id = job_id
    (Path(done.run_dir) / run_files.DONE).write_text("")
    states = parse_scontrol_jobs(
        "JobId=10 JobState=COMPLETED Reason=None Restarts=0\n"
        f"JobId=11 JobState={state} Reason=None Restarts=1\n")
    states.update(parse_sacct("12|CANCELLED by 0|0:15\n"))
    runs, going = runs_to_resume(manifest, states)
    assert [run.name for run in runs] == [run.name for run in ([asked, ended] if resumed
                                                               else [ended])]
    assert going == ([] if resumed else [(asked, state)])


def test_resume_leaves_a_run_that_a_job_it_does_not_track_trains(tmp_path):
    """Two `slurm resume` at once both submitted a run: the manifest kept the second job, which
    failed on the folder's lock while the first trained; a third resume submitted yet another
    (a concurrency audit). A process holding the run's train.lock leaves it as it is."""
    from test_run_lock import end, hold_in_another_process

    from seq2seq_es.errors import ConfigError
    from seq2seq_es.slurm.monitor import run_status
    from seq2seq_es.slurm.sweep import runs_to_resume

    manifest = _sweep(tmp_path / "sweep", [("barto", "mlsum")], {"optim.lr": ["1e-5", "2e-5"]})
    manifest.submitted = True
    held, free = manifest.runs
    for run, job_id in zip(manifest.runs, ("11", "12")):
        run.job_id = job_id
    states = parse_sacct("11|FAILED|1:0\n12|CANCELLED by 0|0:15\n")
    holder = hold_in_another_process(Path(held.run_dir), SLURM_JOB_ID="1182")
    try:
        runs, going = runs_to_resume(manifest, states)
        assert runs == [free] and [run for run, _ in going] == [held]
        # and `slurm status` says so beside the tracked job's FAILED
        status = run_status(held, manifest, states)
        assert status.state == "FAILED" and (f"training now, in a process this sweep does not "
                                             f"track (pid {holder.pid} on ") in status.note
        assert "training now" not in run_status(free, manifest, states).note
        assert going[0][1].startswith(f"is trained now by another process (pid {holder.pid} on ")
        assert "SLURM job 1182" in going[0][1] and going[0][1].endswith("), not by its job 11")
        (Path(free.run_dir) / run_files.DONE).write_text("")
        with pytest.raises(ConfigError, match=f"run {held.name} is trained now by another "
                                              f"process \\(pid {holder.pid} on "):
            runs_to_resume(manifest, states)
    finally:
        end(holder)
    assert runs_to_resume(manifest, states) == ([held], [])


_HOLD_AND_SUBMIT = """
import fcntl, json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(1.0)
manifest = json.load(open(sys.argv[2]))
manifest["submitted"] = True
for run, job in zip(manifest["runs"], sys.argv[3:]):
    run["job_id"] = job
json.dump(manifest, open(sys.argv[2], "w"))
"""


def _another_command_submitting(manifest, *jobs: str):
    """A process that holds the submission lock, then writes `manifest` as submitted (with
    `jobs`), as a second `slurm sweep` or `slurm resume` started at the same moment does."""
    import subprocess
    import sys

    from seq2seq_es.slurm.sweep import SUBMITTING_LOCK

    Path(manifest.submitit_folder).mkdir(parents=True, exist_ok=True)
    other = subprocess.Popen([sys.executable, "-c", _HOLD_AND_SUBMIT,
                              str(Path(manifest.submitit_folder) / SUBMITTING_LOCK),
                              manifest.path, *jobs], stdout=subprocess.PIPE, text=True)
    assert other.stdout.readline().strip() == "held"
    return other


@pytest.mark.slurm  # submit() looks for sbatch and srun first
def test_two_sweeps_into_one_new_folder_submit_once(tmp_path, capsys):
    """Both of two `slurm sweep` started at once into one new folder submitted: each checked the
    folder before the other had written (a concurrency audit). The second now waits for the
    first's submission, finds it, and submits nothing."""
    from seq2seq_es.errors import ConfigError
    from seq2seq_es.slurm.sweep import SWEEP_MANIFEST, load_manifest, submit

    manifest = _sweep(tmp_path / "sweep", [("barto", "mlsum")], {"optim.lr": ["1e-5"]})
    other = _another_command_submitting(manifest, "501")
    try:
        with pytest.raises(ConfigError, match="was submitted meanwhile by another command"):
            submit(manifest, SlurmConfig(), tmp_path / "sweep" / SWEEP_MANIFEST)
    finally:
        other.wait(timeout=60)
    assert "waiting for another command submitting into " in capsys.readouterr().err
    assert [run.job_id for run in load_manifest(tmp_path / "sweep").runs] == ["501"]


def test_two_resumes_at_once_give_a_run_one_job(tmp_path):
    """Two `slurm resume` at once both submitted the same runs (a concurrency audit): under the
    submission lock, a run whose job changed on disk since it was chosen is refused."""
    from seq2seq_es.errors import ConfigError
    from seq2seq_es.slurm.sweep import check_not_resubmitted, submitting

    manifest = _sweep(tmp_path / "sweep", [("barto", "mlsum")], {"optim.lr": ["1e-5", "2e-5"]})
    for run, job_id in zip(manifest.runs, ("11", "12")):
        run.job_id = job_id
    manifest.submitted = True
    manifest.write(manifest.path)
    check_not_resubmitted(manifest, manifest.runs)  # nothing changed: goes on
    other = _another_command_submitting(manifest, "11", "77")
    try:
        with submitting(manifest), pytest.raises(ConfigError) as refused:
            check_not_resubmitted(manifest, manifest.runs)
    finally:
        other.wait(timeout=60)
    assert f"run {manifest.runs[1].name} got job 77 meanwhile from another command" in \
        str(refused.value)
    check_not_resubmitted(manifest, manifest.runs[:1])  # the run it did not resubmit


def test_resume_takes_a_grid_value_however_it_is_spelled(tmp_path):
    """`slurm resume -- --optim.lr 0.00003` for the point optim.lr=3e-5 is the same point (the
    numbers are equal) and is accepted; another value is another point and is refused."""
    from seq2seq_es.errors import ConfigError
    from seq2seq_es.slurm.sweep import resumed_argv

    manifest = _sweep(tmp_path / "sweep", [("barto", "mlsum")], {"optim.lr": ["3e-5"]})
    [run] = manifest.runs
    argv, changes = resumed_argv(run, ["--optim.lr", "0.00003"], (1, 1))
    assert argv[-2:] == ["--optim.lr", "0.00003"] and changes == []
    with pytest.raises(ConfigError, match="is an axis of the sweep's grid"):
        resumed_argv(run, ["--optim.lr", "5e-5"], (1, 1))


def test_the_papers_pairs_run_model_by_model():
    """The paper's sweep is ordered model by model, as its tables (a partial sweep fills whole
    rows first): BARTO's monolingual tasks, in the paper's task order, come first, LEDO's
    long-document tasks last."""
    from seq2seq_es.slurm.paper_grid import MONOLINGUAL_TASKS, paper_pairs

    pairs = paper_pairs()
    assert pairs[:len(MONOLINGUAL_TASKS)] == [("barto", task) for task in MONOLINGUAL_TASKS]
    assert pairs[-2:] == [("ledo", "xlsum"), ("ledo", "eurlexsum")]
    models = [model for model, _ in pairs]
    assert models == sorted(models, key=models.index)  # each model's pairs together


def test_max_requeues_0_is_a_job_that_never_requeues(tmp_path, job_env, slurm_bin):
    """--max-requeues 0 is valid (a job that must not come back), and its first pre-emption
    ends it out of requeues, without `scontrol requeue`; a negative count is refused."""
    from seq2seq_es.errors import ConfigError

    assert SlurmConfig(max_requeues=0).max_requeues == 0
    with pytest.raises(ConfigError, match="slurm.max_requeues"):
        SlurmConfig(max_requeues=-1)
    run_dir = tmp_path / "run"
    _preempted(run_dir, 5, "SIGUSR2")
    with pytest.raises(OutOfRequeuesError):
        TrainJob(["--task", "mlsum"], run_dir=run_dir,
                 max_requeues=SlurmConfig(max_requeues=0).max_requeues)._requeue_or_give_up(0, 0)
    assert slurm_bin.calls() == []


# ---- SLURM settings and the data check -------------------------------------------------------

def test_a_fractional_memory_request_is_not_rounded_down():
    """--mem-gb 1.5 asks SLURM for 1536 MB, not 1 GB (the job would be killed for memory it
    asked for)."""
    from seq2seq_es.slurm.config import render_sbatch, sbatch_parameters

    assert sbatch_parameters(SlurmConfig(mem_gb=1.5))["mem"] == "1536MB"
    assert sbatch_parameters(SlurmConfig(mem_gb=2))["mem"] == "2GB"
    assert "#SBATCH --mem=1536MB" in render_sbatch(SlurmConfig(mem_gb=1.5), "/tmp/guard-slurm")


def test_zero_memory_is_refused_since_slurm_reads_it_as_the_whole_node():
    """--mem=0 is SLURM's 'all the memory of the node': --mem-gb 0 is refused, naming the key."""
    from seq2seq_es.errors import ConfigError

    with pytest.raises(ConfigError, match="slurm.mem_gb"):
        SlurmConfig(mem_gb=0)


def test_submitits_own_requeue_count_is_the_jobs(tmp_path):
    """A time-limit signal while the model loads is requeued by submitit's handler, which
    counts against the executor's max_num_timeout: it must be the job's max_requeues, or
    submitit would refuse the requeue TrainJob allowed."""
    from seq2seq_es.slurm.config import make_executor

    executor = make_executor(SlurmConfig(max_requeues=5), tmp_path / "slurm")
    assert executor.max_num_timeout == 5


def test_setup_flags_add_to_the_slurm_config_files_lines(tmp_path):
    """`--setup LINE` adds a line after the --slurm-config file's setup (module loads), never
    replaces them."""
    import argparse

    from seq2seq_es.slurm.options import add_slurm_options, slurm_config_from_args

    file = tmp_path / "cluster.yaml"
    file.write_text("slurm:\n  setup:\n    - module load cuda\n    - source venv/bin/activate\n")
    parser = argparse.ArgumentParser()
    add_slurm_options(parser)
    args = parser.parse_args(["--slurm-config", str(file), "--setup", "export NCCL_DEBUG=WARN"])
    assert slurm_config_from_args(args).setup == ["module load cuda", "source venv/bin/activate",
                                                  "export NCCL_DEBUG=WARN"]


def test_runs_reading_one_file_under_other_column_names_are_each_checked(tmp_path):
    """Two runs of a sweep read the same files, one under data.columns renames the files do
    not fit: that run's data is read too (as its job would), and its error comes before
    sbatch, not after the queue."""
    from fixtures import fixture_files

    from seq2seq_es.config import compose
    from seq2seq_es.errors import DataError
    from seq2seq_es.slurm.data_check import check_local_data

    files = fixture_files("mlsum")
    data = {"data.train_file": files["train"], "train.batch_size": 2,
            "data.cache_dir": str(tmp_path / "cache"), "data.max_target_length": 128}
    plain = compose(task="mlsum", model="barto-tiny", overrides=data)
    renamed = compose(task="mlsum", model="barto-tiny",
                      overrides={**data, "data.columns": "text=summary"})
    read = []
    with pytest.raises(DataError) as refused:
        check_local_data([("plain", plain), ("renamed", renamed)], 1, log=read.append)
    assert str(refused.value).startswith(f"file {files['train']}, column 'summary': data.columns "
                                         "renames a column to 'summary'")
    assert len([line for line in read if "rows ->" in line]) == 1  # the plain run's: it passed


def test_resume_keeps_the_ranks_of_jobs_that_do_not_train(tmp_path, capsys):
    """The jobs of a probe (or another entry than training) resume with the ranks they were
    submitted with: `resume --nodes 2` is refused before anything is listed or submitted."""
    from seq2seq_es.slurm.cli import main as slurm_main
    from seq2seq_es.slurm.sweep import SWEEP_MANIFEST

    sweep_dir = tmp_path / "sweep"
    manifest = _sweep(sweep_dir, [("barto", "mlsum")], {"optim.lr": ["3e-5"]})
    manifest.submitted = True
    manifest.runs[0].job_id = "999991"  # a job SLURM no longer knows
    manifest.write(sweep_dir / SWEEP_MANIFEST)
    assert slurm_main(["resume", str(sweep_dir), "--nodes", "2", "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert "run seq2seq_es.slurm.probe:main, not training" in captured.err
    assert "to resume" not in captured.out


def test_status_shows_restarts_the_last_step_and_the_checkpoint_a_resume_starts_from(tmp_path):
    """A running job requeued once, logged up to step 30 and saved at 10 and 20: its row says
    RUNNING (restarts 1), STEP 30 and SAVED 20 (where a requeue or resume goes on)."""
    from seq2seq_es.slurm.monitor import format_status

    run, manifest = _submitted_run(tmp_path, "423", [
        {"event": "start", "job_id": "423", "restart": 0},
        {"event": "requeued", "job_id": "423", "restart": 0},
        {"event": "start", "job_id": "423", "restart": 1}])
    _metrics(Path(run.run_dir), [{"step": 10, "train/loss": 3.0}, {"step": 20, "train/loss": 2.8},
                                 {"step": 30, "train/loss": 2.6}])
    for step in (10, 20):  # complete checkpoints: step folders holding trainer_state.json
        folder = Path(run.run_dir) / run_files.CHECKPOINTS / f"step_{step:08d}"
        folder.mkdir(parents=True)
        (folder / run_files.TRAINER_STATE).write_text("{}")
    status = run_status(run, manifest, parse_scontrol_jobs(
        SCONTROL_423.format(state="RUNNING", restarts=1)))
    row = format_status(manifest, [status]).splitlines()[2].split()
    assert row[:6] == ["run", "423", "RUNNING", "(restarts", "1)", "30"]
    assert row[6] == "20"


def test_table_rows_follow_the_papers_model_order(tmp_path):
    """The rows of a family's table are the models in the sweep's (the paper's) order: BARTO,
    T5S, BETO2BETO, not alphabetical."""
    from seq2seq_es.slurm.results_table import build_table, format_markdown

    pairs = [("barto", "mlsum"), ("t5s", "mlsum"), ("beto2beto", "mlsum")]
    manifest = _sweep(tmp_path / "sweep", pairs, {"optim.lr": ["3e-5"]})
    for run in manifest.runs:
        _final(Path(run.run_dir), run.model, "mlsum", {"rougeL": 20.0}, {"rougeL": 20.0})
    rows = [line.split("|")[1].strip() for line in format_markdown(build_table(manifest))
            .splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert rows == ["BARTO", "T5S", "BETO2BETO"]
    # the paper's names in the table, the registry's (what --models takes) said once below it
    assert ("Models by the paper's names; the registry's (--models, config.yaml model.name, the "
            "CSV): BARTO = barto, T5S = t5s, BETO2BETO = beto2beto.") in \
        format_markdown(build_table(manifest))
