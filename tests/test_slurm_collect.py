"""`slurm collect` on hand-made sweep folders (no cluster): one run chosen per (model, task) by
its dev main metric, all of that run's metrics dev / test, family averages, results.png, and no
table written when there is nothing to show."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from seq2seq_es.errors import DataError
from seq2seq_es.slurm.cli import main as slurm_main
from seq2seq_es.slurm.config import SlurmConfig
from seq2seq_es.slurm.monitor import read_metrics
from seq2seq_es.slurm.results_table import (build_table, format_csv, format_markdown,
                                            lower_is_better, run_result)
from seq2seq_es.slurm.sweep import (SWEEP_MANIFEST, load_manifest, load_runs, new_manifest,
                                    plan_runs)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LR = {"optim.lr": ["3e-5", "5e-5"]}


def _write_manifest(sweep_dir, pairs, grid):
    runs = plan_runs(sweep_dir, pairs, grid, [])
    manifest = new_manifest("sweep", runs, grid, SlurmConfig(), sweep_dir / "slurm",
                            "seq2seq_es.slurm.probe:main", [], 2)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    manifest.write(sweep_dir / SWEEP_MANIFEST)
    return manifest


def _runs(manifest):
    """(model, task, lr) -> the run's folder, made."""
    folders = {}
    for run in manifest.runs:
        folder = Path(run.run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        folders[(run.model, run.task, run.grid_point.get("optim.lr"))] = folder
    return folders


def _final(run_dir, validation, test, main_metric="rougeL", best_step=40):
    """final_results.json as the training engine writes it at the end of a run (the folder is
    named <model>__<task>__<grid point>)."""
    model, task = Path(run_dir).name.split("__")[:2]
    (run_dir / "final_results.json").write_text(json.dumps({
        "task": task, "model": model, "main_metric": main_metric, "best_step": best_step,
        "steps": 50, "validation": validation, "test": test}))


def _metrics(path, records, tail=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def _rows(out):
    """{model: cells} of every markdown table row in out, by table (a list per table), keyed by
    the registry name (the table shows the paper's: BARTO for barto)."""
    from seq2seq_es.models.registry import PAPER_NAMES

    registry_name = {shown: name for name, shown in PAPER_NAMES.items()}
    tables, current = [], None
    for line in out.splitlines():
        if line.startswith("| model |"):
            current = {"header": [cell.strip() for cell in line.strip("|").split("|")]}
            tables.append(current)
        elif line.startswith("| ") and current is not None:
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            current[registry_name.get(cells[0], cells[0])] = cells
        elif not line.startswith("|"):
            current = None
    return tables


def test_unfinished_runs_are_told_apart_training_now_pre_empted_or_stopped(tmp_path, capsys):
    # '*' alone left a crashed run looking like one still training: the footnote now says, per
    # unfinished run, whether a process holds its train.lock, or how it stopped.
    from test_run_lock import end, hold_in_another_process

    sweep_dir = tmp_path / "sweep"
    pairs = [("barto", "mlsum"), ("t5s", "mlsum"), ("barto", "wikilingua")]
    manifest = _write_manifest(sweep_dir, pairs, {})
    folders = {(run.model, run.task): Path(run.run_dir) for run in manifest.runs}
    for folder in folders.values():
        _metrics(folder / "metrics.jsonl", [{"step": 20, "eval/loss": 2.0, "eval/rougeL": 25.0}])
    (folders[("t5s", "mlsum")] / "PREEMPTED").write_text('{"step": 20, "signal": "SIGUSR1"}')
    holder = hold_in_another_process(folders[("barto", "mlsum")], SLURM_JOB_ID="4242")
    try:
        assert slurm_main(["collect", str(sweep_dir)]) == 0
        out = capsys.readouterr().out
    finally:
        end(holder)
    now = out[out.index("* from a run that has not finished"):].splitlines()
    assert now[0].endswith(". Now:")
    assert now[1].startswith(f"  - barto / mlsum ({folders[('barto', 'mlsum')]}): training now "
                             f"(pid {holder.pid} on ")
    assert "SLURM job 4242" in now[1]
    assert now[2] == (f"  - t5s / mlsum ({folders[('t5s', 'mlsum')]}): stopped: SIGUSR1 at step "
                      "20, checkpoint saved (PREEMPTED)")
    assert now[3] == (f"  - barto / wikilingua ({folders[('barto', 'wikilingua')]}): stopped "
                      "without finishing: crashed, cancelled or killed (no process holds its "
                      "train.lock; its log says why)")
    assert now[4] == ("  A stopped run continues from its last checkpoint with `seq2seq-es slurm "
                      "resume` (status: `seq2seq-es slurm status`).")
    # the holder gone (SIGKILL), the same run reads as stopped
    assert slurm_main(["collect", str(sweep_dir)]) == 0
    assert (f"  - barto / mlsum ({folders[('barto', 'mlsum')]}): stopped without finishing"
            in capsys.readouterr().out)


def test_a_row_never_mixes_runs_dev_and_test_side_by_side(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("barto", "mlsum"), ("t5s", "mlsum")], LR)
    runs = _runs(manifest)
    # barto: g1 (3e-5) is best on the main metric rougeL, g2 (5e-5) on rouge1 and rouge2
    _final(runs[("barto", "mlsum", "3e-5")],
           {"loss": 2.5, "rouge1": 30.0, "rouge2": 10.0, "rougeL": 25.0},
           {"loss": 2.6, "rouge1": 29.0, "rouge2": 9.5, "rougeL": 24.0})
    _final(runs[("barto", "mlsum", "5e-5")],
           {"loss": 2.0, "rouge1": 33.0, "rouge2": 12.0, "rougeL": 24.5},
           {"loss": 2.1, "rouge1": 32.0, "rouge2": 11.0, "rougeL": 23.5})
    # t5s: not finished; g2 is best so far at step 20 (step 40 is worse), g1 has no evaluation
    _metrics(runs[("t5s", "mlsum", "5e-5")] / "metrics.jsonl", [
        {"step": 10, "train/loss": 3.0},
        {"step": 20, "eval/loss": 2.2, "eval/rouge1": 31.0, "eval/rouge2": 11.0,
         "eval/rougeL": 26.0},
        {"step": 40, "eval/loss": 2.1, "eval/rouge1": 34.0, "eval/rouge2": 13.0,
         "eval/rougeL": 25.5},
    ], tail='{"step": 41, "train/lo')  # a line being written while collect runs
    _metrics(runs[("t5s", "mlsum", "3e-5")] / "metrics.jsonl", [{"step": 10, "train/loss": 3.0}])

    assert slurm_main(["collect", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    [table] = _rows(out)
    assert table["header"][:5] == ["model", "mlsum run", "mlsum rouge1", "mlsum rouge2",
                                   "mlsum rougeL"]
    # every number of the row is g1's, although g2 has the better rouge1, rouge2 and loss
    assert table["barto"][:5] == ["BARTO", "g1", "30.00 / 29.00", "10.00 / 9.50", "25.00 / 24.00"]
    assert table["t5s"][:5] == ["T5S", "g2*", "31.00 / –", "11.00 / –", "26.00 / –"]
    assert "- g1: optim.lr=3e-5" in out and "- g2: optim.lr=5e-5" in out
    assert "- mlsum: rougeL" in out
    assert "* from a run that has not finished" in out
    assert (sweep_dir / "results.md").read_text() in out

    rows = list(csv.DictReader(io.StringIO((sweep_dir / "results.csv").read_text())))
    barto = {row["metric"]: row for row in rows if row["model"] == "barto"
             and row["task"] == "mlsum"}
    assert set(barto) == {"loss", "rouge1", "rouge2", "rougeL"}  # all of the run's metrics
    assert {row["grid_point"] for row in barto.values()} == {"optim.lr=3e-5"}
    assert (float(barto["rouge1"]["dev"]), float(barto["rouge1"]["test"])) == (30.0, 29.0)
    assert float(barto["loss"]["dev"]) == 2.5  # g1's loss, not g2's lower one
    assert barto["rougeL"]["selected_by"] == "rougeL" and barto["rougeL"]["final"] == "yes"
    assert barto["rougeL"]["best_step"] == "40"
    t5s = {row["metric"]: row for row in rows if row["model"] == "t5s" and row["task"] == "mlsum"}
    assert t5s["rougeL"]["final"] == "no" and t5s["rougeL"]["test"] == ""
    assert t5s["rougeL"]["best_step"] == "20" and t5s["rougeL"]["source"] == "metrics.jsonl"

    png = (sweep_dir / "results.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 1000


def test_family_averages_are_the_mean_of_the_chosen_runs_rouge_beside_the_papers(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    pairs = [("barto", "mlsum"), ("barto", "wikilingua"), ("t5s", "mlsum"), ("t5s", "wikilingua")]
    manifest = _write_manifest(sweep_dir, pairs, {})
    runs = _runs(manifest)
    values = {  # (model, task) -> dev (rouge1, rouge2, rougeL, rougeLsum); test = dev - 1
        ("barto", "mlsum"): (30.0, 12.0, 24.0, 25.0),
        ("barto", "wikilingua"): (36.0, 14.0, 30.0, 31.0),
        ("t5s", "mlsum"): (31.0, 13.0, 25.0, 26.0),
        ("t5s", "wikilingua"): (38.0, 15.0, 32.0, 33.0),
    }
    for (model, task), (r1, r2, rl, rlsum) in values.items():
        dev = {"rouge1": r1, "rouge2": r2, "rougeL": rl, "rougeLsum": rlsum}
        test = ({k: v - 1 for k, v in dev.items()} if (model, task) != ("t5s", "wikilingua")
                else None)
        _final(runs[(model, task, None)], dev, test)
    assert slurm_main(["collect", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    [table] = _rows(out)
    assert table["header"][-2:] == ["avg ROUGE", "paper avg ROUGE"]
    # (R1 + R2 + RL of mlsum + R1 + R2 + RL of wikilingua) / 6; rougeLsum is not averaged
    barto_dev = (30 + 12 + 24 + 36 + 14 + 30) / 6
    assert table["barto"][-2:] == [f"{barto_dev:.2f} / {barto_dev - 1:.2f}", "25.49"]
    t5s_dev = (31 + 13 + 25 + 38 + 15 + 32) / 6
    assert table["t5s"][-2:] == [f"{t5s_dev:.2f} / –", "26.54"]  # wikilingua has no test score
    assert "avg ROUGE = mean of rouge1, rouge2, rougeL over mlsum, wikilingua" in out
    # the paper's column is said not to be the same metric, and how to compare like with like
    assert "Not the same metric as ours" in out and "seq2seq-es score --mode paper" in out
    rows = list(csv.DictReader(io.StringIO((sweep_dir / "results.csv").read_text())))
    average = next(row for row in rows
                   if row["model"] == "barto" and row["task"] == "avg:mlsum+wikilingua")
    assert average["metric"] == "avg(rouge1,rouge2,rougeL)"
    assert float(average["dev"]) == pytest.approx(barto_dev)
    assert float(average["paper"]) == 25.49
    assert (average["paper_dev"], average["paper_test"]) == ("", "")
    # a pair the paper reports has its figure beside ours, per split (t5s mlsum: dev / test)
    by_metric = {(row["model"], row["task"], row["metric"]): row for row in rows}
    rouge1 = by_metric[("t5s", "mlsum", "rouge1")]
    assert (rouge1["dev"], rouge1["paper"], rouge1["paper_dev"], rouge1["paper_test"]) == (
        "31.0", "", "30.14", "29.44")
    assert (rouge1["grid_label"], rouge1["final"]) == ("g1", "yes")  # the columns after it
    barto = by_metric[("barto", "mlsum", "rouge1")]  # no figure for this pair
    assert (barto["paper"], barto["paper_dev"], barto["paper_test"]) == ("", "", "")


def test_an_average_needs_every_task_of_the_family(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("barto", "sqac"), ("barto", "mlqa"), ("t5s", "sqac")],
                               {})
    runs = _runs(manifest)
    for key in runs:
        _final(runs[key], {"rouge1": 80.0, "rouge2": 60.0, "rougeL": 70.0, "exact_match": 50.0,
                           "token_f1": 75.0}, {"rouge1": 79.0, "rouge2": 59.0, "rougeL": 69.0})
    assert slurm_main(["collect", str(sweep_dir), "--split", "test"]) == 0
    [table] = _rows(capsys.readouterr().out)
    assert table["barto"][-2:] == ["69.00", "–"]  # --split test: test values only
    assert table["t5s"][-2:] == ["–", "67.92"]  # no mlqa run: no average, the paper's is shown
    assert table["t5s"][table["header"].index("mlqa run")] == "–"
    assert table["t5s"][table["header"].index("sqac exact_match")] == "–"  # no test score


def test_split_dev_shows_validation_only(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("t5s", "bisect")], {})
    _final(_runs(manifest)[("t5s", "bisect", None)],
           {"sari": 56.0, "bleu": 43.0, "exact_match": 0.0},
           {"sari": 55.0, "bleu": 42.0, "exact_match": 0.5}, main_metric="sari")
    assert slurm_main(["collect", str(sweep_dir), "--split", "dev", "--metrics", "sari,bleu"]) == 0
    out = capsys.readouterr().out
    [table] = _rows(out)
    assert table["header"] == ["model", "bisect run", "bisect sari", "bisect bleu", "avg SARI",
                               "paper avg SARI"]
    assert table["t5s"] == ["T5S", "g1", "56.00", "43.00", "56.00", "56.37"]
    assert "Cells: dev (validation) only" in out
    dev_files = {name: (sweep_dir / f"results-dev.{name}").read_bytes()
                 for name in ("md", "csv", "png")}
    assert not (sweep_dir / "results.md").exists()
    assert slurm_main(["collect", str(sweep_dir)]) == 0  # all metrics, two decimals each
    [table] = _rows(capsys.readouterr().out)
    assert table["t5s"][table["header"].index("bisect exact_match")] == "0.00 / 0.50"
    # the dev / test table has its own files and leaves the dev-only ones as they were
    assert "0.00 / 0.50" in (sweep_dir / "results.md").read_text()
    assert dev_files == {name: (sweep_dir / f"results-dev.{name}").read_bytes()
                         for name in ("md", "csv", "png")}
    # `validation`, evaluate's name for the split, is dev here too
    assert slurm_main(["collect", str(sweep_dir), "--split", "validation", "--metrics",
                       "sari,bleu"]) == 0
    assert "Cells: dev (validation) only" in capsys.readouterr().out


def test_a_sweep_without_results_leaves_earlier_tables_untouched(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("barto", "mlsum")], LR)
    for name in ("results.md", "results.csv", "results.png"):
        (sweep_dir / name).write_text(f"earlier {name}")
    _metrics(sweep_dir / manifest.runs[0].name / "metrics.jsonl", [{"step": 5, "train/loss": 3.0}])
    assert slurm_main(["collect", str(sweep_dir)]) == 1
    out = capsys.readouterr().out
    assert "No results yet" in out and "nothing written" in out
    # dev scores but no test scores yet: --split test has nothing to show either
    _metrics(sweep_dir / manifest.runs[1].name / "metrics.jsonl",
             [{"step": 5, "eval/rougeL": 20.0}])
    assert slurm_main(["collect", str(sweep_dir), "--split", "test"]) == 1
    assert "No test scores yet" in capsys.readouterr().out
    for name in ("results.md", "results.csv", "results.png"):
        assert (sweep_dir / name).read_text() == f"earlier {name}"
    assert slurm_main(["collect", str(sweep_dir)]) == 0  # dev scores: the table is written
    assert (sweep_dir / "results.png").read_bytes().startswith(PNG_SIGNATURE)


def test_runs_without_the_main_metric_are_chosen_by_the_first_task_metric(tmp_path, capsys):
    # what the SLURM probe entry writes: eval/score and eval/total, DONE, no final_results.json
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("barto", "mlsum"), ("barto", "sqac")], LR)
    for run in manifest.runs:
        run_dir = sweep_dir / run.name
        score = 30.0 if run.grid_point["optim.lr"] == "3e-5" else 50.0
        _metrics(run_dir / "metrics.jsonl", [{"step": 1, "train/loss": 1.0},
                                             {"step": 2, "train/loss": 0.5},
                                             {"step": 2, "eval/score": score, "eval/total": 3.0}])
        (run_dir / "DONE").write_text("{}")
    assert slurm_main(["collect", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    summaries, qa = _rows(out)
    assert summaries["header"] == ["model", "mlsum run", "mlsum score", "mlsum total"]
    assert summaries["barto"] == ["BARTO", "g2", "50.00 / –", "3.00 / –"]  # DONE: final, no *
    assert qa["barto"] == ["BARTO", "g2", "50.00 / –", "3.00 / –"]
    assert ("- mlsum: score (the main metric rougeL was not logged; the first metric logged "
            "instead)") in out
    assert "not finished" not in out


def test_lower_is_better_for_losses_and_error_rates(tmp_path):
    assert lower_is_better("loss") and lower_is_better("ter") and lower_is_better("eval_loss")
    assert not lower_is_better("answer_f1") and not lower_is_better("meteor")
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("barto", "wmt13-es-en"), ("barto", "mlsum")],
                               {"optim.lr": ["1", "2"]})
    runs = _runs(manifest)
    for lr, loss in (("1", 2.0), ("2", 1.5)):  # no task metric: the lowest dev loss, lr 2
        _final(runs[("barto", "wmt13-es-en", lr)], {"loss": loss}, None, main_metric="loss")
    for lr, ter in (("1", 40.0), ("2", 35.0)):  # an entry whose only metric is an error rate
        _metrics(runs[("barto", "mlsum", lr)] / "metrics.jsonl", [{"step": 5, "eval/ter": ter}])
    table = build_table(load_manifest(sweep_dir))
    assert table.chosen[("barto", "wmt13-es-en")].result.validation == {"loss": 1.5}
    assert table.chosen[("barto", "wmt13-es-en")].selected_by == "loss"
    assert table.chosen[("barto", "mlsum")].result.validation == {"ter": 35.0}
    assert "1.50 / –" in format_markdown(table) and "barto" in format_csv(table)


def test_a_broken_final_results_file_leaves_that_run_out_and_says_why(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("barto", "mlsum")], LR)
    runs = _runs(manifest)
    (runs[("barto", "mlsum", "3e-5")] / "final_results.json").write_text('{"validation": ')
    _final(runs[("barto", "mlsum", "5e-5")], {"rougeL": 20.0}, {"rougeL": 19.0})
    assert slurm_main(["collect", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    [table] = _rows(out)
    assert table["barto"][:3] == ["BARTO", "g2", "20.00 / 19.00"]
    assert "barto__mlsum__lr-3e-5 left out: file " in out and "final_results.json" in out


def test_a_broken_metrics_line_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2,\n{"step": 3}\n')
    with pytest.raises(DataError) as info:
        read_metrics(path)
    assert info.value.line == 2 and info.value.file == str(path)  # a line, as an editor numbers it


def test_a_step_logged_twice_keeps_its_last_values(tmp_path):
    # a run resumed from its step-2 checkpoint after logging step 3 logs step 3 again
    path = tmp_path / "metrics.jsonl"
    _metrics(path, [{"step": 1, "train/loss": 4.0}, {"step": 2, "train/loss": 3.0},
                    {"step": 2, "eval/rougeL": 10.0}, {"step": 3, "train/loss": 2.5},
                    {"step": 3, "train/loss": 2.0}, {"step": 4, "train/loss": 1.0}])
    records = read_metrics(path)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[1] == {"step": 2, "train/loss": 3.0, "eval/rougeL": 10.0}
    assert records[2]["train/loss"] == 2.0
    assert [r["step"] for r in read_metrics(path, merge_steps=False)] == [1, 2, 2, 3, 3, 4]


def test_test_scores_logged_at_the_end_are_read_without_final_results(tmp_path):
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("barto", "mlsum")], {})
    run = manifest.runs[0]
    _metrics(sweep_dir / run.name / "metrics.jsonl", [
        {"step": 10, "eval/rougeL": 22.0}, {"step": 20, "eval/rougeL": 21.0},
        {"step": 10, "test/rougeL": 20.5}])  # the engine scores test at the best step
    result = run_result(run, "rougeL")
    assert (result.best_step, result.validation, result.test) == (10, {"rougeL": 22.0},
                                                                   {"rougeL": 20.5})
    assert not result.final and result.source == "metrics.jsonl"


def test_a_running_runs_row_shows_the_step_its_best_checkpoint_holds_on_a_tie(tmp_path):
    # ROUGE at 0 at every step (tiny or early runs): the first step (the untrained model) was
    # shown, where the engine keeps the later step with the lower dev loss and scores test there.
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("barto", "mlsum")], {})
    run = manifest.runs[0]
    _metrics(sweep_dir / run.name / "metrics.jsonl", [
        {"step": 0, "eval/rougeL": 0.0, "eval/loss": 7.0},
        {"step": 10, "eval/rougeL": 0.0, "eval/loss": 5.5}, {"step": 10, "test/rougeL": 0.0},
        {"step": 20, "eval/rougeL": 0.0, "eval/loss": 5.9}])
    result = run_result(run, "rougeL")
    assert (result.best_step, result.validation["loss"], result.test) == (10, 5.5,
                                                                          {"rougeL": 0.0})


