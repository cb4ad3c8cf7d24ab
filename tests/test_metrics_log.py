"""metrics.jsonl: `seq2seq_es.metrics_log.read` keeps the last record per step, and the logged
`train/lr` is the rate of the logged step's own update (a real run with warmup)."""

from __future__ import annotations

import json

import pytest

from engine_runs import base_args, demo_files, run
from seq2seq_es import metrics_log
from seq2seq_es.engine import run_dir
from seq2seq_es.engine.optim import lr_factor
from seq2seq_es.errors import DataError
from seq2seq_es.slurm import monitor, results_table


def _write(path, records, tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail, encoding="utf-8")


def test_read_keeps_the_last_record_per_step(tmp_path):
    # Steps 1-4 logged with validation at 2 and 4; the run was resumed from its step-2
    # checkpoint after logging step 3, so steps 3 and 4 come again; a killed write at the end.
    path = tmp_path / "metrics.jsonl"
    _write(path, [{"step": 1, "train/loss": 4.0}, {"step": 2, "train/loss": 3.0},
                  {"step": 2, "eval/loss": 3.5, "eval/rougeL": 10.0},
                  {"step": 3, "train/loss": 2.9},
                  {"step": 3, "train/loss": 2.5}, {"step": 4, "train/loss": 2.0},
                  {"step": 4, "eval/loss": 2.2, "eval/rougeL": 12.0}], tail='{"step": 5, "tra')
    records = metrics_log.read(path)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[1] == {"step": 2, "train/loss": 3.0, "eval/loss": 3.5, "eval/rougeL": 10.0}
    assert records[2] == {"step": 3, "train/loss": 2.5}
    assert metrics_log.read(tmp_path) == records  # a run folder works too
    assert [r["step"] for r in metrics_log.read(path, merge_steps=False)] == [1, 2, 2, 3, 3, 4, 4]
    assert sorted(metrics_log.by_step(path, "eval/loss")) == [2, 4]
    assert metrics_log.by_step(path, "train/loss")[3]["train/loss"] == 2.5
    # The engine's and slurm's names (status's and collect's) are this reader.
    assert run_dir.read_metrics is metrics_log.read is monitor.read_metrics
    assert results_table.read_metrics is metrics_log.read
    assert metrics_log.read(tmp_path / "missing.jsonl") == []


def test_a_resume_drops_the_abandoned_segments_later_steps(tmp_path):
    # Killed after logging step 26 (checkpoint 24), resumed logging every 5 steps: step 26 is
    # never logged again, and its record of the abandoned segment was read as the run's.
    path = tmp_path / "metrics.jsonl"
    _write(path, [{"step": 24, "train/loss": 6.4}, {"step": 24, "eval/loss": 6.9},
                  {"step": 25, "train/loss": 6.3}, {"step": 26, "train/loss": 6.33},
                  metrics_log.resume_marker(24, 1.0), {"step": 25, "train/loss": 6.2},
                  {"step": 30, "train/loss": 6.1}])
    records = metrics_log.read(path)
    assert records == [{"step": 24, "train/loss": 6.4, "eval/loss": 6.9},
                       {"step": 25, "train/loss": 6.2}, {"step": 30, "train/loss": 6.1}]
    # slurm status: the step and loss the run is at, not the killed segment's
    assert monitor.latest_metrics(records)[0] == 30
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(path.read_text().splitlines(keepends=True)[:6]))
    assert monitor.latest_metrics(metrics_log.read(cut)) == (25, {"train/loss": 6.2,
                                                                  "eval/loss": 6.9})
    # the raw lines keep everything, the marker with its step
    raw = metrics_log.read(path, merge_steps=False)
    assert len(raw) == 7 and raw[4]["step"] == 24 and raw[4]["resumed"] is True


def test_a_resumed_run_cuts_a_half_written_line_before_appending(tmp_path):
    # Killed mid-write, then resumed: the first record was glued onto the half line, one broken
    # line in the middle, and every reader of the file failed.
    from seq2seq_es.config import compose

    _write(tmp_path / "metrics.jsonl", [{"step": 1, "train/loss": 4.0}],
           tail='{"step": 2, "train/lo')
    cfg = compose("mlsum", "barto-tiny", overrides={"train.report_to": "none",
                                                    "train.output_dir": str(tmp_path)})
    log = run_dir.RunLog(tmp_path, cfg, is_main=True, total_steps=4, start_step=1, resumed=True)
    log.log(2, {"train/loss": 3.0})
    log.close()
    assert metrics_log.read(tmp_path) == [{"step": 1, "train/loss": 4.0},
                                          {"step": 2, "train/loss": 3.0,
                                           "time": metrics_log.read(tmp_path)[1]["time"]}]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[1])["resumed"] is True and len(lines) == 3
    path = tmp_path / "one.jsonl"  # no whole line at all
    path.write_text('{"step": 1')
    metrics_log.cut_partial_line(path)
    assert path.read_text() == ""


def test_read_names_a_broken_line_in_the_middle(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2,\n{"step": 3}\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        metrics_log.read(path)
    # a line, as an editor numbers it (it was given as the 0-based data "row 2")
    assert info.value.line == 2 and info.value.row is None and info.value.file == str(path)
    assert str(info.value).startswith(f"file {path}, line 2: not valid JSON")


def test_a_record_whose_step_is_a_boolean_is_not_merged_into_step_1(tmp_path):
    # True == 1 in Python: a malformed {"step": true} line overwrote step 1's logged loss.
    path = tmp_path / "metrics.jsonl"
    _write(path, [{"step": 1, "train/loss": 4.0}, {"step": True, "train/loss": 9.0},
                  {"step": 2, "train/loss": 3.0}])
    records = metrics_log.read(path)
    assert records == [{"step": 1, "train/loss": 4.0}, {"step": True, "train/loss": 9.0},
                       {"step": 2, "train/loss": 3.0}]
    # by_step (the logged losses by step) left it in, where it replaced step 1's record
    assert metrics_log.by_step(path, "train/loss") == {1: {"step": 1, "train/loss": 4.0},
                                                       2: {"step": 2, "train/loss": 3.0}}


@pytest.mark.slow
def test_logged_lr_is_the_rate_of_the_logged_step(tmp_path):
    """Linear schedule, 2 warmup steps, 5 steps, peak 1e-3: the update of step k (1-based) uses
    lr * lr_factor(k - 1): 1/2, 1 (warmup), then 1, 2/3, 1/3 of the peak (linear decay over the
    3 steps after warmup). Read after the scheduler advanced, it was the next step's rate
    (1, 1, 2/3, 1/3, 0): step 1 would not show the first warmup rate, and the last step 0."""
    files = demo_files(tmp_path / "data", train_size=16)
    out = tmp_path / "run"
    steps, warmup, peak = 5, 2, 1e-3
    run("none", 1, base_args(files, out, steps=steps, extra=[
        "--optim.warmup_steps", str(warmup), "--optim.schedule", "linear",
        "--optim.lr", str(peak), "--train.save_every_min", "0", "--train.eval_test", "false"]))
    logged = {step: record["train/lr"]
              for step, record in metrics_log.by_step(out, "train/loss").items()}
    assert sorted(logged) == list(range(1, steps + 1))
    expected = {k: peak * lr_factor(k - 1, steps, warmup, "linear") for k in logged}
    assert logged == pytest.approx(expected, rel=1e-12)
    assert [logged[k] / peak for k in sorted(logged)] == pytest.approx([1 / 2, 1, 1, 2 / 3, 1 / 3])
