"""Sweep planning and refusals, and status of planned runs (no cluster); collect: its own file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seq2seq_es.errors import ConfigError
from seq2seq_es.slurm import paper_grid
from seq2seq_es.slurm.cli import main as slurm_main
from seq2seq_es.slurm.config import SlurmConfig
from seq2seq_es.slurm.monitor import SlurmState, run_status, sweep_status
from seq2seq_es.slurm.sweep import (SWEEP_MANIFEST, check_sweep_dir, grid_point_name, grid_points, load_manifest,
                                    new_manifest, parse_grid, plan_runs, select_pairs)


def test_paper_pairs():
    pairs = paper_grid.paper_pairs()
    assert len(pairs) == 4 * 4 + 6 * 8 + 2
    assert len(set(pairs)) == len(pairs)
    assert [task for model, task in pairs if model == "ledo"] == ["xlsum", "eurlexsum"]
    assert ("mbert2mbert", "wmt13-en-es") in pairs and ("mbert2mbert", "mlsum") not in pairs
    assert ("beto2beto", "miam") in pairs and ("beto2beto", "fapesp-es-pt") not in pairs


def test_paper_grid_has_twelve_points_and_translation_its_recipe():
    points = grid_points({k: list(v) for k, v in paper_grid.PAPER_GRID.items()})
    assert len(points) == 12
    assert {"train.batch_size": "16", "optim.lr": "3e-5", "train.epochs": "6"} in points
    assert paper_grid.grid_for("t5s", "bisect") is paper_grid.PAPER_GRID
    # BARTO and T5S translate with the paper's recipe: 384 examples per step (the registry
    # gives each model its steps and peak learning rate)
    recipe = paper_grid.grid_for("barto", "wmt13-en-es")
    assert grid_points({k: list(v) for k, v in recipe.items()}) == [{"train.batch_size": "384"}]


def test_grid_parsing_and_names():
    grid = parse_grid(["optim.lr=3e-5,5e-5", "train.epochs=3,6"])
    assert grid == {"optim.lr": ["3e-5", "5e-5"], "train.epochs": ["3", "6"]}
    names = [grid_point_name(p) for p in grid_points(grid)]
    assert names == ["lr-3e-5_epochs-3", "lr-3e-5_epochs-6", "lr-5e-5_epochs-3", "lr-5e-5_epochs-6"]
    # two keys with the same last part keep their full names
    assert grid_point_name({"optim.lr": "1", "sched.lr": "2"}) == "optim.lr-1_sched.lr-2"


@pytest.mark.parametrize("spec, key", [
    ("optim.lr=", "--grid optim.lr"),
    ("optim.lr=3e-5,", "--grid optim.lr"),
    ("optim.lr=3e-5,3e-5", "--grid optim.lr"),
    ("lr=3e-5", "--grid lr=3e-5"),
    ("optim.lr", "--grid optim.lr"),
])
def test_bad_grid_axes_are_refused(spec, key):
    with pytest.raises(ConfigError) as info:
        parse_grid([spec])
    assert info.value.key == key


def test_pair_filters():
    assert select_pairs(models=["ledo"]) == [("ledo", "xlsum"), ("ledo", "eurlexsum")]
    assert select_pairs(models=["barto", "t5s"], tasks=["sqac"]) == [("barto", "sqac"),
                                                                     ("t5s", "sqac")]
    with pytest.raises(ConfigError):
        select_pairs(models=["ledo"], tasks=["sqac"])  # the paper never ran it
    assert select_pairs(pairs=["ledo:sqac"]) == [("ledo", "sqac")]


def _sweep_args(sweep_dir, *extra):
    return ["sweep", "--sweep-dir", str(sweep_dir), *extra]


@pytest.mark.parametrize("extra, message", [
    (["--models", "barto,bartoo"], "unknown model 'bartoo'"),
    # the task's hint says where a task of one's own gets its columns in a sweep: after --
    (["--pair", "barto:mlsumm"], "error: argument --pair: barto:mlsumm: unknown task 'mlsumm'; "
     "did you mean 'mlsum' or 'xlsum'? known tasks: "),
    (["--pair", "barto:titulares"], "for a task of your own, give its data.source_column and "
     "data.target_column (and data.train_file, data.validation_file) after --\n"),
    (["--models", "barto", "--grid", "optim.lr="], "argument --grid optim.lr:"),
    (["--models", "barto", "--max-parallel", "0"], "--max-parallel"),
])
def test_sweep_refusals_come_before_submitting(tmp_path, capsys, extra, message):
    sweep_dir = tmp_path / "sweep"
    assert slurm_main(_sweep_args(sweep_dir, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not sweep_dir.exists()


def test_data_root_gives_each_task_its_files_before_the_overrides(tmp_path):
    root = tmp_path / "datasets"
    for task, splits in (("mlsum", ("train.jsonl", "validation.jsonl")),
                         ("sqac", ("train.parquet", "validation.csv", "test.json"))):
        (root / task).mkdir(parents=True)
        for name in splits:
            (root / task / name).write_text("x\n")  # planned, never read (an empty file is refused)
    other = tmp_path / "other.jsonl"
    other.write_text("x\n")
    runs = plan_runs(tmp_path / "sweep", [("barto", "mlsum"), ("t5s", "sqac")],
                     {"optim.lr": ["3e-5", "5e-5"]}, ["--data.validation_file", str(other)],
                     data_root=root)
    assert len(runs) == 4

    def files(argv):  # each data file once, as the job's composed config will have it
        keys = [arg for arg in argv if arg.startswith("--data.") and arg.endswith("_file")]
        assert len(keys) == len(set(keys)), argv
        return {key: argv[argv.index(key) + 1] for key in keys}
    assert files(runs[0].argv) == {  # the override wins over --data-root
        "--data.train_file": str(root / "mlsum" / "train.jsonl"),
        "--data.validation_file": str(other)}
    assert files(runs[3].argv) == {
        "--data.train_file": str(root / "sqac" / "train.parquet"),
        "--data.validation_file": str(other),
        "--data.test_file": str(root / "sqac" / "test.json")}


@pytest.mark.parametrize("files, message", [
    (["validation.jsonl"], "no train file for task 'mlsum'"),
    (["train.jsonl", "train.csv"], "holds 2 train files (train.jsonl, train.csv)"),
])
def test_a_data_root_without_one_train_file_per_task_is_refused(tmp_path, capsys, files, message):
    root = tmp_path / "datasets"
    (root / "mlsum").mkdir(parents=True)
    for name in files:
        (root / "mlsum" / name).write_text("")
    sweep_dir = tmp_path / "sweep"
    assert slurm_main(_sweep_args(sweep_dir, "--pair", "barto:mlsum", "--data-root", str(root),
                                  "--dry-run")) == 2
    err = capsys.readouterr().err
    assert "--data-root" in err and message in err
    assert not sweep_dir.exists()


def _write_manifest(sweep_dir, pairs, grid, submitted):
    runs = plan_runs(sweep_dir, pairs, grid, [])
    manifest = new_manifest("sweep", runs, grid, SlurmConfig(), sweep_dir / "slurm",
                            "seq2seq_es.slurm.probe:main", [], 2)
    manifest.submitted = submitted
    sweep_dir.mkdir(parents=True, exist_ok=True)
    manifest.write(sweep_dir / SWEEP_MANIFEST)
    return manifest


def test_sweep_refuses_a_folder_holding_another_sweep(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    _write_manifest(sweep_dir, [("t5s", "sqac")], {}, submitted=True)
    before = (sweep_dir / SWEEP_MANIFEST).read_text()
    assert slurm_main(_sweep_args(sweep_dir, "--pair", "barto:mlsum", "--dry-run")) == 2
    err = capsys.readouterr().err
    assert "already holds a submitted sweep (1 runs)" in err
    assert f"`seq2seq-es slurm resume {sweep_dir}` submits its unfinished runs again" in err
    assert (sweep_dir / SWEEP_MANIFEST).read_text() == before


def test_a_sweep_whose_sbatch_failed_may_be_submitted_again_into_its_folder(tmp_path):
    # sbatch refused (a --sbatch typo): the plan and each run's config copy stayed, and the
    # corrected command was refused ("run folder ... is not empty"), resume too ("never
    # submitted"): the folder had to be deleted by hand.
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("barto", "mlsum")], {"optim.lr": ["1e-4", "2e-4"]},
                               submitted=False)
    for run in manifest.runs:
        Path(run.run_dir).mkdir(parents=True)
        (Path(run.run_dir) / "submitted_config.yaml").write_text("optim:\n  lr: 1\n")
    check_sweep_dir(sweep_dir, manifest.runs)
    (Path(manifest.runs[0].run_dir) / "metrics.jsonl").write_text("{}\n")  # it trained: keep
    with pytest.raises(ConfigError, match="is not empty"):
        check_sweep_dir(sweep_dir, manifest.runs)


def test_status_of_a_run_inside_a_sweep_points_to_the_sweep(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("barto", "mlsum")], {}, submitted=True)
    Path(manifest.runs[0].run_dir).mkdir(parents=True)
    assert slurm_main(["status", manifest.runs[0].run_dir]) == 2
    assert f"is a run of the sweep {sweep_dir}: give the sweep folder" in capsys.readouterr().err


def test_sweep_dry_run_plans_the_paper_grid_as_an_array(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    assert slurm_main(_sweep_args(sweep_dir, "--models", "ledo", "--max-parallel", "5",
                                  "--dry-run")) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --array=0-23%5" in out  # 2 pairs x 12 grid points (batch = per step)
    assert "ledo__eurlexsum__batch_size-16_lr-5e-5_epochs-6" in out
    assert not sweep_dir.exists()


def _metrics(path, records, tail=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_status_of_runs_not_submitted_shows_progress(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("barto", "mlsum")], {"optim.lr": ["1", "2"]},
                               submitted=False)
    _metrics(sweep_dir / manifest.runs[0].name / "metrics.jsonl",
             [{"step": 5, "train/loss": 3.25}, {"step": 10, "eval/rougeL": 12.5}])
    statuses = sweep_status(load_manifest(sweep_dir))
    assert [s.state for s in statuses] == ["NOT_SUBMITTED", "NOT_SUBMITTED"]
    assert statuses[0].step == 10 and statuses[0].metrics["train/loss"] == 3.25
    assert slurm_main(["status", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert "train/loss=3.25 eval/rougeL=12.5" in out


def test_status_shows_the_step_a_resume_starts_from(tmp_path, capsys):
    # Logged up to step 12, saved at 8 (12 unfinished: no trainer_state.json; a temporary folder
    # of a save in progress): a requeue starts from 8, which SAVED says.
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("barto", "mlsum")], {}, submitted=False)
    run_dir = Path(manifest.runs[0].run_dir)
    _metrics(run_dir / "metrics.jsonl", [{"step": 12, "train/loss": 2.5}])
    for name, complete in [("step_00000004", True), ("step_00000008", True),
                           ("step_00000012", False), (".tmp-step_00000016", True),
                           ("step_16", True)]:
        (run_dir / "checkpoints" / name).mkdir(parents=True)
        if complete:
            (run_dir / "checkpoints" / name / "trainer_state.json").write_text("{}")
    [status] = sweep_status(load_manifest(sweep_dir))
    assert (status.step, status.saved_step) == (12, 8)
    assert slurm_main(["status", str(sweep_dir)]) == 0
    header, row = capsys.readouterr().out.splitlines()[1:3]
    assert header.split() == ["RUN", "JOB", "STATE", "STEP", "SAVED", "METRICS"]
    assert row.split()[2:5] == ["NOT_SUBMITTED", "12", "8"]
    assert slurm_main(["status", str(sweep_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["saved_step"] == 8


@pytest.mark.parametrize("state, says", [("CANCELLED", "cancelled"),
                                          ("TIMEOUT", "killed at its time limit"),
                                          ("OUT_OF_MEMORY", "--mem-gb")])
def test_a_job_slurm_ended_says_why_when_its_tasks_left_no_error(tmp_path, state, says):
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("barto", "mlsum")], {}, submitted=True)
    run = manifest.runs[0]
    run.job_id = "77"
    status = run_status(run, manifest, {"77": SlurmState(state)})
    assert status.state == state and status.failed
    assert says in status.error
    assert status.log.endswith("77_0_log.err")


def test_status_of_a_folder_without_manifest_is_refused(tmp_path, capsys):
    assert slurm_main(["status", str(tmp_path)]) == 2
    assert "holds neither sweep.json nor slurm_job.json" in capsys.readouterr().err


def test_paper_pairs_name_registered_models_and_tasks():
    from seq2seq_es.models import MODELS
    from seq2seq_es.tasks import TASKS

    for model, task in paper_grid.paper_pairs():
        assert model in MODELS and task in TASKS, (model, task)


def test_tiny_models_can_be_swept_with_explicit_pairs():
    assert select_pairs(pairs=["barto-tiny:mlsum"]) == [("barto-tiny", "mlsum")]


def test_a_training_run_without_a_checkpoint_is_not_promised_a_continuation(tmp_path):
    # "slurm resume continues it from its last checkpoint" was said of runs that had saved none
    # (a job told to stop as it started): resume starts those again from step 1.
    from seq2seq_es.slurm.job import DEFAULT_ENTRY

    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("barto", "mlsum")], {}, submitted=True)
    manifest.entry = DEFAULT_ENTRY
    run = manifest.runs[0]
    run.job_id = "77"
    status = run_status(run, manifest, {"77": SlurmState("TIMEOUT")})
    assert status.error.endswith("; it saved no checkpoint, so `seq2seq-es slurm resume` starts "
                                 "it again from its first step")
    step = Path(run.run_dir) / "checkpoints" / "step_00000008"
    step.mkdir(parents=True)
    (step / "trainer_state.json").write_text("{}")
    status = run_status(run, manifest, {"77": SlurmState("TIMEOUT")})
    assert status.error.endswith("`seq2seq-es slurm resume` continues it from its last "
                                 "checkpoint")