def test_a_cell_never_holds_another_pairs_result_or_a_choice_made_on_another_metric(tmp_path):
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("barto", "mlsum"), ("t5s", "mlsum")],
                               {"optim.lr": ["1", "2", "3"]})
    runs = _runs(manifest)
    # barto: g1 chose its checkpoint by loss (train.best_metric) and has the lower loss, g2 the
    # better rougeL: runs are compared on the task's main metric. g3 holds another pair's file.
    _final(runs[("barto", "mlsum", "1")], {"loss": 1.0, "rougeL": 15.0, "rouge1": 20.0,
                                           "rouge2": 5.0}, None, main_metric="loss")
    _final(runs[("barto", "mlsum", "2")], {"loss": 2.0, "rougeL": 25.0, "rouge2": 9.0,
                                           "rouge1": 30.0}, {"rougeL": 24.0})
    (runs[("barto", "mlsum", "3")] / "final_results.json").write_text(json.dumps({
        "task": "sqac", "model": "t5s", "main_metric": "rougeL", "validation": {"rougeL": 90.0},
        "test": None}))
    # t5s: g1 finished (rougeL 20); g2 did not finish but is better so far (its test scores
    # are logged at another step than its best validation); g3 logged no rougeL.
    _final(runs[("t5s", "mlsum", "1")], {"rougeL": 20.0}, {"rougeL": 19.0})
    _metrics(runs[("t5s", "mlsum", "2")] / "metrics.jsonl",
             [{"step": 10, "eval/rougeL": 30.0}, {"step": 20, "eval/rougeL": 28.0},
              {"step": 20, "test/rougeL": 27.5}])
    _final(runs[("t5s", "mlsum", "3")], {"rouge1": 50.0}, None)
    table = build_table(load_manifest(sweep_dir))
    barto, t5s = table.chosen[("barto", "mlsum")], table.chosen[("t5s", "mlsum")]
    assert barto.result.run.grid_point == {"optim.lr": "2"} and barto.selected_by == "rougeL"
    assert t5s.result.run.grid_point == {"optim.lr": "1"} and t5s.compared == 1
    assert any("its task is 'sqac', but the sweep planned 'mlsum'" in n for n in table.notes)
    out = format_markdown(table)
    assert "runs chose their checkpoints by train.best_metric loss; runs are compared on " \
           "rougeL" in out
    assert "chosen among 1 of 3 runs; no dev rougeL in t5s__mlsum__lr-3" in out
    assert "finished runs preferred: t5s__mlsum__lr-2 (not finished) had a better dev rougeL" in out
    # columns in the paper's order, whatever order the runs logged them in
    header = _rows(out)[0]["header"]
    assert header[:5] == ["model", "mlsum run", "mlsum rouge1", "mlsum rouge2", "mlsum rougeL"]
    # The unfinished run's test scores were logged at step 20, its best validation is step 10.
    alone = run_result(manifest.runs[4], "rougeL")
    assert (alone.best_step, alone.validation, alone.test) == (10, {"rougeL": 30.0}, None)


