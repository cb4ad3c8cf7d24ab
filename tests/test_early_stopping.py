"""train.early_stopping_patience: training ends after that many validations in a row without a
new best, the end as usual (best checkpoint, test scores, final/, DONE); the count is kept in
the checkpoints, so an extended run stops where an uninterrupted one would, and a run that
stopped early is finished (resumed, it trains nothing)."""

from __future__ import annotations

import json

import pytest

from engine_runs import base_args, demo_files, run, step_losses

pytestmark = pytest.mark.slow

# A learning rate that moves no fp32 weight (w - 1e-30 * update == w): every validation after
# the first ties the best (same metric, same loss), which is no new best.
FROZEN = ["--optim.lr", "1e-30", "--optim.weight_decay", "0", "--train.eval_every", "1",
          "--train.early_stopping_patience", "2", "--train.eval_at_end", "true"]
RESUME = ["--train.resume", "auto"]


def _evals(out):
    return [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if "eval/loss" in r]


def test_training_ends_after_patience_validations_without_a_new_best(tmp_path):
    files = demo_files(tmp_path / "data", train_size=16)
    out = tmp_path / "run"
    proc = run("none", 1, base_args(files, out, steps=8, extra=FROZEN + ["--train.log_every",
                                                                         "1000"]))
    assert "early stop at step 3: 2 validations in a row without a new best rougeL" in proc.stdout
    assert sorted(step_losses(out)) == [1, 3]  # the last interval's loss is logged too
    assert _evals(out) == [1, 2, 3]  # step 3's validation is not run again at the end
    results = json.loads((out / "final_results.json").read_text())
    assert (results["steps"], results["best_step"], results["stopped_early"]) == (3, 1, True)
    assert json.loads((out / "DONE").read_text())["step"] == 3 and (out / "final").is_dir()
    # finished: run again, it trains nothing
    again = run("none", 1, base_args(files, out, steps=8, extra=FROZEN + RESUME))
    assert ("finished at step 3 (DONE): nothing to train; its early stopping ran out (2 "
            "validations without a new best): raise train.early_stopping_patience") in again.stdout
    assert _evals(out) == [1, 2, 3]


def test_an_extended_run_stops_where_an_uninterrupted_one_would(tmp_path):
    files = demo_files(tmp_path / "data", train_size=16)
    out = tmp_path / "run"
    run("none", 1, base_args(files, out, steps=2, extra=FROZEN))  # one validation without
    assert json.loads((out / "final_results.json").read_text()).get("stopped_early") is None
    proc = run("none", 1, base_args(files, out, steps=8, extra=FROZEN + RESUME))
    assert "early stop at step 3" in proc.stdout and _evals(out) == [1, 2, 3]
