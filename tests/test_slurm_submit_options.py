"""The SLURM options of `slurm submit`/`sweep`/`resume` that the walkthrough on a real cluster found
wanting, and what `slurm status` says of a pending job (no cluster: scontrol's text as fixtures).

- `--sbatch` (and a --slurm-config file's extra_sbatch) may not set what the tool sets itself;
- a signal delay must leave time to train;
- an unusable submitit folder (slurm.folder) is refused by its key, not by a traceback;
- `status` shows every pending job's reason, and says when it cannot start as submitted.
"""

from __future__ import annotations

import subprocess

import pytest

from seq2seq_es.errors import ConfigError
from seq2seq_es.slurm import queries
from seq2seq_es.slurm.cli import main as slurm_main
from seq2seq_es.slurm.config import SlurmConfig
from seq2seq_es.slurm.monitor import format_status, parse_scontrol_jobs, run_status, sweep_status
from seq2seq_es.slurm.options import with_sbatch_options
from seq2seq_es.slurm.sweep import SWEEP_MANIFEST, load_manifest, new_manifest, plan_runs


def _submit(tmp_path, *options):
    return ["submit", "--task", "mlsum", "--model", "barto", "--run-dir", str(tmp_path / "run"),
            "--dry-run", *options]


def _refused(capsys, argv) -> str:
    assert slurm_main(argv) == 2
    captured = capsys.readouterr()
    assert "#SBATCH" not in captured.out  # nothing rendered
    assert "Traceback" not in captured.err
    return captured.err


# ---- --sbatch / extra_sbatch -------------------------------------------------------------------

@pytest.mark.parametrize("spec, message", [
    ("time=30", "argument --sbatch: time is set by --time (slurm.time_min); use that"),
    ("--time=30", "argument --sbatch: time is set by --time (slurm.time_min); use that"),
    ("t=30", "argument --sbatch: t is set by --time (slurm.time_min); use that"),
    ("signal=USR1@60", "argument --sbatch: signal is set by --signal-delay-s "
                       "(slurm.signal_delay_s); use that (the job must get SIGUSR2"),
    ("ntasks_per_node=2", "argument --sbatch: ntasks_per_node is set by --gpus-per-node"),
    ("--gpus-per-node=4", "argument --sbatch: gpus-per-node is set by --gpus-per-node"),
    ("mem=64G", "argument --sbatch: mem is set by --mem-gb (slurm.mem_gb); use that"),
    ("partition=gpu", "argument --sbatch: partition is set by --partition"),
    ("job-name=x", "argument --sbatch: job-name is set by --job-name"),
    ("output=/tmp/o", "argument --sbatch: output is set by slurm.folder"),
    ("open-mode=truncate", "argument --sbatch: open-mode is set by seq2seq-es itself (append)"),
    ("no-requeue", "argument --sbatch: no-requeue is set by seq2seq-es itself"),
])
def test_submit_refuses_sbatch_options_the_tool_sets(tmp_path, capsys, spec, message):
    # `--time 10 --sbatch time=30 --sbatch signal=USR1@60` rendered --time=30 and
    # --signal=USR1@60 without a word, while the manifest said time_min 10.
    err = _refused(capsys, _submit(tmp_path, "--time", "10", f"--sbatch={spec}"))
    assert message in err


def test_sweep_refuses_an_array_of_its_own(tmp_path, capsys):
    err = _refused(capsys, ["sweep", "--sweep-dir", str(tmp_path / "sweep"), "--pair",
                            "barto:mlsum", "--no-grid", "--dry-run", "--sbatch", "array=0-3"])
    assert "argument --sbatch: array is set by seq2seq-es itself" in err
    assert "--max-parallel" in err


def test_a_slurm_config_file_may_not_set_them_either(tmp_path, capsys):
    yaml_file = tmp_path / "slurm.yaml"
    yaml_file.write_text("slurm:\n  time_min: 10\n  extra_sbatch:\n    comment: ok\n"
                         "    timeout_min: 30\n")
    err = _refused(capsys, _submit(tmp_path, "--slurm-config", str(yaml_file)))
    assert ("config key 'slurm.extra_sbatch.timeout_min': timeout_min is set by --time "
            "(slurm.time_min); use that") in err


def test_other_sbatch_options_still_reach_the_script(tmp_path, capsys):
    assert slurm_main(_submit(tmp_path, "--sbatch", "mail-type=END", "--sbatch", "exclusive",
                              "--sbatch", "wckey=proj")) == 0
    out = capsys.readouterr().out
    for line in ("#SBATCH --mail-type=END", "#SBATCH --exclusive", "#SBATCH --wckey=proj",
                 "#SBATCH --time=60", "#SBATCH --signal=USR2@120"):
        assert line in out, line