def test_the_papers_average_is_shown_only_beside_an_average_over_the_same_tasks(tmp_path):
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("barto", "mlsum")], LR)
    runs = _runs(manifest)
    for lr in ("3e-5", "5e-5"):
        _final(runs[("barto", "mlsum", lr)], {"rouge1": 30.0, "rouge2": 10.0, "rougeL": 25.0},
               {"rouge1": 29.0, "rouge2": 9.0, "rougeL": 24.0})
    out = format_markdown(build_table(load_manifest(sweep_dir)))
    assert "paper avg" not in _rows(out)[0]["header"]
    assert "the paper's average is over mlsum + wikilingua with rouge1, rouge2, rougeL: not " \
           "shown" in out
    # The paper's QA tasks and metrics, for a model the paper has no average of: it said the
    # tasks or metrics differed, when only the figure is missing.
    qa_dir = tmp_path / "qa"
    qa_runs = _runs(_write_manifest(qa_dir, [("barto", "sqac"), ("barto", "mlqa")], {}))
    for task in ("sqac", "mlqa"):
        _final(qa_runs[("barto", task, None)], {"rouge1": 30.0, "rouge2": 10.0, "rougeL": 25.0},
               {"rouge1": 29.0, "rouge2": 9.0, "rougeL": 24.0})
    out = format_markdown(build_table(load_manifest(qa_dir)))
    assert "(the paper gives this average for t5s only, none of this table's models)" in out
    assert "the paper's average is over" not in out


def test_collect_refuses_unknown_metrics_and_replaces_its_files_only_as_a_set(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("barto", "mlsum")], LR)
    runs = _runs(manifest)
    _final(runs[("barto", "mlsum", "3e-5")], {"rougeL": 20.0}, {"rougeL": 19.0})
    assert slurm_main(["collect", str(sweep_dir), "--metrics", "rougel"]) == 2
    assert "rougel logged by no chosen run; the runs logged: rougeL" in capsys.readouterr().err
    assert slurm_main(["collect", str(sweep_dir)]) == 0
    before = {name: (sweep_dir / name).read_bytes() for name in ("results.md", "results.csv")}
    _final(runs[("barto", "mlsum", "5e-5")], {"rougeL": 30.0}, {"rougeL": 29.0})
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    assert slurm_main(["collect", str(sweep_dir), "--png", str(blocked / "results.png")]) == 2
    assert "could not write the results" in capsys.readouterr().err
    assert {name: (sweep_dir / name).read_bytes() for name in before} == before
    assert not list(sweep_dir.glob(".*.tmp"))


