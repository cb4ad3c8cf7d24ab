"""Sweep planning and refusals, status of planned runs, and collect on run folders (no cluster)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from seq2seq_es.errors import ConfigError, DataError
from seq2seq_es.slurm import paper_grid
from seq2seq_es.slurm.cli import main as slurm_main
from seq2seq_es.slurm.config import SlurmConfig
from seq2seq_es.slurm.monitor import (SlurmState, build_table, format_csv, format_markdown,
                                      read_metrics, run_status, sweep_status)
from seq2seq_es.slurm.sweep import (SWEEP_MANIFEST, grid_point_name, grid_points, load_manifest,
                                    new_manifest, parse_grid, plan_runs, select_pairs)


def test_paper_pairs():
    pairs = paper_grid.paper_pairs()
    assert len(pairs) == 4 * 4 + 6 * 8 + 2
    assert len(set(pairs)) == len(pairs)
    assert [task for model, task in pairs if model == "ledo"] == ["xlsum", "eurlexsum"]
    assert ("mbert2mbert", "wmt13-en-es") in pairs and ("mbert2mbert", "mlsum") not in pairs
    assert ("beto2beto", "miam") in pairs and ("beto2beto", "fapesp-es-pt") not in pairs


def test_paper_grid_has_twelve_points():
    points = grid_points({k: list(v) for k, v in paper_grid.PAPER_GRID.items()})
    assert len(points) == 12
    assert {"train.batch_size": "16", "optim.lr": "3e-5", "train.epochs": "6"} in points


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
    (["--pair", "barto:mlsumm"], "unknown task 'mlsumm'"),
    (["--models", "barto", "--grid", "optim.lr="], "config key '--grid optim.lr'"),
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
            (root / task / name).write_text("")
    runs = plan_runs(tmp_path / "sweep", [("barto", "mlsum"), ("t5s", "sqac")],
                     {"optim.lr": ["3e-5", "5e-5"]}, ["--data.validation_file", "/other.jsonl"],
                     data_root=root)
    assert len(runs) == 4
    mlsum_args = runs[0].argv[runs[0].argv.index("--data.train_file"):]
    assert mlsum_args == ["--data.train_file", str(root / "mlsum" / "train.jsonl"),
                          "--data.validation_file", str(root / "mlsum" / "validation.jsonl"),
                          "--data.validation_file", "/other.jsonl"]  # the override comes last
    sqac_args = runs[3].argv[runs[3].argv.index("--data.train_file"):]
    assert sqac_args[:6] == ["--data.train_file", str(root / "sqac" / "train.parquet"),
                             "--data.validation_file", str(root / "sqac" / "validation.csv"),
                             "--data.test_file", str(root / "sqac" / "test.json")]


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
    assert "already holds another sweep" in capsys.readouterr().err
    assert (sweep_dir / SWEEP_MANIFEST).read_text() == before


def test_sweep_dry_run_plans_the_paper_grid_as_an_array(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    assert slurm_main(_sweep_args(sweep_dir, "--models", "ledo", "--max-parallel", "5",
                                  "--dry-run")) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --array=0-23%5" in out  # 2 pairs x 12 grid points
    assert "ledo__eurlexsum__batch_size-16_lr-5e-5_epochs-6" in out
    assert not sweep_dir.exists()


def _metrics(path, records, tail=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def _finished(run_dir):
    (run_dir / "DONE").write_text("{}")


def test_collect_builds_the_table_with_best_grid_points(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    grid = {"optim.lr": ["3e-5", "5e-5"]}
    manifest = _write_manifest(sweep_dir, [("barto", "mlsum"), ("t5s", "mlsum"), ("barto", "sqac")],
                               grid, submitted=False)
    scores = {  # (model, task, lr) -> (rougeL, rouge1)
        ("barto", "mlsum", "3e-5"): (20.0, 30.5), ("barto", "mlsum", "5e-5"): (22.5, 29.0),
        ("t5s", "mlsum", "3e-5"): (24.25, 33.0), ("t5s", "mlsum", "5e-5"): (23.0, 31.0),
        ("barto", "sqac", "3e-5"): (70.0, 71.0), ("barto", "sqac", "5e-5"): (75.0, 76.0),
    }
    for run in manifest.runs:
        rouge_l, rouge_1 = scores[(run.model, run.task, run.grid_point["optim.lr"])]
        run_dir = sweep_dir / run.name
        _metrics(run_dir / "metrics.jsonl", [
            {"step": 10, "train/loss": 2.0},
            {"step": 20, "eval/loss": 1.5, "eval/rougeL": rouge_l - 5, "eval/rouge1": rouge_1 - 5},
            {"step": 40, "eval/loss": 1.2, "eval/rougeL": rouge_l, "eval/rouge1": rouge_1},
        ], tail='{"step": 41, "train/lo')  # a line being written while collect runs
        if run.model == "barto":
            _finished(run_dir)
    assert slurm_main(["collect", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "| model | mlsum rougeL | mlsum rouge1 | sqac rougeL | sqac rouge1 |"
    assert lines[2] == "| barto | 22.50 (g2) | 30.50 (g1) | 75.00 (g2) | 76.00 (g2) |"
    assert lines[3] == "| t5s | 24.25 (g1)* | 33.00 (g1)* | – | – |"
    assert "- g1: optim.lr=3e-5" in out and "- g2: optim.lr=5e-5" in out
    assert "* from a run that has not finished" in out
    assert (sweep_dir / "results.md").read_text() in out
    rows = list(csv.DictReader(io.StringIO((sweep_dir / "results.csv").read_text())))
    assert [row["model"] for row in rows] == ["barto", "t5s"]
    assert float(rows[0]["mlsum rougeL"]) == 22.5
    assert rows[0]["mlsum rougeL grid point"] == "optim.lr=5e-5"
    assert rows[1]["mlsum rougeL final"] == "no"
    assert rows[1]["sqac rougeL"] == ""


def test_collect_prefers_lower_for_error_rates(tmp_path):
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("barto", "wmt13-es-en")], {"optim.lr": ["1", "2"]},
                               submitted=False)
    for run, ter in zip(manifest.runs, (40.0, 35.0)):
        _metrics(sweep_dir / run.name / "metrics.jsonl", [{"step": 5, "eval/ter": ter,
                                                           "eval/bleu": 100 - ter}])
    table = build_table(load_manifest(sweep_dir))
    assert table.cells[("barto", "wmt13-es-en", "ter")].value == 35.0
    assert table.cells[("barto", "wmt13-es-en", "bleu")].value == 65.0
    assert "barto" in format_csv(table) and "ter" in format_markdown(table)


def test_a_broken_metrics_line_is_named(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2,\n{"step": 3}\n')
    with pytest.raises(DataError) as info:
        read_metrics(path)
    assert info.value.row == 2 and info.value.file == str(path)


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
