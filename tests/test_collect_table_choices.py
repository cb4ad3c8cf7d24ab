"""collect's choices and cells that a mutation audit of results_table.py (2026-12-05) found
untested: ties, marks and columns where a plausible slip changed the published table and every
test still passed. Run folders are written as `seq2seq-es train` leaves them."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from test_slurm_collect import _local_run, _write_manifest
from test_slurm_collect import _final as _sweep_final
from test_slurm_seeds import _final as _seed_final
from test_slurm_seeds import _seeded_sweep

from seq2seq_es.slurm.results_table import build_table, format_csv, format_markdown
from seq2seq_es.slurm.sweep import load_manifest, load_runs


def _run(folder, model="barto", task="mlsum", *, lr=5e-5, seed=None, validation=None,
         test=None, metrics=None, data_keys=""):
    """config.yaml, and final_results.json (validation given) or metrics.jsonl (metrics)."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(
        f"model:\n  name: {model}\ndata:\n  task: {task}\n{data_keys}optim:\n  lr: {lr}\n"
        f"train:\n  output_dir: {folder}\n" + (f"  seed: {seed}\n" if seed is not None else ""))
    if validation is not None:
        (folder / "final_results.json").write_text(json.dumps({
            "task": task, "model": model, "main_metric": "rougeL", "best_step": 8,
            "steps": 10, "validation": validation, "test": test}))
    if metrics:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    return folder


def _csv_rows(table) -> dict[tuple[str, str], dict]:
    return {(row["task"], row["metric"]): row
            for row in csv.DictReader(io.StringIO(format_csv(table)))}


def test_equal_losses_choose_the_earlier_grid_point(tmp_path):
    # Runs logging the loss alone: lower is better, and a tie keeps the first grid point.
    for name, lr in (("a", 3e-5), ("b", 5e-5)):
        _run(tmp_path / "runs" / name, lr=lr, metrics=[{"step": 10, "eval/loss": 2.0}])
    table = build_table(load_runs([str(tmp_path / "runs")]))
    assert table.chosen[("barto", "mlsum")].result.run.name == "a"


def test_a_full_tie_between_steps_keeps_the_earlier_step_and_its_test_scores(tmp_path):
    # As the engine's best checkpoint: a later step that is no better is not the best.
    folder = _run(tmp_path / "runs" / "barto", metrics=[
        {"step": 10, "eval/rougeL": 20.0, "eval/loss": 2.0},
        {"step": 20, "eval/rougeL": 20.0, "eval/loss": 2.0},
        {"step": 10, "test/rougeL": 18.0}])
    (folder / "DONE").write_text("{}")
    table = build_table(load_runs([str(tmp_path / "runs")]))
    result = table.chosen[("barto", "mlsum")].result
    assert result.best_step == 10 and result.test == {"rougeL": 18.0}
    assert "| BARTO | g1 | 20.00 / 18.00 |" in format_markdown(table)


def test_two_seeds_with_equal_scores_show_a_zero_spread(tmp_path):
    # No "± 0.00" reads as one seed, as the legend says of a cell without ±.
    for seed in (1, 2):
        _run(tmp_path / "runs" / f"barto-s{seed}", seed=seed, validation={"rougeL": 20.0},
             test={"rougeL": 18.0 + seed})
    out = format_markdown(build_table(load_runs([str(tmp_path / "runs")])))
    assert "| BARTO | g1 | 20.00 ± 0.00 / 19.50 ± 0.71 |" in out


def test_the_papers_average_needs_the_papers_metrics(tmp_path):
    # Runs that logged rougeL alone: their average is over rougeL, so the paper's average of
    # ROUGE-1/2/L is not set beside it.
    for task in ("mlsum", "wikilingua"):
        _run(tmp_path / "runs" / f"t5s-{task}", "t5s", task,
             validation={"rougeL": 20.0, "loss": 2.0}, test={"rougeL": 19.0})
    out = format_markdown(build_table(load_runs([str(tmp_path / "runs")])))
    assert "| T5S | g1 | 20.00 / 19.00 | g2 | 20.00 / 19.00 | 20.00 / 19.00 |" in out
    assert "paper avg" not in out