def test_two_collects_into_one_folder_do_not_remove_each_others_files(tmp_path, monkeypatch):
    # Two `collect` at once into one folder shared the temporary names: one removed the other's,
    # which then failed saying nothing was replaced (an audit, 3 of 3 times). Here the other
    # collect (another pid) writes the whole set while this one is between its writes.
    import os

    from seq2seq_es.slurm import results_table as R

    sweep_dir = tmp_path / "sweep"
    runs = _runs(_write_manifest(sweep_dir, [("barto", "mlsum")], LR))
    _final(runs[("barto", "mlsum", "3e-5")], {"rougeL": 20.0}, {"rougeL": 19.0})
    table = build_table(load_manifest(sweep_dir))
    files = [sweep_dir / name for name in ("results.md", "results.csv", "results.png")]
    pid, plot = [1001], R.plot_results

    def plot_then_the_other_collect(table, path, split="both"):
        plot(table, path, split)
        if pid[0] == 1001:
            pid[0] = 2002
            R.write_results(table, *files)
            pid[0] = 1001

    monkeypatch.setattr(R, "plot_results", plot_then_the_other_collect)
    monkeypatch.setattr(os, "getpid", lambda: pid[0])
    R.write_results(table, *files)
    assert all(path.is_file() for path in files) and not list(sweep_dir.glob(".*.tmp"))


def test_an_empty_table_still_names_the_runs_left_out(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("barto", "mlsum")], LR)
    runs = _runs(manifest)
    for lr in ("3e-5", "5e-5"):
        (runs[("barto", "mlsum", lr)] / "final_results.json").write_text("{")
    assert slurm_main(["collect", str(sweep_dir)]) == 1
    out = capsys.readouterr().out
    assert "Left out:" in out and "barto__mlsum__lr-3e-5 left out: file " in out


def test_a_table_of_runs_from_different_code_says_so(tmp_path):
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("barto", "mlsum"), ("t5s", "mlsum")],
                               {"optim.lr": ["1"]})
    runs = _runs(manifest)
    for (model, commit) in (("barto", "aaa111"), ("t5s", "bbb222+dirty")):
        folder = runs[(model, "mlsum", "1")]
        _final(folder, {"rougeL": 20.0}, {"rougeL": 19.0})
        (folder / "versions.json").write_text(json.dumps({"seq2seq-es": "0.1.0",
                                                          "seq2seq-es commit": commit}))
    out = format_markdown(build_table(load_manifest(sweep_dir)))
    assert ("the chosen runs ran different code (versions.json), so their scores may not "
            "compare: aaa111: barto__mlsum__lr-1; bbb222+dirty: t5s__mlsum__lr-1") in out
    (runs[("t5s", "mlsum", "1")] / "versions.json").write_text(json.dumps(
        {"seq2seq-es commit": "aaa111"}))
    assert "Warnings:" not in format_markdown(build_table(load_manifest(sweep_dir)))


def test_a_run_records_the_code_it_ran():
    from seq2seq_es.engine.run_dir import library_versions

    versions = library_versions()
    assert versions["seq2seq-es"] == "0.1.0"
    # this test runs from a git checkout of the package: its commit is recorded
    assert len(versions["seq2seq-es commit"].split("+")[0]) == 40


def test_the_papers_figures_are_listed_for_the_pairs_the_table_holds(tmp_path):
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("t5s", "mlsum"), ("barto", "wmt13-es-en"),
                                           ("barto", "eurlexsum")], {"optim.lr": ["1"]})
    runs = _runs(manifest)
    _final(runs[("t5s", "mlsum", "1")], {"rougeL": 20.0}, {"rougeL": 19.0})
    _final(runs[("barto", "wmt13-es-en", "1")], {"bleu": 20.0}, {"bleu": 19.0})
    _final(runs[("barto", "eurlexsum", "1")], {"rougeL": 50.0}, {"rougeL": 49.0})
    out = format_markdown(build_table(load_manifest(sweep_dir)))
    assert "- t5s mlsum: rouge1 30.14 / 29.44, rouge2 12.27 / 11.56, rougeL 24.62 / 23.88" in out
    assert "- barto wmt13-es-en: bleu 30.22 / –" in out
    # the long-summarization figures (paper-facts: EUR-Lex-Sum BARTO 56.82)
    assert "- barto eurlexsum: ROUGE (which not stated) 56.82 (split not stated)" in out
    assert "t5s sqac" not in out  # not in this table


def test_a_run_whose_config_is_not_what_the_sweep_planned_is_left_out(tmp_path):
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("t5s", "mlsum")], LR)
    runs = _runs(manifest)
    for lr in ("3e-5", "5e-5"):
        _metrics(runs[("t5s", "mlsum", lr)] / "metrics.jsonl", [{"step": 5, "eval/rougeL": 20.0}])
    # the engine's config.yaml: one as planned, one from a folder another run wrote into
    (runs[("t5s", "mlsum", "3e-5")] / "config.yaml").write_text(
        "model:\n  name: t5s\ndata:\n  task: mlsum\noptim:\n  lr: 3.0e-05\n")
    (runs[("t5s", "mlsum", "5e-5")] / "config.yaml").write_text(
        "model:\n  name: t5s\ndata:\n  task: mlsum\noptim:\n  lr: 0.001\n")
    table = build_table(load_manifest(sweep_dir))
    assert table.chosen[("t5s", "mlsum")].result.run.grid_point == {"optim.lr": "3e-5"}
    [note] = table.notes
    assert note.startswith("t5s__mlsum__lr-5e-5 left out: file ") and \
        "its optim.lr is 0.001, but the sweep planned '5e-5' for this run" in note


def test_runs_without_scores_are_named(tmp_path):
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("barto", "mlsum")], LR)
    runs = _runs(manifest)
    _final(runs[("barto", "mlsum", "3e-5")], {"rougeL": 20.0}, {"rougeL": 19.0})
    out = format_markdown(build_table(load_manifest(sweep_dir)))
    assert "No scores yet (" in out and out.rstrip().endswith(": barto__mlsum__lr-5e-5")
    assert f"seq2seq-es slurm status {sweep_dir}" in out


def _local_run(folder, task, model, lr, validation, test, train_file=None, **data_keys):
    """A run folder as `seq2seq-es train` leaves it (no manifest): config.yaml and results;
    data_keys: other data.* keys of its config (validation_file, max_eval_samples)."""
    folder.mkdir(parents=True)
    data = f"  task: {task}\n" + (f"  train_file: {train_file}\n" if train_file else "")
    data += "".join(f"  {key}: {value}\n" for key, value in data_keys.items())
    (folder / "config.yaml").write_text(
        f"model:\n  name: {model}\ndata:\n{data}optim:\n  lr: {lr}\n"
        f"train:\n  output_dir: {folder}\n  log_every: 10\n")
    (folder / "final_results.json").write_text(json.dumps({
        "task": task, "model": model, "main_metric": "rougeL", "best_step": 8, "steps": 10,
        "validation": validation, "test": test}))


def test_tables_follow_the_papers_order_of_tasks_and_models_not_the_folders(tmp_path):
    # run folders are read in name order: the QA table read "mlqa, sqac" and "t5s, barto"
    runs = tmp_path / "runs"
    scores = {"rouge1": 20.0, "rouge2": 5.0, "rougeL": 18.0}
    for folder, task, model in (("a-t5s-sqac", "sqac", "t5s"), ("b-barto-mlqa", "mlqa", "barto"),
                                ("c-barto-sqac", "sqac", "barto"), ("d-t5s-mlqa", "mlqa", "t5s")):
        _local_run(runs / folder, task, model, 1e-4, scores, scores)
    table = build_table(load_runs([str(runs)]))
    assert table.families == [("qa", ["sqac", "mlqa"])] and table.models == ["barto", "t5s"]
    [rows] = _rows(format_markdown(table))
    assert [cell.split()[0] for cell in rows["header"][1::4]] == ["sqac", "mlqa", "avg"]


def test_a_run_validated_or_tested_on_its_training_file_is_warned_of(tmp_path):
    # It was chosen on a dev score of data it trained on (87.50 dev against 0.00 test), and only
    # the list of files trained on showed it.
    runs = tmp_path / "runs"
    scores = {"rouge1": 20.0, "rouge2": 5.0, "rougeL": 18.0}
    _local_run(runs / "on-dev", "sqac", "barto", 1e-4, scores, scores,
               train_file="/data/sqac/validation.jsonl",
               validation_file="/data/sqac/validation.jsonl", test_file="/data/sqac/test.jsonl")
    _local_run(runs / "clean", "sqac", "t5s", 1e-4, scores, scores,
               train_file="/data/sqac/train.jsonl",
               validation_file="/data/sqac/validation.jsonl", test_file="/data/sqac/test.jsonl")
    warnings = build_table(load_runs([str(runs)])).warnings
    assert ("barto / sqac: on-dev's data.validation_file is its training file: those scores are "
            "on data it trained on") in warnings
    assert not any("clean" in warning for warning in warnings)