def test_resume_sbatch_options_are_checked_as_submit_ones():
    # cmd_resume merges its --sbatch options into the submitted ones with this function.
    assert with_sbatch_options({"comment": "a"}, ["mail-type=END"]) == {"comment": "a",
                                                                        "mail-type": "END"}
    with pytest.raises(ConfigError) as info:
        with_sbatch_options({"comment": "a"}, ["time=30"])
    assert info.value.key == "--sbatch" and "--time" in str(info.value)


# ---- the signal delay ----------------------------------------------------------------------------

@pytest.mark.parametrize("options, says", [
    (["--time", "10", "--signal-delay-s", "900"],
     "argument --signal-delay-s: 900 s is not shorter than the time "
     "limit of 10 min = 600 s (slurm.time_min, --time)"),
    (["--time", "1", "--signal-delay-s", "30"],
     "argument --signal-delay-s: 30 s leaves too little of the time "
     "limit of 1 min (slurm.time_min, --time) to train"),
    (["--time", "2", "--signal-delay-s", "90"], "90 s leaves too little"),
])
def test_submit_refuses_a_signal_delay_that_leaves_no_time_to_train(tmp_path, capsys, options,
                                                                     says):
    assert says in _refused(capsys, _submit(tmp_path, *options))


def test_sweep_refuses_it_too(tmp_path, capsys):
    err = _refused(capsys, ["sweep", "--sweep-dir", str(tmp_path / "sweep"), "--pair",
                            "barto:mlsum", "--no-grid", "--dry-run", "--time", "10",
                            "--signal-delay-s", "900"])
    assert "argument --signal-delay-s: 900 s" in err and "slurm.time_min" in err