def test_a_majoritys_dev_data_chooses_even_with_a_doubtful_run_in_it(tmp_path):
    # Two runs validated on v.jsonl (one of them trained on it too) against one on the hub's
    # data: the choice is made on the majority's data, with the doubt warned about.
    runs = tmp_path / "runs"
    _run(runs / "a", lr=1e-5, validation={"rougeL": 20.0, "loss": 2.0}, test={"rougeL": 19.0},
         data_keys="  train_file: t.jsonl\n  validation_file: v.jsonl\n")
    _run(runs / "b", lr=3e-5, validation={"rougeL": 21.0, "loss": 2.0}, test={"rougeL": 20.0},
         data_keys="  train_file: v.jsonl\n  validation_file: v.jsonl\n")
    _run(runs / "c", lr=5e-5, validation={"rougeL": 30.0, "loss": 2.0}, test={"rougeL": 29.0})
    table = build_table(load_runs([str(runs)]))
    assert table.chosen[("barto", "mlsum")].result.run.name == "b"
    assert ("barto / mlsum: b's data.validation_file is its training file: those scores are on "
            "data it trained on") in table.warnings
    assert any("the run shown was chosen among the 2 validated on data.validation_file v.jsonl "
               "(a, b); left out of the choice: c on the hub dataset" in warning
               for warning in table.warnings)


def test_an_own_tasks_runs_compare_on_the_majoritys_main_score(tmp_path):
    runs = tmp_path / "runs"
    own = {"source_column": "articulo", "target_column": "titular"}
    _local_run(runs / "own1", "titulares", "barto", 1e-4, {"rougeL": 20.0, "sari": 30.0}, None,
               metrics="rouge,sari", **own)
    _local_run(runs / "own2", "titulares", "barto", 2e-4, {"sari": 40.0, "rougeL": 10.0}, None,
               metrics="sari,rouge", **own)
    _local_run(runs / "own3", "titulares", "barto", 3e-4, {"sari": 35.0, "rougeL": 15.0}, None,
               metrics="sari,rouge", **own)
    chosen = build_table(load_runs([str(runs)])).chosen[("barto", "titulares")]
    assert (chosen.selected_by, chosen.result.run.name) == ("sari", "own2")


def test_a_seed_groups_partial_data_mark_comes_from_any_seed(tmp_path):
    # Seed 2 alone trained on the first 100 examples (a `slurm resume -- --data.max_train_
    # samples 100`): the group's row is still marked.
    sweep = tmp_path / "sweep"
    runs = _seeded_sweep(sweep, grid={"optim.lr": ["3e-5"]}, seeds=("1", "2"))
    for (lr, seed), folder in runs.items():
        subset = "  max_train_samples: 100\n" if seed == "2" else ""
        (folder / "config.yaml").write_text(f"model:\n  name: barto\ndata:\n  task: mlsum\n"
                                            f"{subset}optim:\n  lr: {lr}\ntrain:\n  seed: {seed}\n")
        _seed_final(folder, {"rougeL": 20.0}, {"rougeL": 19.0})
    out = format_markdown(build_table(load_manifest(sweep)))
    assert ("- barto / mlsum: the task's hub dataset, its first 100 examples "
            "(data.max_train_samples)") in out


def test_a_sweep_over_the_batch_axis_split_otherwise_is_no_difference(tmp_path):
    # batch_size 16 run as 4 x 4 accumulated: the step's examples are the grid's axis.
    sweep = tmp_path / "sweep"
    manifest = _write_manifest(sweep, [("barto", "mlsum")], {"train.batch_size": ["4", "16"]})
    for run in manifest.runs:
        folder = Path(run.run_dir)
        folder.mkdir(parents=True)
        size = int(run.grid_point["train.batch_size"])
        (folder / "config.yaml").write_text("model:\n  name: barto\ndata:\n  task: mlsum\n"
                                            f"train:\n  batch_size: 4\n  grad_accum: {size // 4}\n")
        _sweep_final(folder, {"rougeL": 20.0 + size}, {"rougeL": 19.0})
    assert build_table(load_manifest(sweep)).warnings == []