def test_a_clean_run_wins_a_tie_over_one_validated_on_its_training_file(tmp_path):
    # One run on each validation set (a tie of 1 against 1): the folders' order chose the run
    # validated on its own training file, whose scores the table then warned of.
    runs = tmp_path / "runs"
    _local_run(runs / "a-leak", "mlsum", "barto", 1e-4, {"rougeL": 90.0}, None,
               train_file="/data/train.jsonl", validation_file="/data/train.jsonl")
    _local_run(runs / "b-ok", "mlsum", "barto", 1e-4, {"rougeL": 20.0}, None,
               train_file="/data/train.jsonl", validation_file="/data/validation.jsonl")
    table = build_table(load_runs([str(runs)]))
    assert table.chosen[("barto", "mlsum")].result.run.name == "b-ok"
    # equal dev scores on the same data: the run resumed with other settings gives way
    runs = tmp_path / "tied"
    for name in ("a-resumed", "b-plain"):
        _local_run(runs / name, "mlsum", "barto", 1e-4, {"rougeL": 20.0, "loss": 2.0}, None,
                   train_file="/data/train.jsonl", validation_file="/data/validation.jsonl")
    earlier = (runs / "a-resumed" / "config.yaml").read_text().replace("lr: 0.0001", "lr: 0.001")
    (runs / "a-resumed" / "config.until_step_4.yaml").write_text(earlier)
    table = build_table(load_runs([str(runs)]))
    assert any("a-resumed was resumed with other settings" in w for w in table.warnings)
    assert table.chosen[("barto", "mlsum")].result.run.name == "b-plain"


def test_a_run_folders_foreign_or_broken_results_are_named_as_a_run_folders(tmp_path):
    # A plain run folder was told "the sweep planned 'miam'", and a broken file's line was
    # called a row.
    runs = tmp_path / "runs"
    scores = {"rouge1": 20.0, "rouge2": 5.0, "rougeL": 18.0}
    _local_run(runs / "copied", "sqac", "barto", 1e-4, scores, scores)
    final = runs / "copied" / "final_results.json"
    final.write_text(final.read_text().replace('"task": "sqac"', '"task": "miam"'))
    _local_run(runs / "broken", "sqac", "t5s", 1e-4, scores, scores)
    (runs / "broken" / "final_results.json").write_text('{\n"validation": \n')
    notes = build_table(load_runs([str(runs)])).notes
    assert any(f"file {final}: its task is 'miam', but its config.yaml names 'sqac' for this "
               "run" in note for note in notes), notes
    assert any(f"file {runs / 'broken' / 'final_results.json'}, line 3: not valid JSON" in note
               for note in notes), notes


def test_run_folders_of_one_name_in_two_places_are_told_apart(tmp_path):
    # Two `t5s-sqac` folders under two parents: labels and warnings named both "t5s-sqac".
    scores = {"rouge1": 20.0, "rouge2": 5.0, "rougeL": 18.0}
    for parent, lr in (("first", 1e-4), ("second", 3e-4)):
        _local_run(tmp_path / parent / "t5s-sqac", "sqac", "t5s", lr, scores, scores)
    _local_run(tmp_path / "second" / "barto-sqac", "sqac", "barto", 1e-4, scores, scores)
    manifest = load_runs([str(tmp_path / "first"), str(tmp_path / "second")])
    assert sorted(run.name for run in manifest.runs) == [
        "barto-sqac", "first/t5s-sqac", "second/t5s-sqac"]
    assert {run.grid_point["run"] for run in manifest.runs if run.model == "t5s"} == {
        "first/t5s-sqac", "second/t5s-sqac"}


def test_collect_reads_run_folders_trained_without_slurm(tmp_path, capsys):
    from seq2seq_es.cli import main as cli_main

    runs = tmp_path / "runs"
    _local_run(runs / "barto-mlsum-a", "mlsum", "barto", 3e-5, {"rougeL": 20.0, "rouge1": 25.0},
               {"rougeL": 19.0, "rouge1": 24.0}, train_file="/data/mlsum/train.jsonl")
    _local_run(runs / "barto-mlsum-b", "mlsum", "barto", 5e-5, {"rougeL": 22.0, "rouge1": 23.0},
               {"rougeL": 21.0, "rouge1": 22.0}, train_file="/data/mlsum/train.jsonl")
    _local_run(runs / "t5s-mlsum", "mlsum", "t5s", 1e-3, {"rougeL": 18.0, "rouge1": 21.0}, None)
    (runs / "notes").mkdir()  # not a run folder: passed over
    (runs / "failed-start").mkdir()  # a train that failed while loading its model: said
    (runs / "failed-start" / "train.lock").write_text("{}")
    assert cli_main(["collect", str(runs)]) == 0
    out, err = capsys.readouterr()
    assert (f"note: {runs / 'failed-start'} is left out: it holds train.lock but no config.yaml "
            "(a train that failed before its config was written)") in err
    assert "notes" not in err
    # named alone, it says why it has nothing, not that it is no run folder
    assert cli_main(["collect", str(runs / "failed-start")]) == 2
    assert (f"{runs / 'failed-start'} holds train.lock but no config.yaml: a train that failed "
            "before its config was written") in capsys.readouterr().err
    [table] = _rows(out)
    # barto's better rougeL run (b), every number of its row from it; the runs differ in
    # optim.lr only (train.output_dir and log_every say nothing about what was trained)
    assert table["barto"][:4] == ["BARTO", "g2", "23.00 / 22.00", "22.00 / 21.00"]
    assert "- g2: run=barto-mlsum-b optim.lr=5e-05" in out
    assert "- g3: run=t5s-mlsum" in out  # one run of its pair: no key differs
    assert f"Results of 3 of the 3 run(s) in {runs}" in out
    assert "- barto / mlsum: /data/mlsum/train.jsonl" in out  # said where the data came from
    rows = list(csv.DictReader(io.StringIO((runs / "results.csv").read_text())))
    barto = {row["metric"]: row for row in rows if row["model"] == "barto"}
    assert barto["rougeL"]["run_dir"] == str(runs / "barto-mlsum-b")
    assert barto["rougeL"]["local_data"] == "/data/mlsum/train.jsonl"
    # Run folders named one by one: the results go to the folder that holds them.
    assert cli_main(["collect", str(runs / "barto-mlsum-a"), str(runs / "t5s-mlsum"),
                     "--split", "test"]) == 0
    assert "19.00" in (runs / "results-test.md").read_text()


def test_a_stopped_run_folder_is_told_the_command_that_resumes_it_from_anywhere(tmp_path,
                                                                              capsys):
    # "--config RUN/config.yaml --train.resume auto" read the config's relative output_dir from
    # the directory it ran in, and trained a new run there.
    from seq2seq_es.cli import main as cli_main

    runs = tmp_path / "runs"
    _local_run(runs / "stopped", "mlsum", "barto", 1e-4, {"rougeL": 20.0}, None)
    (runs / "stopped" / "final_results.json").unlink()
    _metrics(runs / "stopped" / "metrics.jsonl",
             [{"step": 20, "eval/loss": 2.0, "eval/rougeL": 25.0}])
    assert cli_main(["collect", str(runs)]) == 0
    out = capsys.readouterr().out
    assert ("A stopped run continues from its last checkpoint with `seq2seq-es train --config "
            "RUN/config.yaml --train.output_dir RUN --train.resume auto` (RUN: its folder "
            "above)") in out
    assert f"  - barto / mlsum ({runs / 'stopped'}): stopped without finishing" in out


def test_run_folders_that_split_a_step_otherwise_are_labelled_by_its_examples(tmp_path,
                                                                              capsys):
    # 1 rank x 4 and 2 ranks x 2 (the same 4 examples a step) read as two settings,
    # "train.batch_size=4" and "train.batch_size=2".
    from seq2seq_es.cli import main as cli_main

    runs = tmp_path / "runs"
    for name, batch, accum, step_examples, lr in (("a-one", 4, 1, 4, 1e-4), ("b-two", 2, 1, 4, 1e-4),
                                                  ("c-acc", 2, 2, 4, 2e-4)):
        _local_run(runs / name, "mlsum", "barto", lr, {"rougeL": 20.0}, None)
        config = runs / name / "config.yaml"
        config.write_text(config.read_text().replace(
            "train:\n", f"train:\n  batch_size: {batch}\n  grad_accum: {accum}\n"))
        (runs / name / "deepspeed_config.json").write_text(json.dumps(
            {"train_batch_size": step_examples, "train_micro_batch_size_per_gpu": batch}))
    assert cli_main(["collect", str(runs)]) == 0
    labels = [line for line in capsys.readouterr().out.splitlines() if line.startswith("- g")]
    assert labels == ["- g1: run=a-one optim.lr=0.0001", "- g2: run=b-two optim.lr=0.0001",
                      "- g3: run=c-acc optim.lr=0.0002"]
    (runs / "c-acc" / "deepspeed_config.json").write_text(json.dumps({"train_batch_size": 8}))
    assert cli_main(["collect", str(runs)]) == 0
    labels = [line for line in capsys.readouterr().out.splitlines() if line.startswith("- g")]
    assert labels[2] == "- g3: run=c-acc optim.lr=0.0002 examples_per_step=8"