def test_help_says_what_max_requeues_counts(capsys):
    with pytest.raises(SystemExit):
        slurm_main(["submit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "SLURM_RESTART_COUNT" in text and "scontrol requeue" in text
    assert "restarts after pre-emption/time limit" not in text


# ---- the submitit folder -----------------------------------------------------------------------

@pytest.mark.parametrize("under_file", [False, True])
def test_submit_refuses_a_folder_that_is_or_lies_under_a_file(tmp_path, capsys, under_file):
    (tmp_path / "a_file").write_text("x")
    folder = tmp_path / "a_file" / "slurm" if under_file else tmp_path / "a_file"
    yaml_file = tmp_path / "slurm.yaml"
    yaml_file.write_text(f"slurm:\n  folder: {folder}\n")
    err = _refused(capsys, _submit(tmp_path, "--slurm-config", str(yaml_file)))
    assert "config key 'slurm.folder': " in err
    assert ("is a file, so" if under_file else "is a file; expected a folder") in err


def test_submit_refuses_an_unwritable_folder(tmp_path, capsys):
    import os

    if not os.path.isdir("/proc/sys") or os.access("/proc/sys", os.W_OK):
        pytest.skip("needs /proc/sys, read-only even for root")
    yaml_file = tmp_path / "slurm.yaml"
    yaml_file.write_text("slurm:\n  folder: /proc/sys/nope\n")
    err = _refused(capsys, _submit(tmp_path, "--slurm-config", str(yaml_file)))
    assert ("config key 'slurm.folder': /proc/sys is not writable, so /proc/sys/nope cannot be "
            "created there") in err


# ---- status of pending jobs --------------------------------------------------------------------

# `scontrol show job -o` lines, as SLURM 23.x writes them (trimmed of fields status never reads).
SCONTROL = {
    "101": "JobId=101 JobName=seq2seq-es UserId=u(1000) GroupId=u(1000) Priority=4294901759 "
           "Nice=0 Account=(null) QOS=normal JobState=PENDING Reason=PartitionConfig "
           "Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 "
           "RunTime=00:00:00 TimeLimit=00:10:00 NumNodes=3-3 NumCPUs=3 NumTasks=3",
    "102": "JobId=102 JobName=seq2seq-es JobState=PENDING Reason=Priority Dependency=(null) "
           "Requeue=1 Restarts=0 BatchFlag=1 ExitCode=0:0 NumNodes=1",
    "103": "JobId=103 JobName=seq2seq-es JobState=PENDING "
           "Reason=ReqNodeNotAvail,_UnavailableNodes:node[2-3] Dependency=(null) Requeue=1 "
           "Restarts=0 BatchFlag=1 ExitCode=0:0 NumNodes=3",
    "104": "JobId=104 JobName=seq2seq-es JobState=PENDING Reason=BeginTime Dependency=(null) "
           "Requeue=1 Restarts=2 BatchFlag=1 ExitCode=0:0 NumNodes=1",
    "105": "JobId=105 JobName=seq2seq-es JobState=PENDING Reason=AssocMaxNodesPerJobLimit "
           "Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 ExitCode=0:0 NumNodes=3",
    "106": "JobId=106 JobName=seq2seq-es JobState=PENDING Reason=PartitionTimeLimit "
           "Dependency=(null) Requeue=1 Restarts=1 BatchFlag=1 ExitCode=0:0 NumNodes=1",
    "107": "JobId=107 JobName=seq2seq-es JobState=RUNNING Reason=None Dependency=(null) "
           "Requeue=1 Restarts=0 BatchFlag=1 ExitCode=0:0 NumNodes=1",
    "108": "JobId=108 JobName=seq2seq-es JobState=PENDING Reason=None Dependency=(null) "
           "Requeue=1 Restarts=0 BatchFlag=1 ExitCode=0:0 NumNodes=1",
    "109": "JobId=109 JobName=seq2seq-es JobState=PENDING Reason=AssocMaxJobsLimit "
           "Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 ExitCode=0:0 NumNodes=1",
    "110": "JobId=110 JobName=seq2seq-es JobState=PENDING "
           "Reason=ReqNodeNotAvail,_Reserved_for_maintenance Dependency=(null) Requeue=1 "
           "Restarts=0 BatchFlag=1 ExitCode=0:0 NumNodes=1",
    "111": "JobId=111 JobName=seq2seq-es JobState=PENDING Reason=QOSMinGRES Dependency=(null) "
           "Requeue=1 Restarts=0 BatchFlag=1 ExitCode=0:0 NumNodes=1",
}
NEVER = "so it will not start until the request or the partition changes; scancel"


def _manifest(tmp_path, job_ids):
    sweep_dir = tmp_path / "sweep"
    pairs = [("barto", "mlsum")]
    grid = {"optim.lr": [f"{n}e-5" for n in range(1, len(job_ids) + 1)]}
    runs = plan_runs(sweep_dir, pairs, grid, [])
    for run, job_id in zip(runs, job_ids):
        run.job_id = job_id
    manifest = new_manifest("sweep", runs, grid, SlurmConfig(), sweep_dir / "slurm",
                            "seq2seq_es.slurm.probe:main", [], 2)
    manifest.submitted = True
    sweep_dir.mkdir(parents=True)
    manifest.write(sweep_dir / SWEEP_MANIFEST)
    return manifest


@pytest.mark.parametrize("job_id, note", [
    ("101", "waiting to start (PartitionConfig): its request does not fit its partition's "
            f"configuration (node count, time limit, GPUs, CPUs or memory), {NEVER} 101 and "
            "`seq2seq-es slurm resume` its folder with fewer --nodes"),
    ("102", "waiting to start (Priority)"),
    ("103", "waiting to start (ReqNodeNotAvail, UnavailableNodes:node[2-3]): the nodes it needs "
            "are down, drained or not responding"),
    ("104", "requeued, waiting (BeginTime)"),
    ("105", f"waiting to start (AssocMaxNodesPerJobLimit): it asks for more than a per-job or "
            f"per-node limit of its account or QOS allows, {NEVER} 105"),
    ("106", f"requeued, waiting (PartitionTimeLimit): its time limit is above its partition's, "
            f"{NEVER} 106 and `seq2seq-es slurm resume` its folder with a shorter --time"),
    ("107", ""),
    ("108", ""),
    ("109", "waiting to start (AssocMaxJobsLimit)"),
    ("110", "waiting to start (ReqNodeNotAvail, Reserved for maintenance): its time limit "
            "reaches into a maintenance reservation"),
    ("111", f"waiting to start (QOSMinGRES): it asks for less than its QOS's minimum, {NEVER}"),
])
def test_status_shows_why_a_job_is_pending(tmp_path, job_id, note):
    # `--nodes 3` on a two-node cluster showed PENDING and nothing else, forever.
    manifest = _manifest(tmp_path, [job_id])
    [run] = manifest.runs
    status = run_status(run, manifest, parse_scontrol_jobs(SCONTROL[job_id]))
    assert status.state == SCONTROL[job_id].split("JobState=")[1].split()[0]
    assert status.note.startswith(note) and bool(status.note) == bool(note)
    if job_id in ("102", "103", "104", "109", "110"):
        assert NEVER not in status.note


def test_status_shows_the_reason_of_pending_array_tasks(tmp_path):
    manifest = _manifest(tmp_path, ["300_0", "300_1", "300_2"])
    text = ("JobId=301 ArrayJobId=300 ArrayTaskId=0 JobState=RUNNING Reason=None Restarts=0\n"
            "JobId=300 ArrayJobId=300 ArrayTaskId=1-2%2 JobState=PENDING Reason=JobArrayTaskLimit "
            "Restarts=0\n")
    notes = [run_status(run, manifest, parse_scontrol_jobs(text)).note for run in manifest.runs]
    assert notes == ["", *["waiting to start (JobArrayTaskLimit): at most --max-parallel runs of "
                           "the sweep run at once"] * 2]


def test_the_status_command_prints_the_reason_under_the_run(tmp_path, capsys, monkeypatch):
    manifest = _manifest(tmp_path, ["101", "102"])
    asked = []

    def fake_run(command, **kwargs):  # scontrol as query_slurm calls it
        asked.append(command)
        assert command[:4] == ["scontrol", "show", "job", "-o"]
        return subprocess.CompletedProcess(command, 0, SCONTROL[command[4]] + "\n", "")

    monkeypatch.setattr(queries.shutil, "which", lambda name: f"/usr/bin/{name}"
                        if name == "scontrol" else None)
    monkeypatch.setattr(queries.subprocess, "run", fake_run)
    assert slurm_main(["status", str(tmp_path / "sweep")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(asked) == 2
    first = next(i for i, line in enumerate(lines) if line.startswith(manifest.runs[0].name))
    assert lines[first].split()[1:3] == ["101", "PENDING"]
    assert lines[first + 1].startswith("    note: waiting to start (PartitionConfig): ")
    assert "scancel 101" in lines[first + 1]
    assert lines[first + 3] == "    note: waiting to start (Priority)"
    assert lines[-1] == "summary: 2 PENDING"
    statuses = sweep_status(load_manifest(tmp_path / "sweep"))
    assert [s.note.split(":")[0] for s in statuses] == ["waiting to start (PartitionConfig)",
                                                        "waiting to start (Priority)"]
    assert "note: waiting to start (Priority)" in format_status(manifest, statuses)


def test_status_of_a_run_manifest_keeps_its_metrics_note_beside_the_reason(tmp_path):
    manifest = _manifest(tmp_path, ["102"])
    [run] = manifest.runs
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("not json\n{}\n")
    run.run_dir = str(run_dir)
    status = run_status(run, manifest, parse_scontrol_jobs(SCONTROL["102"]))
    assert status.note.endswith("; waiting to start (Priority)")


def test_parsable_is_refused_since_submitit_reads_sbatchs_usual_answer():
    # With --sbatch parsable, sbatch submitted the job and printed only its id, which submitit
    # could not read: the tool said "nothing was submitted" while the job trained, untracked.
    with pytest.raises(ConfigError) as info:
        with_sbatch_options({}, ["parsable"])
    assert info.value.key == "--sbatch" and "parsable" in str(info.value)


def test_resume_drops_an_sbatch_option_the_tool_now_owns(tmp_path, capsys):
    # A run submitted with --sbatch time=30 before such options were refused could not be
    # resumed: the refusal said to use --time, which resume has, but the old option stayed.
    runs = plan_runs(tmp_path / "sweep", [("barto", "mlsum")], {}, [])
    config = SlurmConfig(extra_sbatch={"time": 30, "comment": "kept"})
    manifest = new_manifest("sweep", runs, {}, config, tmp_path / "sweep" / "slurm",
                            "seq2seq_es.slurm.probe:main", [], 1)
    manifest.submitted = True
    (tmp_path / "sweep").mkdir(parents=True, exist_ok=True)
    manifest.write(tmp_path / "sweep" / SWEEP_MANIFEST)
    assert slurm_main(["resume", str(tmp_path / "sweep"), "--time", "30", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "note: the runs were submitted with --sbatch time=30, which is now set by --time " \
           "(slurm.time_min) alone; resubmitting without it" in err


def test_submit_does_not_train_into_a_sweep_or_over_another_run(tmp_path, capsys):
    # A finished sweep run trained on under other arguments by a stray `submit --run-dir`, and
    # collect then left it out; the sweep folder itself was taken as a run folder.
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / SWEEP_MANIFEST).write_text("{}")
    (sweep_dir / "barto__mlsum__lr-3e-5").mkdir()
    trained = tmp_path / "trained"
    (trained / "checkpoints").mkdir(parents=True)
    (trained / "config.yaml").write_text("model:\n  name: barto\n")
    for run_dir, says in (
            (sweep_dir, f"{sweep_dir} is a sweep folder (sweep.json); choose a new folder"),
            (sweep_dir / "barto__mlsum__lr-3e-5",
             f"is in the sweep {sweep_dir}, whose runs go on only through `seq2seq-es slurm "
             f"resume {sweep_dir}`"),
            (trained, f"{trained} holds a run already (config.yaml, checkpoints): a job would "
                      "train on from it")):
        assert slurm_main(["submit", "--task", "mlsum", "--model", "barto", "--run-dir",
                           str(run_dir), "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert says in err and err.startswith("error: argument --run-dir: "), err
    assert sorted(path.name for path in sweep_dir.iterdir()) == ["barto__mlsum__lr-3e-5",
                                                                 SWEEP_MANIFEST]
