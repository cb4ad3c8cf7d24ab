"""What a new user's walkthrough on the local cluster found in `slurm status`, `submit`, `resume`,
`sweep` and `bench` (no cluster needed: run folders, event logs and SLURM's answers as fixtures).

- status counts the restarts (and reads the ending) of the run's current job, not of the jobs
  before a `slurm resume`;
- a run out of requeues says what it kept and how it goes on, without an earlier start's log
  line, and the job ends with one line, not a traceback;
- `submit --run-dir` refuses a folder inside a sweep or a run, and a folder of the user's files;
- a finished run: `resume -- overrides` says they were not applied, and how to train it further;
- a one-run sweep, a run config given as --slurm-config, and bench's dry run on a small
  partition.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from seq2seq_es import run_files
from seq2seq_es.slurm import cli as slurm_cli
from seq2seq_es.slurm import queries, sweep
from seq2seq_es.slurm.cli import main as slurm_main
from seq2seq_es.slurm.config import SlurmConfig
from seq2seq_es.slurm.job import DEFAULT_ENTRY, OutOfRequeuesError, TrainJob
from seq2seq_es.slurm.monitor import SlurmState, failure_details, format_status, run_status
from seq2seq_es.slurm.sweep import (RUN_MANIFEST, SWEEP_MANIFEST, RunPlan, SlurmUnavailableError,
                                    check_run_dir, check_sweep_dir, load_manifest, new_manifest)
from seq2seq_es.errors import ConfigError

# A job with max_requeues 1 that `scontrol requeue` brought back twice, then pre-empted (USR2):
# the event log and stderr of job 120 in the walkthrough, then job 125 of `slurm resume`.
OLD_JOB_EVENTS = [
    {"event": "start", "job_id": "120", "restart": 0},
    {"event": "requeued", "job_id": "120", "restart": 0, "reason": "requeued by SLURM"},
    {"event": "start", "job_id": "120", "restart": 1},
    {"event": "requeued", "job_id": "120", "restart": 1, "reason": "requeued by SLURM"},
    {"event": "start", "job_id": "120", "restart": 2},
    {"event": "out_of_requeues", "job_id": "120", "restart": 2},
]
OLD_JOB_STDERR = """\
srun: Job step aborted: Waiting up to 7 seconds for job step to finish.
slurmstepd-node1: error: *** STEP 120.0 ON node1 CANCELLED AT 2026-12-03T07:03:53 DUE TO JOB REQUEUE ***
slurmstepd-node1: error: *** JOB 120 ON node1 CANCELLED AT 2026-12-03T07:03:53 DUE TO JOB REQUEUE ***
SIGTERM received: saved a checkpoint at step 42; the job is requeued if SLURM requeues it
srun: error: node1: task 0: Exited with exit code 3
slurmstepd-node1: error: *** JOB 120 ON node1 CANCELLED AT 2026-12-03T07:10:15 DUE TO JOB REQUEUE ***
SIGUSR2 received: saved a checkpoint at step 151
submitit ERROR (2026-12-03 07:13:22,882) - Submitted job triggered an exception
[rank0]: Traceback (most recent call last):
[rank0]:   File "/work/main/seq2seq_es/slurm/job.py", line 237, in _requeue_or_give_up
[rank0]: seq2seq_es.slurm.job.OutOfRequeuesError: pre-empted after 2 requeue(s); max_requeues is 1
srun: error: node1: task 0: Exited with exit code 1
"""


def _run_folder(tmp_path: Path, job_id: str, events: list[dict], *, max_requeues: int = 1,
                name: str = "r4") -> tuple[RunPlan, object]:
    """A run folder of `slurm submit` whose current job is `job_id`, with `events`."""
    run_dir = tmp_path / name
    run_dir.mkdir()
    run = RunPlan(name=name, model="barto-tiny", task="mlsum", grid_point={},
                  run_dir=str(run_dir), argv=[], job_id=job_id)
    manifest = new_manifest("run", [run], {}, SlurmConfig(max_requeues=max_requeues),
                            run_dir / "slurm", DEFAULT_ENTRY, [], None)
    manifest.submitted = True
    manifest.write(run_dir / RUN_MANIFEST)
    (run_dir / "slurm").mkdir()
    (run_dir / run_files.SLURM_EVENTS).write_text(
        "".join(json.dumps(event) + "\n" for event in events))
    return run, manifest


def _checkpoint(run_dir: Path, step: int) -> None:
    folder = run_dir / run_files.CHECKPOINTS / f"step_{step:08d}"
    folder.mkdir(parents=True)
    (folder / run_files.TRAINER_STATE).write_text("{}")


# ---- the current job's restarts and ending ---------------------------------------------------

def test_a_resumed_job_shows_its_own_restarts_and_pending_note(tmp_path):
    # `slurm resume` after job 120 (restarts 2): job 125 showed "RUNNING (restarts 2)".
    events = OLD_JOB_EVENTS + [{"event": "start", "job_id": "125", "restart": 0}]
    run, manifest = _run_folder(tmp_path, "125", events)
    status = run_status(run, manifest, {"125": SlurmState("RUNNING", restarts=0)})
    assert (status.state, status.restarts) == ("RUNNING", 0)
    assert "restarts" not in format_status(manifest, [status]).splitlines()[2]
    # waiting, before it has started: its own note, not the requeued one of job 120
    run, manifest = _run_folder(tmp_path, "126", OLD_JOB_EVENTS, name="pending")
    status = run_status(run, manifest, {"126": SlurmState("PENDING", reason="Priority")})
    assert (status.restarts, status.note) == (0, "waiting to start (Priority)")
    # SLURM has forgotten the finished job: the files say COMPLETED, with its own count
    events = events + [{"event": "finished", "job_id": "125", "restart": 0}]
    run, manifest = _run_folder(tmp_path, "125", events, name="done")
    status = run_status(run, manifest, {})
    assert (status.state, status.restarts) == ("COMPLETED", 0)


def test_restarts_are_the_larger_of_slurms_count_and_the_jobs_own_events(tmp_path):
    # SLURM's answer without a restart count (sacct, once squeue has forgotten the job) replaced
    # the two requeues job 130 logged itself: status said it had never restarted.
    events = [{"event": "start", "job_id": "130", "restart": 0},
              {"event": "requeued", "job_id": "130", "restart": 0},
              {"event": "start", "job_id": "130", "restart": 1},
              {"event": "requeued", "job_id": "130", "restart": 1},
              {"event": "start", "job_id": "130", "restart": 2}]
    run, manifest = _run_folder(tmp_path, "130", events)
    assert run_status(run, manifest, {"130": SlurmState("RUNNING")}).restarts == 2
    assert run_status(run, manifest, {"130": SlurmState("RUNNING", restarts=3)}).restarts == 3


def test_a_job_of_its_own_out_of_requeues_marker_shows_running_while_it_runs(tmp_path):
    # An administrator's `scontrol requeue` brought back job 120 after it wrote the marker: it
    # trained again while status said OUT_OF_REQUEUES, with advice to resume it (a second job).
    run, manifest = _run_folder(tmp_path, "120", OLD_JOB_EVENTS)
    (Path(run.run_dir) / run_files.OUT_OF_REQUEUES).write_text(
        json.dumps({"job_id": "120", "restarts": 2, "max_requeues": 1}))
    for state in ("RUNNING", "PENDING"):
        status = run_status(run, manifest, {"120": SlurmState(state, restarts=3)})
        assert status.state == state and "out of requeues" not in (status.error or "")
    assert run_status(run, manifest, {"120": SlurmState("FAILED")}).state == "OUT_OF_REQUEUES"


def test_the_rank_that_failed_first_is_the_error_shown(tmp_path):
    # Rank 1's own error came first; rank 0 then failed on the collective. Taking the last
    # result written, status blamed "connection closed by peer" and hid the cause.
    folder = tmp_path / "slurm"
    folder.mkdir()
    outcomes = {0: "Traceback (most recent call last):\nRuntimeError: [/pytorch/third_party/gloo/"
                   "gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:10664",
                1: "Traceback (most recent call last):\nValueError: a bad row in train.jsonl"}
    for task, mtime in ((0, 2_000_000_000), (1, 1_000_000_000)):
        result = folder / f"150_{task}_result.pkl"
        result.write_bytes(pickle.dumps(("error", outcomes[task])))
        os.utime(result, (mtime, mtime))
    message, log = failure_details(str(folder), "150", 2)
    assert message == "ValueError: a bad row in train.jsonl"
    assert log == str(folder / "150_1_log.err")
    # Written in the same instant, or rank 0's first: a lost peer is never the cause shown
    for task, mtime in ((0, 1_000_000_000), (1, 1_000_000_001)):
        os.utime(folder / f"150_{task}_result.pkl", (mtime, mtime))
    assert failure_details(str(folder), "150", 2)[0] == "ValueError: a bad row in train.jsonl"


def test_only_a_training_run_without_a_checkpoint_is_said_to_start_again(tmp_path):
    # Another entry (a probe, a benchmark) keeps no checkpoints: told that `resume` would start
    # its training again from the first step, its user was told about a training it never ran.
    run, manifest = _run_folder(tmp_path, "160", [])
    status = run_status(run, manifest, {"160": SlurmState("CANCELLED")})
    assert "it saved no checkpoint, so `seq2seq-es slurm resume` starts it again" in status.error
    manifest.entry = "seq2seq_es.bench.probe:main"
    status = run_status(run, manifest, {"160": SlurmState("CANCELLED")})
    assert status.error == ("cancelled (scancel, or an administrator); `seq2seq-es slurm "
                            "resume` continues it from its last checkpoint")


def test_a_cut_event_line_hides_none_of_the_events_after_it(tmp_path):
    # A job killed while writing leaves a half line; its requeued start appends after it. Reading
    # stopped at the cut line, so the later start and finish were never seen.
    run, manifest = _run_folder(tmp_path, "140", [])
    Path(run.run_dir, run_files.SLURM_EVENTS).write_text(
        json.dumps({"event": "start", "job_id": "140", "restart": 0}) + "\n"
        + '{"event": "requeued", "job_' + "\n"
        + json.dumps({"event": "start", "job_id": "140", "restart": 1}) + "\n"
        + json.dumps({"event": "finished", "job_id": "140", "restart": 1}) + "\n")
    status = run_status(run, manifest, {})
    assert (status.state, status.restarts) == ("COMPLETED", 1)


def test_an_earlier_jobs_ending_is_not_the_resumed_jobs(tmp_path):
    # Job 125, resumed after 120 ran out of requeues, cancelled while pending: not OUT_OF_REQUEUES
    # (the marker was 120's), nor cancelled "after saving a checkpoint" (a cancel of 120's).
    run, manifest = _run_folder(tmp_path, "125", OLD_JOB_EVENTS)
    (Path(run.run_dir) / run_files.OUT_OF_REQUEUES).write_text(
        json.dumps({"job_id": "120", "restarts": 2, "max_requeues": 1}))
    status = run_status(run, manifest, {"125": SlurmState("CANCELLED")})
    assert status.state == "CANCELLED" and "out of requeues" not in (status.error or "")
    events = [{"event": "start", "job_id": "120", "restart": 0},
              {"event": "cancelled", "job_id": "120", "restart": 0, "step": 7}]
    run, manifest = _run_folder(tmp_path, "125", events, name="cancelled")
    status = run_status(run, manifest, {})
    assert status.state == "UNKNOWN" and "step 7" not in (status.error or "")


# ---- out of requeues -------------------------------------------------------------------------

def test_out_of_requeues_says_what_was_kept_without_a_stale_log_line(tmp_path, capsys,
                                                                      monkeypatch):
    run, manifest = _run_folder(tmp_path, "120", OLD_JOB_EVENTS)
    run_dir = Path(run.run_dir)
    (run_dir / run_files.OUT_OF_REQUEUES).write_text(
        json.dumps({"job_id": "120", "restarts": 2, "max_requeues": 1}))
    _checkpoint(run_dir, 151)
    (run_dir / "slurm" / "120_0_log.err").write_text(OLD_JOB_STDERR)
    with (run_dir / "slurm" / "120_0_result.pkl").open("wb") as handle:
        pickle.dump(("error", "Traceback ...\nseq2seq_es.slurm.job.OutOfRequeuesError: "
                              "pre-empted after 2 requeue(s); max_requeues is 1\n"), handle)
    # `resume --max-requeues 5` records the new limit for the sweep: the job ran with 1
    manifest.slurm["max_requeues"] = 5
    manifest.write(run_dir / RUN_MANIFEST)
    expected = (f"out of requeues (max_requeues 1): checkpoint at step 151; `seq2seq-es slurm "
                f"resume {run_dir}` continues it")
    status = run_status(run, manifest, {"120": SlurmState("FAILED", restarts=2)})
    assert (status.state, status.error) == ("OUT_OF_REQUEUES", expected)
    assert status.log == str(run_dir / "slurm" / "120_0_log.err")
    text = format_status(manifest, [status])
    assert f"    error: {expected}" in text and "DUE TO JOB REQUEUE" not in text
    # `resume --dry-run` tells how the last job ended the same way
    monkeypatch.setattr(slurm_cli, "query_slurm", lambda ids: {"120": SlurmState("FAILED")})
    assert slurm_main(["resume", str(run_dir), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"#     its last job ended OUT_OF_REQUEUES: {expected}" in out
    assert "DUE TO JOB REQUEUE" not in out


def test_out_of_requeues_at_zero_names_the_flag_that_lets_the_resumed_job_requeue(tmp_path):
    # `slurm resume` keeps the submitted settings: with max_requeues 0 the resumed job ends at
    # its next pre-emption the same way, and the advice said only to resume.
    run, manifest = _run_folder(tmp_path, "121", OLD_JOB_EVENTS, max_requeues=0)
    run_dir = Path(run.run_dir)
    (run_dir / run_files.OUT_OF_REQUEUES).write_text(
        json.dumps({"job_id": "121", "restarts": 0, "max_requeues": 0}))
    _checkpoint(run_dir, 40)
    status = run_status(run, manifest, {"121": SlurmState("FAILED")})
    assert status.error == (f"out of requeues (max_requeues 0): checkpoint at step 40; "
                            f"`seq2seq-es slurm resume {run_dir} --max-requeues N` continues it")


def test_a_job_whose_task_was_killed_says_so_and_how_to_go_on(tmp_path):
    # `kill -9` of the job's srun: status showed only SLURM's `*** STEP 393.0 ... CANCELLED
    # AT ... ***`, where CANCELLED and TIMEOUT get the tool's line and the way on.
    run, manifest = _run_folder(tmp_path, "393", [{"event": "start", "job_id": "393",
                                                   "restart": 0}])
    run_dir = Path(run.run_dir)
    _checkpoint(run_dir, 100)
    (run_dir / "slurm" / "393_0_log.err").write_text(
        "slurmstepd-node1: error: *** STEP 393.0 ON node1 CANCELLED AT 2026-12-05T01:55:45 ***\n")
    status = run_status(run, manifest, {"393": SlurmState("FAILED")})
    assert status.error == (
        "its task was killed (the process or its srun ended by a signal, not by an error of its "
        "own; SLURM said: STEP 393.0 ON node1 CANCELLED AT 2026-12-05T01:55:45); `seq2seq-es "
        "slurm resume` continues it from its last checkpoint")


def test_a_job_slurm_forgot_that_never_started_says_so(tmp_path):
    # cancelled while pending, then forgotten (no accounting): a bare UNKNOWN, no note
    run, manifest = _run_folder(tmp_path, "380", [])
    status = run_status(run, manifest, {})
    assert status.state == "UNKNOWN"
    assert status.note == ("SLURM no longer knows job 380, which left no log: it never started "
                           "(cancelled while it waited?); it saved no checkpoint, so "
                           "`seq2seq-es slurm resume` starts it again from its first step")


def test_a_failed_jobs_error_is_its_last_starts_not_a_requeue_notice(tmp_path):
    folder = tmp_path / "slurm"
    folder.mkdir()
    log = folder / "7_0_log.err"
    # torch prefixes a rank's traceback once its process group is up
    log.write_text(OLD_JOB_STDERR.split("SIGUSR2")[0] + "[rank0]: Traceback (most recent call "
                   "last):\n[rank0]: ValueError: bad row 3\nsrun: error: node1: task 0: Exited "
                   "with exit code 1\n")
    assert failure_details(str(folder), "7", 1)[0] == "ValueError: bad row 3"
    # only requeue notices: none of them says how the job ended
    log.write_text(OLD_JOB_STDERR.split("SIGTERM")[0])
    assert failure_details(str(folder), "7", 1)[0] is None
    log.write_text(OLD_JOB_STDERR.split("SIGTERM")[0] + "slurmstepd-node1: error: *** JOB 7 ON "
                   "node1 CANCELLED AT 2026-12-03T08:00:00 DUE TO TIME LIMIT ***\n")
    assert failure_details(str(folder), "7", 1)[0].endswith("DUE TO TIME LIMIT ***")


@pytest.mark.parametrize("in_sweep", [False, True])
def test_a_job_out_of_requeues_ends_with_one_line(tmp_path, monkeypatch, in_sweep):
    # It ended with submitit's "triggered an exception" and a traceback, after the engine's
    # "the job requeues itself".
    root = tmp_path / "sweep"
    run_dir = root / "run" if in_sweep else tmp_path / "run"
    run_dir.mkdir(parents=True)
    if in_sweep:
        (root / SWEEP_MANIFEST).write_text("{}")
    (run_dir / run_files.PREEMPTED).write_text(json.dumps({"step": 151, "signal": "SIGUSR2"}))
    monkeypatch.setenv("SLURM_JOB_ID", "120")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    job = TrainJob(["--task", "mlsum"], run_dir=run_dir, max_requeues=1)
    with pytest.raises(OutOfRequeuesError) as raised:
        job._requeue_or_give_up(0, 2)
    # a SystemExit: submitit (which catches Exception) saves no traceback, Python prints the line
    assert isinstance(raised.value, SystemExit) and not isinstance(raised.value, Exception)
    folder = root if in_sweep else run_dir
    assert raised.value.code == (
        "out of requeues (max_requeues 1, pre-empted after 2 requeue(s)): the job is not "
        f"requeued; its checkpoint at step 151 is kept, and `seq2seq-es slurm resume {folder}` "
        "continues it")
    assert json.loads((run_dir / run_files.OUT_OF_REQUEUES).read_text())["job_id"] == "120"
    ended = subprocess.run(
        [sys.executable, "-c", "from seq2seq_es.slurm.job import OutOfRequeuesError\n"
                               f"raise OutOfRequeuesError({raised.value.code!r})"],
        capture_output=True, text=True, timeout=120)
    assert (ended.returncode, ended.stderr) == (1, raised.value.code + "\n")


# ---- --run-dir and --sweep-dir ----------------------------------------------------------------

def _finished_run(run_dir: Path) -> None:
    (run_dir / run_files.FINAL).mkdir(parents=True)
    for name in (run_files.CONFIG, run_files.METRICS, run_files.FINAL_RESULTS, run_files.DONE):
        (run_dir / name).write_text("{}\n")


def test_run_dir_inside_a_sweep_or_a_run_or_among_the_users_files_is_refused(tmp_path, capsys):
    sweep_dir = tmp_path / "sw1"
    (sweep_dir / SWEEP_MANIFEST).parent.mkdir()
    (sweep_dir / SWEEP_MANIFEST).write_text("{}")
    _finished_run(sweep_dir / "barto-tiny__mlsum__lr-3e-5")
    _finished_run(tmp_path / "r1")
    data = tmp_path / "data"
    (data / "mlsum").mkdir(parents=True)
    (data / "notes.txt").write_text("mine\n")
    for run_dir, says in (
            (sweep_dir / "barto-tiny__mlsum__lr-3e-5" / "final",
             f"lies inside the sweep {sweep_dir}, whose runs go on only through `seq2seq-es "
             f"slurm resume {sweep_dir}`; choose a folder outside it"),
            (tmp_path / "r1" / "final" / "new",
             f"lies inside the run folder {tmp_path / 'r1'} (final_results.json, DONE, "
             "config.yaml); choose a folder outside it"),
            (data, f"{data} is not empty and holds no run of seq2seq-es (mlsum, notes.txt); give "
                   "a new or empty folder")):
        before = sorted(run_dir.rglob("*")) if run_dir.exists() else None
        assert slurm_main(["submit", "--task", "mlsum", "--model", "barto-tiny", "--run-dir",
                           str(run_dir), "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: argument --run-dir: ") and says in err, err
        assert (sorted(run_dir.rglob("*")) if run_dir.exists() else None) == before
    with pytest.raises(ConfigError, match="lies inside the run folder"):
        check_sweep_dir(tmp_path / "r1" / "final" / "sweep", [])


def test_run_dir_left_by_a_failed_sbatch_or_below_a_projects_config_is_taken(tmp_path):
    # a project folder with a config.yaml of its own (no run's files beside it) holds runs
    project = tmp_path / "project"
    project.mkdir()
    (project / run_files.CONFIG).write_text("train:\n  max_steps: 5\n")
    check_run_dir(project / "runs" / "a")
    # what a submission whose sbatch failed leaves: the same command may submit into it again
    run, manifest = _run_folder(tmp_path, None, [], name="failed")
    manifest.submitted = False
    manifest.write(Path(run.run_dir) / RUN_MANIFEST)
    Path(run.run_dir, run_files.SLURM_EVENTS).unlink()
    (Path(run.run_dir) / run_files.SUBMITTED_CONFIG).write_text("train: {}\n")
    check_run_dir(Path(run.run_dir))
    (Path(run.run_dir) / "results.txt").write_text("mine\n")
    with pytest.raises(ConfigError, match=r"holds no run of seq2seq-es \(results.txt, "):
        check_run_dir(Path(run.run_dir))


def test_run_dir_of_an_earlier_job_names_its_state_and_what_goes_on(tmp_path, monkeypatch):
    run, _ = _run_folder(tmp_path, "114", [], name="r1")
    run_dir = Path(run.run_dir)
    monkeypatch.setattr(queries, "query_slurm", lambda ids: {})
    with pytest.raises(ConfigError) as refused:
        check_run_dir(run_dir)
    assert (f"{run_dir} holds the run of job 114 (submitted earlier); `seq2seq-es slurm status "
            f"{run_dir}` shows it, and `seq2seq-es slurm resume {run_dir}` continues it once its "
            "job has ended") in str(refused.value)
    monkeypatch.setattr(queries, "query_slurm", lambda ids: {"114": SlurmState("RUNNING")})
    with pytest.raises(ConfigError, match=r"holds the run of job 114 \(RUNNING\);.* continues it "
                                          r"once its job has ended"):
        check_run_dir(run_dir)
    monkeypatch.setattr(queries, "query_slurm", lambda ids: {"114": SlurmState("TIMEOUT")})
    with pytest.raises(ConfigError, match=r"holds the run of job 114 \(TIMEOUT\);.* continues it "
                                          r"\(with new resources"):
        check_run_dir(run_dir)
    _finished_run(run_dir)
    with pytest.raises(ConfigError) as refused:
        check_run_dir(run_dir)
    assert (f"holds the run of job 114, which has finished (DONE); `seq2seq-es slurm status "
            f"{run_dir}` shows it. To train a finished run further, run `seq2seq-es train "
            f"--config {run_dir / 'config.yaml'} --train.max_steps N`") in str(refused.value)


# ---- finished runs and resume -------------------------------------------------------------------

def test_resume_says_train_overrides_reach_no_finished_run(tmp_path, capsys, monkeypatch):
    run, _ = _run_folder(tmp_path, "114", [], name="r1")
    _finished_run(Path(run.run_dir))
    monkeypatch.setattr(slurm_cli, "query_slurm", lambda ids: {})
    assert slurm_main(["resume", run.run_dir, "--yes", "--", "--train.max_steps", "400"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --train.max_steps: not applied: every run of ")
    assert ("has finished (DONE), and `slurm resume` submits unfinished runs only. To train a "
            f"finished run further, run `seq2seq-es train --config {run.run_dir}/config.yaml "
            "--train.max_steps N` (or a larger --train.epochs): it continues from its last "
            "checkpoint under the longer schedule") in err
    assert load_manifest(run.run_dir).runs[0].job_id == "114"
    # a SLURM flag asks for a change as much as a train override does (it exited 0)
    for flags in (["--time", "90"], ["--sbatch", "qos=high"]):
        assert slurm_main(["resume", run.run_dir, "--yes", *flags]) == 2
        assert capsys.readouterr().err.startswith(
            f"error: argument {flags[0]}: not applied: every run of ")
    # without overrides there was nothing asked for: as before
    assert slurm_main(["resume", run.run_dir, "--yes"]) == 0
    assert "has finished (DONE): nothing to resume" in capsys.readouterr().out
    assert slurm_main(["resume", run.run_dir, "-y"]) == 0  # sweep's short form too
    assert "has finished (DONE): nothing to resume" in capsys.readouterr().out


# ---- nits --------------------------------------------------------------------------------------

def test_a_one_run_sweep_is_submitted_as_one_job(tmp_path, capsys, monkeypatch):
    def fake_submit(manifest, config, manifest_path):
        manifest.runs[0].job_id = "119"
        return manifest

    monkeypatch.setattr(slurm_cli, "submit", fake_submit)
    monkeypatch.setattr(slurm_cli, "require_slurm_clients", lambda: None)
    monkeypatch.setattr(slurm_cli, "partition_gres", lambda: None)
    monkeypatch.setattr(slurm_cli, "check_partition", lambda partition, required, origin=None: None)
    monkeypatch.setattr(slurm_cli, "check_node_count", lambda config, required: None)
    assert slurm_main(["sweep", "--sweep-dir", str(tmp_path / "sw"), "--pair",
                       "barto-tiny:mlsum", "--no-grid", "--yes"]) == 0
    assert "submitted 1 run(s) as job 119, at most 4 at once" in capsys.readouterr().out


def test_a_run_config_given_as_slurm_config_is_named_as_such(tmp_path, capsys):
    run_config = tmp_path / "long.yaml"
    run_config.write_text("train:\n  max_steps: 300\ndata:\n  max_target_length: 96\n")
    both = tmp_path / "both.yaml"
    both.write_text("slurm:\n  time_min: 30\ntrain:\n  max_steps: 5\n")
    argv = ["submit", "--task", "mlsum", "--model", "barto-tiny", "--run-dir",
            str(tmp_path / "run"), "--dry-run", "--slurm-config"]
    assert slurm_main(argv + [str(run_config)]) == 2
    assert capsys.readouterr().err == (
        f"error: argument --slurm-config: file {run_config} has no slurm: section and looks "
        f"like a run config (train:, data:); pass it to the run after -- as `-- --config "
        f"{run_config}`, and SLURM settings as flags or in a file with a slurm: section\n")
    # `train` refuses a slurm: section, so the train: section here could only be ignored
    assert slurm_main(argv + [str(both)]) == 2
    assert capsys.readouterr().err == (
        f"error: argument --slurm-config: file {both} has run config sections (train:) beside "
        "its slurm: section, which nothing would read: put them in a run config file of their "
        "own, given after -- as `--config FILE`\n")
    assert not (tmp_path / "run").exists()


def test_bench_dry_run_refuses_more_nodes_than_the_partition_has(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sweep, "partition_nodes",
                        lambda partition: ("debug", {"node1": 0, "node2": 0},
                                           {"node1": 1, "node2": 1}))
    argv = ["bench", "--bench-dir", str(tmp_path / "b"), "--nodes", "1,4", "--model",
            "barto-tiny", "--dry-run"]
    assert slurm_main(argv) == 2
    assert capsys.readouterr().err == ("error: argument --nodes: 4 nodes asked, but partition "
                                       "'debug' has 2 (node1, node2)\n")

    # where sinfo does not answer, the dry run prints the plan as before
    def no_sinfo(partition):
        raise SlurmUnavailableError("sinfo not found")

    monkeypatch.setattr(sweep, "partition_nodes", no_sinfo)
    assert slurm_main(argv) == 0
    assert "nodes4_zero0: 4 node(s)" in capsys.readouterr().out
    assert not (tmp_path / "b").exists()


def test_the_engines_stop_line_does_not_promise_a_requeue_that_will_not_come():
    # With its requeues used up the job gave up right after the engine printed "the job
    # requeues itself and resumes from it".
    from seq2seq_es.engine.trainer import after_stop
    from seq2seq_es.run_files import INTERRUPTED_EXIT_CODE, PREEMPTED_EXIT_CODE, REQUEUES_LEFT_ENV

    job = {"SUBMITIT_FOLDER": "/x"}
    assert after_stop("SIGUSR2", PREEMPTED_EXIT_CODE, {**job, REQUEUES_LEFT_ENV: "2"}) == (
        "the job requeues itself and resumes from it (seq2seq-es slurm status)")
    assert after_stop("SIGUSR2", PREEMPTED_EXIT_CODE, {**job, REQUEUES_LEFT_ENV: "0"}) == (
        "the job has used its requeues and ends; `seq2seq-es slurm resume` continues it from "
        "this checkpoint (seq2seq-es slurm status)")
    assert after_stop("SIGTERM", PREEMPTED_EXIT_CODE, {**job, REQUEUES_LEFT_ENV: "0"}).startswith(
        "the job is requeued if SLURM requeues it")
    assert after_stop("SIGUSR2", PREEMPTED_EXIT_CODE, {}) == "resume with --train.resume auto"
    assert after_stop("SIGINT", INTERRUPTED_EXIT_CODE, job) == "resume with --train.resume auto"


def test_a_job_tells_the_engine_how_many_requeues_it_has_left(tmp_path, monkeypatch):
    from seq2seq_es.run_files import REQUEUES_LEFT_ENV

    seen = {}

    def entry(argv):
        seen["left"] = os.environ.get(REQUEUES_LEFT_ENV)
        return 0

    monkeypatch.setenv("SLURM_JOB_ID", "5")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    monkeypatch.delenv(REQUEUES_LEFT_ENV, raising=False)
    job = TrainJob(["--task", "mlsum"], run_dir=tmp_path / "run", max_requeues=1)
    monkeypatch.setattr(job, "_export_distributed_env",
                        lambda: type("Dist", (), {"rank": 0, "world_size": 1,
                                                  "master_addr": "h", "master_port": 1})())
    monkeypatch.setattr(job, "_link_logs", lambda rank: None)
    monkeypatch.setattr("seq2seq_es.slurm.job.resolve_entry", lambda name: entry)
    monkeypatch.setattr("seq2seq_es.slurm.job._guard_submitit_handler", lambda run_dir: None)
    # the job's own process ignores stop signals after training; pytest's must not
    monkeypatch.setattr("seq2seq_es.slurm.job._ignore_stop_signals", lambda: None)
    assert job._train()["restarts"] == 1
    assert seen["left"] == "0"


# ---- SLURM lifecycle audit -----------------------------------------------------------------------

def test_slurms_own_cancel_notice_gives_way_to_the_tools_line(tmp_path):
    # status said `ended: *** JOB 171 ON node2 CANCELLED AT ... ***` (another id than the array
    # task's in the table, no way on), and a TIMEOUT never showed its --signal-delay-s advice;
    # once SLURM forgot the job, the same run showed a bare UNKNOWN
    run, manifest = _run_folder(tmp_path, "170_1", [])
    _checkpoint(Path(run.run_dir), 2)
    log = Path(manifest.submitit_folder) / "170_1_0_log.err"
    log.write_text("slurmstepd-node2: error: *** JOB 171 ON node2 CANCELLED AT "
                   "2026-12-04T11:00:00 ***\n")
    status = run_status(run, manifest, {"170_1": SlurmState("CANCELLED")})
    assert status.error == ("cancelled (scancel, or an administrator); `seq2seq-es slurm "
                            "resume` continues it from its last checkpoint")
    forgotten = run_status(run, manifest, {})
    assert (forgotten.state, forgotten.error) == ("CANCELLED", status.error)
    log.write_text("slurmstepd-node2: error: *** JOB 171 ON node2 CANCELLED AT "
                   "2026-12-04T11:00:00 DUE TO TIME LIMIT ***\n")
    for known in ({"170_1": SlurmState("TIMEOUT")}, {}):
        status = run_status(run, manifest, known)
        assert status.state == "TIMEOUT" and "raise --signal-delay-s" in status.error
    # a line of the run's own still wins
    log.write_text("error: config key 'optim.lr': must be positive\n")
    status = run_status(run, manifest, {"170_1": SlurmState("FAILED")})
    assert status.error == "config key 'optim.lr': must be positive"


def test_status_of_a_finished_run_shows_the_kept_steps_scores(tmp_path):
    # it paired the last validation (step 6) with the test of the best step (4), a dev / test
    # pair no checkpoint has
    run, manifest = _run_folder(tmp_path, "180", [])
    run_dir = Path(run.run_dir)
    (run_dir / run_files.METRICS).write_text("".join(json.dumps(record) + "\n" for record in [
        {"step": 4, "eval/rougeL": 30.0, "eval/loss": 2.0},
        {"step": 6, "eval/rougeL": 20.0, "eval/loss": 2.5, "train/loss": 1.5},
        {"step": 4, "test/rougeL": 28.0}]))
    (run_dir / run_files.FINAL_RESULTS).write_text(json.dumps({
        "task": "mlsum", "model": "barto-tiny", "main_metric": "rougeL", "best_step": 4,
        "steps": 6, "validation": {"rougeL": 30.0, "loss": 2.0}, "test": {"rougeL": 28.0}}))
    status = run_status(run, manifest, {"180": SlurmState("COMPLETED")})
    assert status.metrics == {"train/loss": 1.5, "eval/rougeL": 30.0, "eval/loss": 2.0,
                              "test/rougeL": 28.0}
    assert "eval/ and test/ metrics: best step 4 (final_results.json)" in status.note


def test_a_sweep_folder_among_the_users_files_is_refused(tmp_path, capsys):
    # collect's results.md replaced a results.md of the user's there
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "results.md").write_text("my notes\n")
    assert slurm_main(["sweep", "--sweep-dir", str(folder), "--pair", "barto-tiny:mlsum",
                       "--no-grid", "--dry-run"]) == 2
    assert (f"error: argument --sweep-dir: {folder} is not empty and holds no sweep of "
            "seq2seq-es (results.md); give a new or empty folder for the sweep"
            in capsys.readouterr().err)
    assert (folder / "results.md").read_text() == "my notes\n"
    assert slurm_main(["sweep", "--sweep-dir", str(tmp_path / "new"), "--pair",
                       "barto-tiny:mlsum", "--no-grid", "--dry-run"]) == 0


def test_resume_reads_a_new_data_file_before_submitting_and_a_declined_one_fails(
        tmp_path, capsys, monkeypatch):
    # `resume -- --data.train_file NEW` was checked for existence only: a bad file failed in
    # every job after its wait in the queue; and a "no" at the prompt exited 0 in silence
    run, manifest = _run_folder(tmp_path, "190", [], name="r9")
    manifest.runs[0].argv = ["--task", "mlsum", "--model", "barto-tiny", "--train.output_dir",
                             run.run_dir]  # what submit records
    manifest.write(Path(run.run_dir) / RUN_MANIFEST)
    monkeypatch.setattr(slurm_cli, "query_slurm", lambda ids: {"190": SlurmState("CANCELLED")})
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "un artículo"}) + "\n")  # no summary column
    fixtures = Path(__file__).parent / "fixtures" / "mlsum"
    data = ["--data.train_file", str(bad), "--data.validation_file",
            str(fixtures / "validation.jsonl")]
    assert slurm_main(["resume", run.run_dir, "--dry-run", "--", *data]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "summary" in err, err
    assert slurm_main(["resume", run.run_dir, "--dry-run", "--no-data-check", "--", *data]) == 0
    capsys.readouterr()
    monkeypatch.setattr(slurm_cli, "_confirm", lambda count, yes: False)
    assert slurm_main(["resume", run.run_dir]) == 1
    assert "nothing submitted" in capsys.readouterr().out