def test_an_own_task_defined_otherwise_by_its_runs_is_compared_whatever_their_order(tmp_path):
    # The first run read gave the main score for all: `collect own1 own2` chose on rougeL,
    # `collect own2 own1` on sari, and the table changed with the order.
    runs = tmp_path / "runs"
    own = {"source_column": "articulo", "target_column": "titular"}
    _local_run(runs / "own1", "titulares", "barto", 1e-4, {"rougeL": 20.0, "bleu": 5.0}, None,
               metrics="rouge,bleu", **own)
    _local_run(runs / "own2", "titulares", "barto", 2e-4, {"sari": 40.0, "chrf": 30.0}, None,
               metrics="sari,chrf", **own)
    chosen = []
    for order in (["own1", "own2"], ["own2", "own1"]):
        table = build_table(load_runs([str(runs / name) for name in order]))
        choice = table.chosen[("barto", "titulares")]
        chosen.append((choice.selected_by, choice.result.run.name))
        assert ("the runs of your own task titulares report other main scores (their "
                "data.metrics differ): rougeL: own1; sari: own2; compared on rougeL") in \
            " ".join(table.warnings)
    assert chosen == [("rougeL", "own1")] * 2


def test_the_papers_own_subset_of_a_dataset_is_not_called_part_of_the_data():
    # Every WMT13 run of the registry's defaults (the paper's first 600000 pairs) was listed
    # among the runs "on local files or part of the data".
    import yaml

    from seq2seq_es.config import compose
    from seq2seq_es.slurm.results_table import local_data

    def data_of(task, **overrides):
        return local_data(yaml.safe_load(compose(task, "barto", overrides=overrides).to_yaml()))

    assert data_of("wmt13-es-en") is None
    assert data_of("wmt13-es-en", **{"data.max_train_samples": "1000"}) == (
        "the task's hub dataset, its first 1000 examples (data.max_train_samples)")
    assert data_of("mlsum", **{"data.max_train_samples": "600000"}) == (
        "the task's hub dataset, its first 600000 examples (data.max_train_samples)")


def test_collect_names_what_is_neither_a_sweep_nor_a_run(tmp_path, capsys):
    from seq2seq_es.cli import main as cli_main

    (tmp_path / "empty").mkdir()
    assert cli_main(["collect", str(tmp_path / "empty")]) == 2
    assert (f"error: argument RUN: {tmp_path / 'empty'} holds neither sweep.json, "
            "slurm_job.json, a run (config.yaml) nor run folders") in capsys.readouterr().err
    sweep_dir = tmp_path / "sweep"
    _write_manifest(sweep_dir, [("barto", "mlsum")], LR)
    _local_run(tmp_path / "run", "mlsum", "barto", 3e-5, {"rougeL": 20.0}, None)
    assert cli_main(["collect", str(sweep_dir), str(tmp_path / "run")]) == 2
    assert f"no run of the sweep {sweep_dir} has started training" in capsys.readouterr().err


def test_collect_puts_sweeps_and_submitted_runs_beside_other_runs(tmp_path, capsys):
    # Separately submitted runs (`slurm submit` folders hold slurm_job.json) and a second sweep
    # adding a grid point were refused ("is a sweep folder: collect it on its own").
    from seq2seq_es.cli import main as cli_main

    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("barto", "mlsum")], LR)
    for run in manifest.runs:
        lr = float(run.grid_point["optim.lr"])
        _local_run(Path(run.run_dir), "mlsum", "barto", lr, {"rougeL": 20.0 + lr * 1e5}, None)
    submitted = tmp_path / "submitted"
    _local_run(submitted, "mlsum", "barto", 1e-4, {"rougeL": 30.0}, None)
    single = new_manifest("run", plan_runs(tmp_path, [("barto", "mlsum")], {"optim.lr": ["1e-4"]},
                                           []), {}, SlurmConfig(), submitted / "slurm",
                          "seq2seq_es.slurm.probe:main", [], None)
    single.write(submitted / "slurm_job.json")
    assert cli_main(["collect", str(sweep_dir), str(submitted)]) == 0
    out = capsys.readouterr().out
    assert f"Results of 3 of the 3 run(s) in {tmp_path}" in out
    [table] = _rows(out)
    assert table["barto"][2] == "30.00 / –"  # the submitted run's, the best of the three



def test_sweeps_collected_together_keep_their_plans_and_their_runs_not_started(tmp_path,
                                                                              capsys):
    # Among other paths a sweep is read as run folders; its runs' configs are still checked
    # against what the sweep planned, and its runs that have not started are named, as when
    # the sweep is collected alone.
    from seq2seq_es.cli import main as cli_main

    first = _write_manifest(tmp_path / "first", [("barto", "mlsum")], LR)
    started = {run.grid_point["optim.lr"]: Path(run.run_dir) for run in first.runs}
    _local_run(started["3e-5"], "mlsum", "barto", 3e-5, {"rougeL": 20.0}, None)  # 5e-5: pending
    second = _write_manifest(tmp_path / "second", [("barto", "mlsum")], {"optim.lr": ["1e-4"]})
    [edited] = second.runs
    _local_run(Path(edited.run_dir), "mlsum", "barto", 1e-3, {"rougeL": 30.0}, None)
    assert "planned_point" not in (tmp_path / "first" / SWEEP_MANIFEST).read_text()
    assert cli_main(["collect", str(tmp_path / "first"), str(tmp_path / "second")]) == 0
    out = capsys.readouterr().out
    assert f"Results of 1 of the 3 run(s) in {tmp_path}" in out
    [table] = _rows(out)
    assert table["barto"][2] == "20.00 / –"  # not the edited run's 30.00
    assert f"- {edited.name} left out: file {Path(edited.run_dir) / 'config.yaml'}" in out
    assert "its optim.lr is 0.001, but the sweep planned '1e-4' for this run" in out
    [pending] = [run for run in first.runs if run.grid_point["optim.lr"] == "5e-5"]
    assert "\nNo scores yet (not started, no validation yet, or stopped before one): " \
        f"{Path(pending.run_dir).name}\n" in out


