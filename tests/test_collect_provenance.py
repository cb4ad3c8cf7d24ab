"""collect marks what its labels did not show: a run trained on part of the training data
(data.max_train_samples), and one (model, task)'s runs of different code compared with each
other (only the chosen runs' code was compared)."""

from __future__ import annotations

import csv
import io
import json

from seq2seq_es.slurm.results_table import build_table, format_csv, format_markdown
from seq2seq_es.slurm.sweep import load_runs

SCORES = {"rouge1": 28.0, "rouge2": 12.0, "rougeL": 20.0, "loss": 2.0}


def _run(folder, model, lr, rouge_l, *, commit=None, data_keys=""):
    """A finished run folder as `seq2seq-es train` leaves it (config.yaml, final_results.json,
    versions.json when commit is given)."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(
        f"model:\n  name: {model}\ndata:\n  task: mlsum\n{data_keys}optim:\n  lr: {lr}\n"
        f"train:\n  output_dir: {folder}\n")
    scores = {**SCORES, "rougeL": rouge_l}
    (folder / "final_results.json").write_text(json.dumps({
        "task": "mlsum", "model": model, "main_metric": "rougeL", "best_step": 8, "steps": 10,
        "validation": scores, "test": scores}))
    if commit:
        (folder / "versions.json").write_text(json.dumps({"seq2seq-es commit": commit}))


def test_a_run_on_the_first_n_training_examples_is_marked(tmp_path):
    # t5s on 100 MLSUM examples sat beside the paper's t5s mlsum figures with no mark: only
    # data.train_file was carried to the table.
    runs = tmp_path / "runs"
    _run(runs / "barto-mlsum", "barto", 5e-5, 20.0)
    _run(runs / "t5s-mlsum", "t5s", 5e-5, 25.0, data_keys="  max_train_samples: 100\n")
    table = build_table(load_runs([str(runs)]))
    out = format_markdown(table)
    assert ("- t5s / mlsum: the task's hub dataset, its first 100 examples "
            "(data.max_train_samples)") in out
    assert "- barto / mlsum" not in out
    rows = {row["model"]: row for row in csv.DictReader(io.StringIO(format_csv(table)))
            if row["metric"] == "rougeL"}
    assert rows["t5s"]["local_data"].endswith("its first 100 examples (data.max_train_samples)")
    assert rows["barto"]["local_data"] == ""


def test_a_choice_between_runs_of_different_code_is_warned_about(tmp_path):
    # barto's grid points ran two commits and the chosen ones agree: no warning was given,
    # though the choice compared dev scores of two codes.
    runs = tmp_path / "runs"
    _run(runs / "barto-a", "barto", 3e-5, 30.0, commit="aaaa")
    _run(runs / "barto-b", "barto", 5e-5, 20.0, commit="bbbb")
    _run(runs / "t5s", "t5s", 5e-5, 20.0, commit="aaaa")
    warnings = build_table(load_runs([str(runs)])).warnings
    assert ("barto / mlsum: its runs ran different code (versions.json), so the dev scores its "
            "run was chosen by may not compare: aaaa: barto-a; bbbb: barto-b") in warnings
    assert not any("chosen runs ran different code" in warning for warning in warnings)


def test_a_run_without_versions_json_beside_recorded_code_is_named(tmp_path):
    runs = tmp_path / "runs"
    _run(runs / "barto", "barto", 3e-5, 30.0, commit="aaaa")
    _run(runs / "t5s", "t5s", 5e-5, 20.0)
    warnings = build_table(load_runs([str(runs)])).warnings
    assert ("the chosen runs ran different code (versions.json), so their scores may not "
            "compare: aaaa: barto; code not recorded (no versions.json): t5s") in warnings
    # no run with a record: nothing to compare, nothing said
    (runs / "barto" / "versions.json").unlink()
    assert build_table(load_runs([str(runs)])).warnings == []