def test_the_csv_keeps_a_metric_only_the_test_split_has(tmp_path):
    _run(tmp_path / "runs" / "barto", validation={"rougeL": 20.0},
         test={"rougeL": 19.0, "rouge1": 30.0})
    rows = _csv_rows(build_table(load_runs([str(tmp_path / "runs")])))
    assert (rows[("mlsum", "rouge1")]["dev"], rows[("mlsum", "rouge1")]["test"]) == ("", "30.0")


def test_the_csvs_per_seed_columns_line_up_with_its_seeds(tmp_path):
    # Seed 1 has no scores yet: its slot stays empty rather than taking seed 2's step.
    sweep = tmp_path / "sweep"
    runs = _seeded_sweep(sweep, grid={"optim.lr": ["3e-5"]}, seeds=("1", "2", "3"))
    _seed_final(runs[("3e-5", "2")], {"rougeL": 20.0}, {"rougeL": 19.0}, best_step=20)
    _seed_final(runs[("3e-5", "3")], {"rougeL": 22.0}, {"rougeL": 21.0}, best_step=30)
    row = _csv_rows(build_table(load_manifest(sweep)))[("mlsum", "rougeL")]
    assert (row["seeds"], row["best_step"], row["dev_n"]) == ("1;2;3", ";20;30", "2")
    assert row["run_dir"] == ";".join(["", str(runs[("3e-5", "2")]), str(runs[("3e-5", "3")])])


def test_a_chosen_run_scored_at_its_last_step_is_named(tmp_path):
    # train.load_best_at_end false: its cell is its last step's, beside runs at their best.
    runs = tmp_path / "runs"
    _run(runs / "barto", validation={"rougeL": 20.0}, test={"rougeL": 19.0})
    folder = _run(runs / "t5s", "t5s", validation={"rougeL": 22.0}, test={"rougeL": 21.0})
    results = json.loads((folder / "final_results.json").read_text())
    (folder / "final_results.json").write_text(json.dumps({**results, "best_step": 10,
                                                           "kept": "last",
                                                           "best_validation_step": 4}))
    table = build_table(load_runs([str(runs)]))
    assert table.warnings == ["t5s / mlsum: the scores of t5s are of the last step, not of the "
                              "best validation's (train.load_best_at_end false; "
                              "final_results.json \"kept\": \"last\", CSV scored_at)"]
    csv_rows = list(csv.DictReader(io.StringIO(format_csv(table))))
    assert {row["model"]: row["scored_at"] for row in csv_rows
            if row["metric"] == "rougeL"} == {"barto": "best", "t5s": "last"}
    # the last step was the best validation's too: nothing to say
    (folder / "final_results.json").write_text(json.dumps({**results, "best_step": 10,
                                                           "kept": "last",
                                                           "best_validation_step": 10}))
    table = build_table(load_runs([str(runs)]))
    assert table.warnings == []
    assert {row["scored_at"] for row in csv.DictReader(io.StringIO(format_csv(table)))} == {
        "best", ""}  # "": the family average's row


def test_an_unfinished_run_that_keeps_its_last_step_shows_its_latest_evaluation(tmp_path):
    # train.load_best_at_end false ends on the last step's weights; read from metrics.jsonl
    # the run showed its best evaluation so far, a step it would not keep.
    evals = [{"step": 4, "eval/rougeL": 25.0, "eval/loss": 1.0},
             {"step": 8, "eval/rougeL": 21.0, "eval/loss": 1.2}]
    runs = tmp_path / "runs"
    kept_best = _run(runs / "barto", metrics=evals)
    kept_last = _run(runs / "t5s", "t5s", metrics=evals)
    config = kept_last / "config.yaml"
    config.write_text(config.read_text() + "  load_best_at_end: false\n")
    table = build_table(load_runs([str(runs)]))
    rows = {row["model"]: row for row in csv.DictReader(io.StringIO(format_csv(table)))
            if row["metric"] == "rougeL"}
    assert (rows["barto"]["dev"], rows["barto"]["best_step"], rows["barto"]["scored_at"]) == (
        "25.0", "4", "best")
    assert (rows["t5s"]["dev"], rows["t5s"]["best_step"], rows["t5s"]["scored_at"]) == (
        "21.0", "8", "last")
    assert any(warning.startswith("t5s / mlsum: the scores of t5s are of the last step")
               for warning in table.warnings), table.warnings
    assert str(kept_best) in rows["barto"]["run_dir"]