def test_a_tie_on_the_main_metric_goes_to_the_lower_dev_loss(tmp_path, capsys):
    # As a run's own best checkpoint (engine.trainer.is_better): a ROUGE stuck at 0 on both
    # grid points chose the first, the less trained one.
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("barto", "sqac")], LR)
    runs = _runs(manifest)
    _final(runs[("barto", "sqac", "3e-5")], {"rougeL": 0.0, "loss": 7.32}, {"rougeL": 0.0})
    _final(runs[("barto", "sqac", "5e-5")], {"rougeL": 0.0, "loss": 6.23}, {"rougeL": 0.004})
    table = build_table(load_manifest(sweep_dir))
    assert table.chosen[("barto", "sqac")].result.run.grid_point == {"optim.lr": "5e-5"}
    assert slurm_main(["collect", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    # every run scored: no "(the others have no scores yet ...)"; two decimals, unless those
    # would show a nonzero score as 0
    assert out.startswith(f"Results of 2 of the 2 run(s) in {sweep_dir / SWEEP_MANIFEST}. Per")
    [table] = _rows(out)
    assert table["barto"][table["header"].index("sqac rougeL")] == "0.00 / 0.004"


def test_a_sweep_whose_runs_are_all_left_out_says_so_not_no_results_yet(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("t5s", "mlsum")], LR)
    runs = _runs(manifest)
    for lr in ("3e-5", "5e-5"):
        _final(runs[("t5s", "mlsum", lr)], {"rougeL": 20.0}, {"rougeL": 19.0})
        (runs[("t5s", "mlsum", lr)] / "config.yaml").write_text(
            "model:\n  name: t5s\ndata:\n  task: mlsum\noptim:\n  lr: 0.001\n")
    assert slurm_main(["collect", str(sweep_dir)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("No results to show: 2 of the 2 run(s) are left out (below).\nLeft "
                          "out:\n- t5s__mlsum__lr-3e-5 left out: file ")


# ---- runs validated on different data ------------------------------------------------------------

def test_runs_validated_on_different_data_are_not_compared_and_the_table_says_so(tmp_path,
                                                                                capsys):
    # The demo's validation set and a user's val8.jsonl were read as grid points of one
    # (model, task), and the "best dev" across them chosen: dev scores on other data say
    # nothing about which setting is better.
    from seq2seq_es.cli import main as cli_main

    runs = tmp_path / "runs"
    demo, mine = "/data/demo/validation.jsonl", "/data/val8.jsonl"
    _local_run(runs / "demo-a", "mlsum", "barto", 3e-5, {"rougeL": 20.0}, None,
               validation_file=demo)
    _local_run(runs / "demo-b", "mlsum", "barto", 5e-5, {"rougeL": 21.0}, None,
               validation_file=demo)
    _local_run(runs / "mine", "mlsum", "barto", 3e-5, {"rougeL": 40.0}, None,
               validation_file=mine)  # the best number, on 8 other examples
    _local_run(runs / "t5s", "mlsum", "t5s", 1e-3, {"rougeL": 18.0}, None, validation_file=demo)
    assert cli_main(["collect", str(runs)]) == 0
    out = capsys.readouterr().out
    [table] = _rows(out)
    assert table["barto"][:3] == ["BARTO", "g2", "21.00 / –"]  # demo-b: the best on the demo's
    warnings = out.split("\nWarnings:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert warnings == [
        f"- barto / mlsum: its runs were validated on different data, whose dev scores do not "
        f"compare: the run shown was chosen among the 2 validated on data.validation_file {demo} "
        f"(demo-a, demo-b); left out of the choice: mine on data.validation_file {mine}. For the "
        "best on each, collect the runs of each validation set on their own"]
    rows = list(csv.DictReader(io.StringIO((runs / "results.csv").read_text())))
    assert {row["model"]: row["validation_data"] for row in rows if row["task"] == "mlsum"} == {
        "barto": f"data.validation_file {demo}", "t5s": f"data.validation_file {demo}"}
    # The runs of one validation set alone: no warning, the best of them.
    assert cli_main(["collect", str(runs / "mine"), str(runs / "t5s")]) == 0
    out = capsys.readouterr().out
    assert _rows(out)[0]["barto"][2] == "40.00 / –"


def test_the_hub_split_a_file_and_another_eval_subset_are_other_data(tmp_path):
    runs = tmp_path / "runs"
    _local_run(runs / "a-hub", "mlsum", "barto", 3e-5, {"rougeL": 20.0}, None)
    _local_run(runs / "b-file", "mlsum", "barto", 5e-5, {"rougeL": 30.0}, None,
               validation_file="/data/val.jsonl")
    _local_run(runs / "c-hub-100", "mlsum", "barto", 1e-4, {"rougeL": 35.0}, None,
               max_eval_samples=100)
    table = build_table(load_runs([str(runs)]))
    # one grid point on each: the first run's data (the folders' order) is the one compared on
    assert table.chosen[("barto", "mlsum")].result.run.name == "a-hub"
    [warning] = table.warnings
    assert "the run shown was chosen among the 1 validated on the hub dataset (a-hub)" in warning
    assert ("left out of the choice: b-file on data.validation_file /data/val.jsonl; c-hub-100 "
            "on the hub dataset, its first 100 examples (data.max_eval_samples)") in warning


def test_the_models_of_a_task_validated_on_different_data_are_warned_about(tmp_path):
    runs = tmp_path / "runs"
    _local_run(runs / "barto", "mlsum", "barto", 3e-5, {"rougeL": 20.0}, None,
               validation_file="/data/val.jsonl")
    _local_run(runs / "t5s", "mlsum", "t5s", 1e-3, {"rougeL": 18.0}, None)
    table = build_table(load_runs([str(runs)]))
    assert set(table.chosen) == {("barto", "mlsum"), ("t5s", "mlsum")}
    assert table.warnings == [
        "the chosen mlsum runs were validated on different data, so the models' mlsum dev scores "
        "do not compare: barto (barto) on data.validation_file /data/val.jsonl; t5s (t5s) on "
        "the hub dataset"]


def test_the_models_of_a_task_tested_on_different_data_are_warned_about(tmp_path):
    # Same validation file, other test files: the dev column compares, the test column does not.
    runs = tmp_path / "runs"
    _local_run(runs / "barto", "mlsum", "barto", 3e-5, {"rougeL": 20.0}, {"rougeL": 19.0},
               validation_file="/data/val.jsonl", test_file="/data/test-a.jsonl")
    _local_run(runs / "t5s", "mlsum", "t5s", 1e-3, {"rougeL": 18.0}, {"rougeL": 17.0},
               validation_file="/data/val.jsonl", test_file="/data/test-b.jsonl")
    _local_run(runs / "beto", "mlsum", "beto2beto", 1e-4, {"rougeL": 15.0}, None,
               validation_file="/data/val.jsonl")  # no test scores: not in the test column
    table = build_table(load_runs([str(runs)]))
    assert table.warnings == [
        "the chosen mlsum runs were tested on different data, so the models' mlsum test scores "
        "do not compare: barto (barto) on data.test_file /data/test-a.jsonl; t5s (t5s) on "
        "data.test_file /data/test-b.jsonl"]
    # The CSV says what each row's test scores were computed on (nothing where it has none).
    rows = list(csv.DictReader(io.StringIO(format_csv(table))))
    assert {row["model"]: row["test_data"] for row in rows if row["metric"] == "rougeL"} == {
        "barto": "data.test_file /data/test-a.jsonl", "t5s": "data.test_file /data/test-b.jsonl",
        "beto2beto": ""}
    (runs / "t5s" / "config.yaml").write_text(
        (runs / "t5s" / "config.yaml").read_text().replace("test-b", "test-a"))
    assert build_table(load_runs([str(runs)])).warnings == []


def test_runs_on_the_same_validation_data_are_compared_as_before(tmp_path):
    runs = tmp_path / "runs"
    for name, lr, value in (("a", 3e-5, 20.0), ("b", 5e-5, 22.0)):
        _local_run(runs / name, "mlsum", "barto", lr, {"rougeL": value}, None,
                   validation_file="/data/val.jsonl", max_eval_samples=50)
    table = build_table(load_runs([str(runs)]))
    assert table.chosen[("barto", "mlsum")].result.run.name == "b"
    assert table.chosen[("barto", "mlsum")].compared == 2 and table.warnings == []


# ---- what collect is given -------------------------------------------------------------------

def test_collect_names_a_file_that_is_no_run_sweep_or_manifest(tmp_path, capsys, monkeypatch):
    # It said "in.txt is not valid JSON", as if a manifest had been meant.
    from seq2seq_es.cli import main as cli_main

    monkeypatch.chdir(tmp_path)
    for name, text in (("in.txt", "some notes\n"), ("other.json", '{"kind": "else"}\n')):
        (tmp_path / name).write_text(text)
        assert cli_main(["collect", name]) == 2
        assert capsys.readouterr().err == (
            f"error: argument RUN: {tmp_path / name} is a file, neither a run folder, a folder "
            "of run folders, nor a sweep folder or its manifest (sweep.json or slurm_job.json)\n")
    # A sweep's manifest given as the file still loads, under its name or a copy's; a broken
    # one still gets its JSON error.
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("barto", "mlsum")], LR)
    _final(_runs(manifest)[("barto", "mlsum", "3e-5")], {"rougeL": 20.0}, {"rougeL": 19.0})
    copy = tmp_path / "sweep-copy.json"
    copy.write_text((sweep_dir / SWEEP_MANIFEST).read_text())
    assert load_runs([str(copy)]).runs == load_manifest(sweep_dir).runs
    assert cli_main(["collect", str(sweep_dir / SWEEP_MANIFEST)]) == 0
    assert "20.00 / 19.00" in capsys.readouterr().out
    (sweep_dir / SWEEP_MANIFEST).write_text("{")
    assert cli_main(["collect", str(sweep_dir / SWEEP_MANIFEST)]) == 2
    assert f"{sweep_dir / SWEEP_MANIFEST} is not valid JSON" in capsys.readouterr().err


def test_a_folder_of_sweeps_submitted_runs_and_run_folders_collects_them_all(tmp_path, capsys):
    # `collect PARENT` took only the run folders directly in PARENT: the sweeps and the
    # `slurm submit` folders beside them were left out without a word.
    from seq2seq_es.cli import main as cli_main

    sweep = _write_manifest(tmp_path / "sweep", [("barto", "mlsum")], LR)
    started = {run.grid_point["optim.lr"]: Path(run.run_dir) for run in sweep.runs}
    _local_run(started["3e-5"], "mlsum", "barto", 3e-5, {"rougeL": 20.0}, None)  # 5e-5: pending
    submitted = tmp_path / "submitted"
    _local_run(submitted, "mlsum", "t5s", 1e-4, {"rougeL": 30.0}, None)
    new_manifest("run", plan_runs(tmp_path, [("t5s", "mlsum")], {"optim.lr": ["1e-4"]}, []),
                 {}, SlurmConfig(), submitted / "slurm", "seq2seq_es.slurm.probe:main", [],
                 None).write(submitted / "slurm_job.json")
    pending_job = tmp_path / "pending_job"  # a `slurm submit` folder whose job has not started
    pending_job.mkdir()
    new_manifest("run", plan_runs(tmp_path, [("beto2beto", "mlsum")], {}, []), {},
                 SlurmConfig(), pending_job / "slurm", "seq2seq_es.slurm.probe:main", [],
                 None).write(pending_job / "slurm_job.json")
    _local_run(tmp_path / "plain", "mlsum", "barto", 1e-3, {"rougeL": 10.0}, None)
    (tmp_path / "notes").mkdir()
    assert cli_main(["collect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"Results of 3 of the 5 run(s) in {tmp_path}" in out
    [table] = _rows(out)
    assert table["barto"][2] == "20.00 / –" and table["t5s"][2] == "30.00 / –"
    [pending] = [run for run in sweep.runs if run.grid_point["optim.lr"] == "5e-5"]
    unscored = out.split("No scores yet", 1)[1].split("\n", 1)[0]
    assert unscored.endswith(": beto2beto__mlsum__default, " + Path(pending.run_dir).name)
    # Named on its own, a sweep with no run started is still refused as before.
    assert cli_main(["collect", str(pending_job), str(tmp_path / "plain")]) == 2
    assert "has not started training" in capsys.readouterr().err


def test_a_run_resumed_with_other_settings_is_warned_about(tmp_path):
    # A `slurm resume -- --optim.weight_decay 0.1` changed one run of a sweep part-way; the
    # table labelled it by its grid point alone.
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("barto", "mlsum")], LR)
    runs = _runs(manifest)
    for lr, folder in ((3e-5, runs[("barto", "mlsum", "3e-5")]),
                       (5e-5, runs[("barto", "mlsum", "5e-5")])):
        (folder / "config.yaml").write_text(
            f"model:\n  name: barto\ndata:\n  task: mlsum\noptim:\n  lr: {lr}\n"
            "  weight_decay: 0.0\ntrain:\n  output_dir: x\n")
        _final(folder, {"rougeL": 20.0 + lr * 1e5}, None)
    assert build_table(load_manifest(sweep_dir)).warnings == []
    resumed = runs[("barto", "mlsum", "3e-5")]
    (resumed / "config.until_step_17.yaml").write_bytes((resumed / "config.yaml").read_bytes())
    (resumed / "config.yaml").write_text((resumed / "config.yaml").read_text().replace(
        "weight_decay: 0.0", "weight_decay: 0.1").replace("output_dir: x", "output_dir: y"))
    warnings = build_table(load_manifest(sweep_dir)).warnings
    assert warnings == [
        "barto / mlsum: barto__mlsum__lr-3e-5 was resumed with other settings, so its scores "
        "are of neither setting alone: optim.weight_decay 0.0 -> 0.1 at step 17 (the earlier "
        "settings are kept in its config.until_step_N.yaml)",
        "barto / mlsum: its runs differ outside the sweep's grid, which their labels do not "
        "show: optim.weight_decay (barto__mlsum__lr-3e-5 0.1, barto__mlsum__lr-5e-5 0.0)"]
    # Collected as run folders, the differing key is in the labels; the resume still warned.
    table = build_table(load_runs([str(resumed), str(runs[("barto", "mlsum", "5e-5")])]))
    assert [w.split(":")[1].strip()[:24] for w in table.warnings] == ["barto__mlsum__lr-3e-5 wa"]
    # `slurm resume --nodes 2` splits the same step otherwise (grad_accum 2 -> 1 on twice the
    # ranks; a checkpoint refuses any other step size): the same run, no warning
    (resumed / "config.yaml").write_bytes((resumed / "config.until_step_17.yaml").read_bytes())
    (resumed / "config.until_step_17.yaml").write_text(
        (resumed / "config.yaml").read_text() + "  grad_accum: 2\n  batch_size: 1\n")
    (resumed / "config.yaml").write_text(
        (resumed / "config.yaml").read_text() + "  grad_accum: 1\n  batch_size: 1\n")
    assert not any("resumed with other settings" in warning
                   for warning in build_table(load_manifest(sweep_dir)).warnings)


def test_collect_refuses_a_plot_name_of_another_format(tmp_path, capsys):
    # --png out/g.jpg wrote PNG data under a .jpg name.
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("barto", "mlsum")], LR)
    _final(_runs(manifest)[("barto", "mlsum", "3e-5")], {"rougeL": 20.0}, {"rougeL": 19.0})
    assert slurm_main(["collect", str(sweep_dir), "--png", str(tmp_path / "g.jpg")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: argument --png: {tmp_path / 'g.jpg'}: the plot is written as PNG; give a name "
        "ending in .png")
    assert not (tmp_path / "g.jpg").exists() and not (sweep_dir / "results.md").exists()
    assert slurm_main(["collect", str(sweep_dir), "--png", str(tmp_path / "g.PNG")]) == 0
    assert (tmp_path / "g.PNG").read_bytes().startswith(PNG_SIGNATURE)


def test_collect_refuses_a_folder_for_a_results_file_by_its_flag(tmp_path, capsys):
    # --markdown DIR failed at the rename, as "could not write the results ([Errno 21] ...)",
    # naming no flag, and left a .tmp file beside the folder.
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("barto", "mlsum")], LR)
    _final(_runs(manifest)[("barto", "mlsum", "3e-5")], {"rougeL": 20.0}, {"rougeL": 19.0})
    folder = tmp_path / "out"
    folder.mkdir()
    assert slurm_main(["collect", str(sweep_dir), "--markdown", str(folder)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: argument --markdown: {folder} is a folder; give a file name (e.g. "
        f"{folder / 'results.md'})")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "sweep"]
    assert not (sweep_dir / "results.csv").exists()


def test_a_failed_rename_leaves_no_temporary_file(tmp_path):
    # The three files are renamed into place last; one that cannot be (a folder made there
    # after the check) left its temporary file and the ones after it.
    from seq2seq_es.slurm.results_table import write_results

    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("barto", "mlsum")], LR)
    _final(_runs(manifest)[("barto", "mlsum", "3e-5")], {"rougeL": 20.0}, {"rougeL": 19.0})
    table = build_table(load_runs([str(sweep_dir)]))
    (tmp_path / "r.csv").mkdir()
    with pytest.raises(OSError):
        write_results(table, tmp_path / "r.md", tmp_path / "r.csv", tmp_path / "r.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.md", "sweep"]


