"""submitit jobs on the local cluster: rendezvous, pre-emption and requeue, failures, sweeps.

The jobs run seq2seq_es.slurm.probe, which keeps the engine's pre-emption contract (agree on the
stop at a step boundary, save, exit 3 after writing PREEMPTED) without training a model.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import psutil
import pytest

from conftest_slurm import job_fields, slurm_cluster, wait_finished, wait_until  # noqa: F401  (fixture)
from ports import hold_like_an_outgoing_connection, release
from seq2seq_es.engine.rendezvous import rendezvous_port
from seq2seq_es.slurm.cli import main as slurm_main
from seq2seq_es.slurm.monitor import read_metrics, sweep_status
from seq2seq_es.slurm.sweep import load_manifest

pytestmark = pytest.mark.slurm

PROBE = "seq2seq_es.slurm.probe:main"


def submit_probe(run_dir: Path, *options: str, overrides: tuple[str, ...] = ()) -> str:
    status = slurm_main(["submit", "--task", "mlsum", "--model", "barto", "--run-dir",
                         str(run_dir), "--entry", PROBE, "--time", "10", *options, "--",
                         *overrides])
    assert status == 0
    return load_manifest(run_dir).runs[0].job_id


def train_records(run_dir: Path) -> list[dict]:
    """Training records as logged: a step logged twice stays twice (merge_steps=False)."""
    return [r for r in read_metrics(run_dir / "metrics.jsonl", merge_steps=False)
            if "train/loss" in r]


def events(run_dir: Path) -> list[str]:
    lines = (run_dir / "slurm_events.jsonl").read_text().splitlines()
    return [json.loads(line)["event"] for line in lines]


def test_two_node_job_joins_one_gloo_group(slurm_cluster, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    # the test process's OMP_NUM_THREADS=1 (conftest) unset: the job sizes torch's threads
    job_id = submit_probe(run_dir, "--nodes", "2", "--cpus-per-task", "1", "--setup",
                          "unset OMP_NUM_THREADS",
                          overrides=("--probe.steps", "3", "--probe.witness_teardown", "true"))
    fields = wait_finished(job_id)
    assert fields["JobState"] == "COMPLETED"
    for rank in (0, 1):  # each task left after submitit saved its result, without finalizing
        out, err = [(run_dir / "logs" / f"rank{rank}{suffix}").read_text()
                    for suffix in (".out", ".err")]
        assert "Exiting after successful completion" in out
        assert "interpreter finalized" not in out + err
    records = train_records(run_dir)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(r["world_size"] == 2 and r["allreduce"] == 3.0 for r in records)  # ranks 1 + 2
    assert records[0]["nodes"] == ["node1", "node2"]
    # torch took every core of a node without CPU binding: now the task's one CPU
    assert all(r["threads"] == 1 for r in records)
    for rank in (0, 1):  # every rank's log is reachable from the run folder
        assert (run_dir / "logs" / f"rank{rank}.out").resolve().is_file()
    [status] = sweep_status(load_manifest(run_dir))
    assert status.state == "COMPLETED" and status.step == 3


def start_events(run_dir: Path) -> list[dict]:
    lines = (run_dir / "slurm_events.jsonl").read_text().splitlines()
    return [event for event in map(json.loads, lines) if event["event"] == "start"]


def test_ranks_meet_on_the_next_port_when_the_jobs_port_is_taken_on_the_master_node(
        slurm_cluster, tmp_path):  # noqa: F811
    # A sweep's job failed in CI with EADDRINUSE: an outgoing connection held its port. The job
    # is held until its port is taken the same way (both nodes of the local cluster are this
    # machine, so the master node's port is this machine's).
    run_dir = tmp_path / "run"
    job_id = submit_probe(run_dir, "--nodes", "2", "--sbatch", "hold",
                          overrides=("--probe.steps", "2"))
    held = hold_like_an_outgoing_connection(rendezvous_port(f"{job_id}:0"))
    try:
        subprocess.run(["scontrol", "release", job_id], check=True, timeout=60)
        assert wait_finished(job_id)["JobState"] == "COMPLETED"
    finally:
        release(held)
    [start] = start_events(run_dir)
    assert start["master"].endswith(f":{rendezvous_port(f'{job_id}:0', 1)}")
    assert [r["world_size"] for r in train_records(run_dir)] == [2, 2]
    # rank 0 published the port for rank 1 in the job's (shared) submitit folder, under the id
    # of this submission (an old job with the same id cannot be read by mistake)
    [published] = (run_dir / "slurm").glob(f"{job_id}_s*_rendezvous_0.port")
    assert re.fullmatch(rf"{job_id}_s[0-9a-f]{{12}}_rendezvous_0\.port", published.name)
    assert published.read_text() == f"{rendezvous_port(f'{job_id}:0', 1)}\n"


def test_dry_run_prints_the_script_that_is_submitted(slurm_cluster, tmp_path, capsys):  # noqa: F811
    run_dir = tmp_path / "run"
    options = ["submit", "--task", "mlsum", "--model", "barto", "--run-dir", str(run_dir),
               "--entry", PROBE, "--nodes", "2", "--time", "7", "--sbatch", "comment=probe",
               "--", "--probe.steps", "1"]
    assert slurm_main([*options[:-3], "--dry-run", *options[-3:]]) == 0
    printed = capsys.readouterr().out
    job_id = submit_probe(run_dir, "--nodes", "2", "--time", "7", "--sbatch", "comment=probe",
                          overrides=("--probe.steps", "1"))
    submitted = (run_dir / "slurm" / f"{job_id}_submission.sh").read_text()
    assert printed.startswith(submitted)
    assert "#SBATCH --comment=probe" in submitted
    assert wait_finished(job_id)["JobState"] == "COMPLETED"


def test_preempted_job_requeues_and_resumes_without_losing_a_step(slurm_cluster, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    steps = 24
    job_id = submit_probe(run_dir, "--nodes", "2", "--max-requeues", "2",
                          overrides=("--probe.steps", str(steps), "--probe.step_seconds", "0.3",
                                     "--probe.witness_teardown", "true"))
    wait_until(lambda: len(train_records(run_dir)) >= 3, 120, "three training steps")
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=60)
    fields = wait_finished(job_id)
    assert fields["JobState"] == "COMPLETED"
    assert fields["Restarts"] == "1"
    records = train_records(run_dir)
    assert [r["step"] for r in records] == list(range(1, steps + 1))  # none lost or repeated
    restarts = [r["restart"] for r in records]
    assert restarts[0] == 0 and restarts[-1] == 1 and restarts == sorted(restarts)
    done = json.loads((run_dir / "DONE").read_text())
    assert done["eval/total"] == sum(3.0 * step for step in range(1, steps + 1))
    assert not (run_dir / "PREEMPTED").exists()
    assert events(run_dir) == ["start", "requeued", "start", "finished"]
    ports = [int(event["master"].rsplit(":", 1)[1]) for event in start_events(run_dir)]
    for restart, port in enumerate(ports):  # each run's own (its restart count is hashed in)
        assert port in {rendezvous_port(f"{job_id}:{restart}", k) for k in range(4)}
    [status] = sweep_status(load_manifest(run_dir))
    assert status.state == "COMPLETED" and status.restarts == 1 and status.step == steps
    for log in (run_dir / "slurm").glob("*_log.*"):  # pre-empted, requeued or done: no teardown
        assert "interpreter finalized" not in log.read_text(), log


def test_scancel_ends_a_running_job_with_its_checkpoint_and_no_requeue(slurm_cluster, tmp_path,  # noqa: F811
                                                                       capsys):
    # A plain scancel sends SIGTERM, which the job used to take for pre-emption: it saved,
    # requeued itself and went on training (twice in a walkthrough), using up a requeue each time.
    run_dir = tmp_path / "run"
    job_id = submit_probe(run_dir, "--nodes", "2", overrides=(
        "--probe.steps", "200", "--probe.step_seconds", "0.2"))
    wait_until(lambda: len(train_records(run_dir)) >= 2, 120, "two training steps")
    subprocess.run(["scancel", job_id], check=True, timeout=60)
    fields = wait_finished(job_id, hurry_requeues=False)
    assert fields["JobState"] == "CANCELLED" and fields["Restarts"] == "0"
    assert events(run_dir) == ["start", "cancelled"]
    stopped = json.loads((run_dir / "PREEMPTED").read_text())
    assert stopped["signal"] == "SIGTERM" and stopped["step"] >= 2  # its checkpoint is there
    capsys.readouterr()
    assert slurm_main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"cancelled (scancel) after saving a checkpoint at step {stopped['step']}; " \
           "`seq2seq-es slurm resume` continues it from its last checkpoint" in out


def test_a_running_job_requeued_by_hand_comes_back_once(slurm_cluster, tmp_path):  # noqa: F811
    # `scontrol requeue` (like PreemptMode=REQUEUE) also sends SIGTERM, after SLURM has counted
    # the requeue: the job saves and leaves, SLURM restarts it, and it does not requeue itself.
    run_dir = tmp_path / "run"
    steps = 30
    job_id = submit_probe(run_dir, overrides=("--probe.steps", str(steps),
                                              "--probe.step_seconds", "0.2"))
    wait_until(lambda: len(train_records(run_dir)) >= 2, 120, "two training steps")
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60)
    fields = wait_finished(job_id)
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "1"
    lines = (run_dir / "slurm_events.jsonl").read_text().splitlines()
    assert events(run_dir) == ["start", "requeued", "start", "finished"]
    assert json.loads(lines[1])["reason"].startswith("requeued by SLURM")
    assert sorted({r["step"] for r in train_records(run_dir)}) == list(range(1, steps + 1))


def stopped_out_of_requeues(run_dir: Path, steps: int) -> str:
    """A probe job with no requeue left, signalled after two of its `steps` (0.2 s each): it
    saves, gives up and ends FAILED. Its job id."""
    job_id = submit_probe(run_dir, "--max-requeues", "0",
                          overrides=("--probe.steps", str(steps), "--probe.step_seconds", "0.2"))
    wait_until(lambda: len(train_records(run_dir)) >= 2, 120, "two training steps")
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=60)
    assert wait_finished(job_id)["JobState"] == "FAILED"
    return job_id


def test_job_out_of_requeues_says_so(slurm_cluster, tmp_path, capsys):  # noqa: F811
    run_dir = tmp_path / "run"
    job_id = stopped_out_of_requeues(run_dir, steps=60)
    assert (run_dir / "OUT_OF_REQUEUES").is_file()
    assert (run_dir / "PREEMPTED").is_file()  # the checkpoint is there to resume by hand
    capsys.readouterr()
    assert slurm_main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "OUT_OF_REQUEUES" in out and "out of requeues (max_requeues 0)" in out
    # with max_requeues 0 the resumed job would end the same way: the flag that changes it
    assert f"`seq2seq-es slurm resume {run_dir} --max-requeues N` continues it" in out
    # the job ended with one line saying so (srun's own follow), not with a traceback
    err = (run_dir / "logs" / "rank0.err").read_text()
    assert any(line.startswith("out of requeues (max_requeues 0, pre-empted after 0 requeue(s)): "
                               "the job is not requeued") for line in err.splitlines()), err
    assert "Traceback" not in err and "triggered an exception" not in err
    # Put back in the queue by hand, it resumes and finishes: no longer out of requeues.
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60)
    assert wait_finished(job_id)["JobState"] == "COMPLETED"
    assert not (run_dir / "OUT_OF_REQUEUES").exists()
    assert slurm_main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "COMPLETED" in out and "OUT_OF_REQUEUES" not in out


def test_resume_submits_a_stopped_run_again_and_it_finishes(slurm_cluster, tmp_path, capsys):  # noqa: F811
    # Out of requeues (or timed out, or failed): `slurm resume` submits the run again, from its
    # checkpoint, with the settings it was submitted with; a run with a live job is refused.
    run_dir = tmp_path / "run"
    first_job = stopped_out_of_requeues(run_dir, steps=40)
    capsys.readouterr()
    assert slurm_main(["resume", str(run_dir), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"#   run (last job {first_job})" in out
    # how it ended, so that a failure of its own is not resubmitted unseen
    assert "#     its last job ended OUT_OF_REQUEUES: out of requeues (max_requeues 0)" in out
    # The probe's jobs are no training: other ranks or train overrides are refused for them
    # (a training run's are composed and checked: test_slurm_training, test_slurm_resume_changes).
    assert slurm_main(["resume", str(run_dir), "--nodes", "2", "--yes"]) == 2
    assert "not training: they resume with their arguments and ranks as submitted" in \
        capsys.readouterr().err
    assert slurm_main(["resume", str(run_dir), "--max-requeues", "1", "--time", "9",
                       "--cpus-per-task", "1", "--sbatch", "comment=resumed", "--yes"]) == 0
    manifest = load_manifest(run_dir)
    second_job = manifest.runs[0].job_id
    assert second_job != first_job and manifest.slurm["max_requeues"] == 1
    assert (manifest.slurm["time_min"], manifest.slurm["cpus_per_task"]) == (9, 1)
    fields = job_fields(second_job)  # the new resources reached SLURM
    assert (fields["TimeLimit"], fields["Comment"]) == ("00:09:00", "resumed")
    assert slurm_main(["resume", str(run_dir), "--yes"]) == 2  # its job may still train
    assert f"still has job {second_job}" in capsys.readouterr().err
    assert wait_finished(second_job)["JobState"] == "COMPLETED"
    steps = [r["step"] for r in train_records(run_dir)]
    assert sorted(set(steps)) == list(range(1, 41))  # resumed, nothing lost
    assert (run_dir / "DONE").is_file() and not (run_dir / "OUT_OF_REQUEUES").exists()
    assert events(run_dir)[-2:] == ["start", "finished"]
    capsys.readouterr()
    assert slurm_main(["resume", str(run_dir), "--yes"]) == 0
    assert "nothing to resume" in capsys.readouterr().out


def test_failed_rank_shows_its_error_and_log_and_nothing_hangs(slurm_cluster, tmp_path, capsys):  # noqa: F811
    run_dir = tmp_path / "run"
    # rank 1 fails as `seq2seq-es train` does (prints `error: ...`, exit 2) while rank 0 waits
    # in a collective: srun's --kill-on-bad-exit ends the job.
    job_id = submit_probe(run_dir, "--nodes", "2",
                          overrides=("--probe.fail", "bad value for optim.lr",
                                     "--probe.fail_rank", "1", "--probe.fail_mode", "exit"))
    assert wait_finished(job_id, timeout_s=120)["JobState"] == "FAILED"
    [status] = sweep_status(load_manifest(run_dir))
    assert status.state == "FAILED"
    assert status.error.startswith("bad value for optim.lr (")
    assert "training exited with status 2 on rank 1" in status.error
    assert status.log == str(run_dir / "slurm" / f"{job_id}_1_log.err")
    assert "error: bad value for optim.lr" in Path(status.log).read_text()
    capsys.readouterr()
    assert slurm_main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"log: {status.log}" in out and "error: bad value for optim.lr" in out


def test_raised_exception_shows_in_status(slurm_cluster, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    job_id = submit_probe(run_dir, overrides=("--probe.fail", "no such dataset column",
                                              "--probe.witness_teardown", "true"))
    assert wait_finished(job_id, timeout_s=120)["JobState"] == "FAILED"
    [status] = sweep_status(load_manifest(run_dir))
    assert status.error.endswith(
        "ConfigError: config key 'probe.fail': no such dataset column")
    assert status.log == str(run_dir / "slurm" / f"{job_id}_0_log.err")
    assert "interpreter finalized" not in Path(status.log).read_text()


def test_unknown_partition_is_refused(slurm_cluster, tmp_path, capsys):  # noqa: F811
    sweep_dir = tmp_path / "sweep"
    assert slurm_main(["sweep", "--sweep-dir", str(sweep_dir), "--models", "barto", "--tasks",
                       "mlsum", "--partition", "gpu-big"]) == 2
    err = capsys.readouterr().err
    assert "SLURM does not know partition 'gpu-big'" in err and "debug" in err
    assert not sweep_dir.exists()


def test_sweep_runs_every_pair_and_grid_point_and_collects(slurm_cluster, tmp_path, capsys):  # noqa: F811
    sweep_dir = tmp_path / "sweep"
    assert slurm_main(["sweep", "--sweep-dir", str(sweep_dir), "--pair", "barto:mlsum",
                       "--pair", "t5s:mlsum", "--pair", "barto:sqac", "--grid",
                       "optim.lr=3e-5,5e-5", "--max-parallel", "2", "--entry", PROBE, "--yes",
                       "--time", "10", "--", "--probe.steps", "2"]) == 0
    manifest = load_manifest(sweep_dir)
    assert len(manifest.runs) == 6
    array_id = manifest.runs[0].job_id.split("_")[0]
    assert [run.job_id for run in manifest.runs] == [f"{array_id}_{i}" for i in range(6)]
    for run in manifest.runs:
        assert wait_finished(run.job_id)["JobState"] == "COMPLETED"
    statuses = sweep_status(manifest)
    assert {s.state for s in statuses} == {"COMPLETED"}
    assert all(s.step == 2 for s in statuses)
    capsys.readouterr()
    assert slurm_main(["collect", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    # The probe logs eval/score and eval/total, not the tasks' main metric rougeL: its first
    # metric, score, chooses the run. score grows with the learning rate, so 5e-5 (g2) is chosen
    # everywhere, and every number of a row is that run's (dev; the probe scores no test split).
    summarization = lines.index("| model | mlsum run | mlsum score | mlsum total |")
    assert lines[summarization + 2:summarization + 4] == ["| BARTO | g2 | 50.00 / – | 3.00 / – |",
                                                          "| T5S | g2 | 50.00 / – | 3.00 / – |"]
    qa = lines.index("| model | sqac run | sqac score | sqac total |")
    assert lines[qa + 2:qa + 4] == ["| BARTO | g2 | 50.00 / – | 3.00 / – |", ""]
    assert "- mlsum: score (the main metric rougeL was not logged; the first metric logged " \
           "instead)" in lines
    assert (sweep_dir / "results.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_a_signal_during_start_up_requeues_the_job_instead_of_killing_it(
        slurm_cluster, tmp_path):  # noqa: F811
    # SLURM checks time limits on a 30 s tick, so the time-limit signal can come the moment a
    # job starts, before Python has a handler; the task starts with SIGUSR2 blocked so that the
    # signal waits for submitit's handler instead of killing the task (the job would end FAILED).
    run_dir = tmp_path / "run"
    steps = 5
    job_id = submit_probe(run_dir, "--max-requeues", "2", overrides=("--probe.steps", str(steps)))
    submission = (run_dir / "slurm" / f"{job_id}_submission.sh").read_text()
    assert "env --block-signal=USR2 " in submission
    # signal as soon as the task's process exists (the nodes are this machine), while Python is
    # still importing: before submitit has installed its handler
    folder = str(run_dir / "slurm")

    def task_started() -> bool:
        return any(folder in (proc.info["cmdline"] or []) and "srun" not in proc.info["name"]
                   for proc in psutil.process_iter(["cmdline", "name"]))

    wait_until(task_started, 120, "the job's task to start", interval_s=0.01)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=60)
    fields = wait_finished(job_id, timeout_s=300)
    assert fields["JobState"] == "COMPLETED"
    assert int(fields["Restarts"]) == 1
    assert [r["step"] for r in train_records(run_dir)] == list(range(1, steps + 1))
    assert events(run_dir)[:2] == ["requeued", "start"] or events(run_dir)[:3] == [
        "start", "requeued", "start"]


def test_a_signal_while_the_model_loads_requeues_through_submitit(slurm_cluster, tmp_path):  # noqa: F811
    # before the entry has its own handlers, submitit's requeues the job and exits; that exit
    # must not be read as the entry failing
    run_dir = tmp_path / "run"
    job_id = submit_probe(run_dir, "--max-requeues", "2",
                          overrides=("--probe.steps", "3", "--probe.setup_seconds", "6"))
    wait_until(lambda: (run_dir / "slurm_events.jsonl").is_file(), 120, "the job to start",
               interval_s=0.05)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=60)
    fields = wait_finished(job_id, timeout_s=300)
    assert fields["JobState"] == "COMPLETED"
    assert int(fields["Restarts"]) == 1
    assert events(run_dir) == ["start", "requeued", "start", "finished"]
    assert [r["step"] for r in train_records(run_dir)] == [1, 2, 3]


def test_signals_after_training_has_finished_are_ignored(slurm_cluster, tmp_path):  # noqa: F811
    # a time-limit warning can meet a run as it exits; it must neither requeue the finished job
    # nor kill the task while Python shuts down (the job would end FAILED)
    run_dir = tmp_path / "run"
    job_id = submit_probe(run_dir, overrides=("--probe.steps", "3"))
    wait_until(lambda: (run_dir / "DONE").is_file(), 120, "training to finish", interval_s=0.01)
    while job_fields(job_id).get("JobState") == "RUNNING":
        subprocess.run(["scancel", "--signal=USR2", job_id], capture_output=True, timeout=60)
    fields = wait_finished(job_id, hurry_requeues=False)
    assert fields["JobState"] == "COMPLETED"
    assert int(fields["Restarts"]) == 0
    assert events(run_dir) == ["start", "finished"]


@pytest.mark.slow
def test_job_at_its_time_limit_requeues_and_resumes(slurm_cluster, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    steps = 400  # 120 s of steps: more than one 2-minute start signalled 40 s early can hold
    job_id = submit_probe(run_dir, "--time", "2", "--signal-delay-s", "40", "--max-requeues", "5",
                          overrides=("--probe.steps", str(steps), "--probe.step_seconds", "0.3"))
    fields = wait_finished(job_id, timeout_s=900)
    assert fields["JobState"] == "COMPLETED"
    assert int(fields["Restarts"]) >= 1
    assert [r["step"] for r in train_records(run_dir)] == list(range(1, steps + 1))
    done = json.loads((run_dir / "DONE").read_text())
    assert done["eval/total"] == sum(float(step) for step in range(1, steps + 1))
    assert events(run_dir).count("requeued") == int(fields["Restarts"])


@pytest.mark.parametrize("command", ["submit", "sweep"])
def test_more_nodes_than_the_partition_has_are_refused_before_sbatch(slurm_cluster, tmp_path,  # noqa: F811
                                                                     capsys, command):
    # `--nodes 3` on this two-node cluster was submitted and pended for ever (PartitionConfig).
    names = (["--task", "mlsum", "--model", "barto", "--run-dir", str(tmp_path / "run")]
             if command == "submit" else ["--pair", "barto:mlsum", "--no-grid", "--sweep-dir",
                                          str(tmp_path / "sweep")])
    assert slurm_main([command, *names, "--entry", PROBE, "--nodes", "3", "--dry-run"]) == 2
    assert "error: argument --nodes: 3 nodes asked, but partition 'debug' has 2 (node1, node2)" \
        in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


def test_options_sbatch_refuses_are_reported_and_nothing_is_marked_submitted(
        slurm_cluster, tmp_path, capsys):  # noqa: F811
    run_dir = tmp_path / "run"
    # the local cluster's nodes have no features: sbatch itself refuses the constraint (GPUs
    # per node are refused before sbatch by the node-shape check, features are left to sbatch)
    assert slurm_main(["submit", "--task", "mlsum", "--model", "barto", "--run-dir", str(run_dir),
                       "--constraint", "no_such_feature", "--entry", PROBE]) == 2
    err = capsys.readouterr().err
    assert "sbatch refused the job" in err and "Invalid feature specification" in err, err
    assert load_manifest(run_dir).submitted is False


def test_a_sweep_corrected_after_sbatch_refused_it_leaves_no_folder_of_its_first_plan(
        slurm_cluster, tmp_path, capsys):  # noqa: F811
    # The first plan's folders, left, looked like runs of the sweep to anyone listing it.
    sweep_dir = tmp_path / "sweep"

    def sweep(*options):
        return slurm_main(["sweep", "--sweep-dir", str(sweep_dir), "--pair", "barto:mlsum",
                           *options, "--no-grid", "--no-data-check", "--yes", "--entry", PROBE,
                           "--time", "10", "--", "--probe.steps", "1"])

    assert sweep("--pair", "t5s:mlsum", "--pair", "barto:sqac",
                 "--constraint", "no_such_feature") == 2
    assert "sbatch refused the job" in capsys.readouterr().err
    first_plan = sorted(path.name for path in sweep_dir.iterdir() if "__" in path.name)
    assert first_plan == ["barto__mlsum__default", "barto__sqac__default", "t5s__mlsum__default"]
    (sweep_dir / "barto__sqac__default" / "notes.txt").write_text("mine")  # the user's: kept
    assert sweep() == 0
    manifest = load_manifest(sweep_dir)
    assert manifest.submitted and [run.name for run in manifest.runs] == ["barto__mlsum__default"]
    assert sorted(path.name for path in sweep_dir.iterdir() if "__" in path.name) == [
        "barto__mlsum__default", "barto__sqac__default"]
    assert (sweep_dir / "barto__sqac__default" / "notes.txt").read_text() == "mine"
    assert wait_finished(manifest.runs[0].job_id)["JobState"] == "COMPLETED"


def test_a_signal_while_the_model_loads_out_of_requeues_ends_with_one_line(
        slurm_cluster, tmp_path, capsys):  # noqa: F811
    # Before the entry has its handlers, an out-of-requeues signal made submitit raise
    # UncompletedJobError: a traceback and "triggered an exception" in the log, for an ending
    # that is no bug (the same ending after training has started is one line).
    run_dir = tmp_path / "run"
    job_id = submit_probe(run_dir, "--max-requeues", "0",
                          overrides=("--probe.steps", "3", "--probe.setup_seconds", "20"))
    wait_until(lambda: (run_dir / "slurm_events.jsonl").is_file(), 120, "the job to start",
               interval_s=0.05)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=60)
    fields = wait_finished(job_id, timeout_s=300)
    assert fields["JobState"] == "FAILED" and int(fields["Restarts"]) == 0
    assert events(run_dir) == ["start", "out_of_requeues"]
    assert (run_dir / "OUT_OF_REQUEUES").is_file() and not train_records(run_dir)
    err = (run_dir / "logs" / "rank0.err").read_text()
    assert (f"out of requeues (max_requeues 0, pre-empted before training started, after 0 "
            f"requeue(s)): the job is not requeued; no checkpoint was saved yet, and "
            f"`seq2seq-es slurm resume {run_dir}` starts it again") in err.splitlines(), err
    assert "Traceback" not in err and "triggered an exception" not in err
    assert slurm_main(["status", str(run_dir)]) == 0
    assert "OUT_OF_REQUEUES" in capsys.readouterr().out
