"""The embedded demo learns: its final ROUGE-L is far above its step-0 ROUGE-L."""

import json
import subprocess
import sys

import pytest

from engine_runs import REPO, _env

pytestmark = pytest.mark.slow


def test_demo_learns_to_summarise(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "seq2seq_es", "demo", "--output-dir", str(out),
                           "--train.progress_bar", "false"], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["rougeL_end"] > summary["rougeL_start"] + 40
    assert "step 0" in proc.stdout and "rougeL" in proc.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # Step 0, every epoch end (2000 examples in steps of 16: 125 steps) and the end.
    assert [r["step"] for r in records if "eval/rougeL" in r] == [0, 125, 250, 375, 500, 600]
    lrs = {r["step"]: r["train/lr"] for r in records if "train/lr" in r}
    assert lrs[40] < lrs[60] > lrs[80] and lrs[60] == pytest.approx(2e-3)  # warmup: 60 steps
    assert (out / "final" / "model.safetensors").is_file()
    # The best validation checkpoint is scored on the demo's test split.
    results = json.loads((out / "final_results.json").read_text())
    assert results["main_metric"] == "rougeL" and results["best_step"] > 0
    assert results["test"]["rougeL"] > summary["rougeL_start"] + 40
    assert f"test@{results['best_step']}" in proc.stdout


def test_a_shorter_demo_keeps_a_tenth_of_its_steps_for_warmup(tmp_path):
    # --train.max_steps 20 was refused: the demo's warmup was a fixed 60 steps.
    out = tmp_path / "short"
    proc = subprocess.run([sys.executable, "-m", "seq2seq_es", "demo", "--output-dir", str(out),
                           "--train.max_steps", "20", "--train.log_every", "1",
                           "--train.export", "false"], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["train/lr"] for r in records if "train/lr" in r}
    # warmup: 2 of the 20 steps (half the peak after one), then down to the end
    assert (lrs[1], lrs[2]) == (pytest.approx(1e-3), pytest.approx(2e-3)) and lrs[20] < lrs[3]


def test_a_finished_demo_run_again_says_its_table_is_the_earlier_runs(tmp_path):
    # A second `demo` resumes the finished run (nothing to train) and printed "wall time 0.1 min"
    # under the earlier run's table, as if the demo had trained in seconds.
    out = tmp_path / "again"
    argv = [sys.executable, "-m", "seq2seq_es", "demo", "--output-dir", str(out),
            "--train.max_steps", "4", "--train.export", "false", "--train.progress_bar", "false"]
    first = subprocess.run(argv, cwd=REPO, env=_env(), capture_output=True, text=True,
                           timeout=900)
    assert first.returncode == 0 and "wall time" in first.stdout, first.stderr[-4000:]
    summary = (out / "demo_summary.json").read_text()
    again = subprocess.run(argv, cwd=REPO, env=_env(), capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "wall time" not in again.stdout and "trained earlier in" in again.stdout
    assert "--output-dir NEW trains the demo afresh" in again.stdout
    assert (out / "demo_summary.json").read_text() == summary  # the first run's, kept


def test_the_demo_data_is_rewritten_only_when_it_changes_and_then_whole(tmp_path):
    # A second `demo` on a folder where one trained rewrote its files in place before the lock
    # refused it; the training run could read a half-written file (a concurrency audit).
    import os

    from seq2seq_es.demo.synthetic import write_demo_dataset

    files = write_demo_dataset(tmp_path, train_size=8, validation_size=2)
    before = {split: os.stat(path) for split, path in files.items()}
    write_demo_dataset(tmp_path, train_size=8, validation_size=2)  # the same rows: untouched
    for split, path in files.items():
        after = os.stat(path)
        assert (after.st_ino, after.st_mtime_ns) == (before[split].st_ino,
                                                      before[split].st_mtime_ns)
    write_demo_dataset(tmp_path, train_size=9, validation_size=2)  # new rows: a new file
    assert os.stat(files["train"]).st_ino != before["train"].st_ino
    assert len(open(files["train"], encoding="utf-8").readlines()) == 9
    assert not list(tmp_path.glob(".*.tmp"))