def test_a_run_whose_dev_score_is_nan_is_never_chosen(tmp_path):
    # A diverged run logs a NaN ROUGE; kept as a number, nothing compares above NaN, so the
    # first grid point's NaN run held the cell against a run that scored 30.
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("barto", "sqac")], LR)
    runs = _runs(manifest)
    _final(runs[("barto", "sqac", "3e-5")], {"rougeL": float("nan"), "loss": 9.1},
           {"rougeL": 1.0})
    _final(runs[("barto", "sqac", "5e-5")], {"rougeL": 30.0, "loss": 2.5}, {"rougeL": 29.0})
    table = build_table(load_manifest(sweep_dir))
    chosen = table.chosen[("barto", "sqac")]
    assert chosen.result.run.grid_point == {"optim.lr": "5e-5"}
    assert chosen.result.validation["rougeL"] == 30.0 and chosen.selected_by == "rougeL"
    # the NaN is dropped from the run's scores, its finite loss kept
    nan_run = run_result(next(r for r in manifest.runs if r.grid_point["optim.lr"] == "3e-5"))
    assert nan_run.validation == {"loss": 9.1}


def test_a_full_tie_on_the_main_metric_and_the_loss_goes_to_the_earlier_grid_point(tmp_path):
    # choose_run's documented last tie-break: with the loss tied too, the choice must not
    # depend on which equal run comes later (the table would change with the grid's order).
    sweep_dir = tmp_path / "sweep"
    manifest = _write_manifest(sweep_dir, [("barto", "sqac")], LR)
    runs = _runs(manifest)
    _final(runs[("barto", "sqac", "3e-5")], {"rougeL": 12.0, "loss": 3.0}, {"rougeL": 11.0})
    _final(runs[("barto", "sqac", "5e-5")], {"rougeL": 12.0, "loss": 3.0}, {"rougeL": 13.0})
    table = build_table(load_manifest(sweep_dir))
    chosen = table.chosen[("barto", "sqac")].result
    assert chosen.run.grid_point == {"optim.lr": "3e-5"} and chosen.test == {"rougeL": 11.0}


def test_the_csv_paper_cells_say_the_split_where_the_source_does():
    from seq2seq_es.slurm.results_table import paper_cells

    assert paper_cells("t5s", "bisect", "sari") == ["56.37", "", ""]  # split not stated
    assert paper_cells("t5s", "wmt13-es-en", "bleu") == ["", "29.75", ""]  # dev only
    assert paper_cells("t5s", "mlsum", "rouge2") == ["", "12.27", "11.56"]
    assert paper_cells("barto", "mlsum", "rouge1") == ["", "", ""]
