"""train.eval_generate false: validations compute the loss only (the Trainer's default without
predict_with_generate; a long-document run's beam search over the whole dev set at every epoch
can cost more than the epoch), the best checkpoint is chosen by it, and the kept weights are
still generated and scored on validation and test, so final_results.json reads as any run's."""

from __future__ import annotations

import json

import pytest

from engine_runs import base_args, demo_files, run
from seq2seq_es.config import compose
from seq2seq_es.errors import ConfigError


def test_a_generation_metric_without_generated_validations_is_refused():
    with pytest.raises(ConfigError) as error:
        compose("mlsum", "barto-tiny", overrides={"train.eval_generate": "false",
                                                  "train.best_metric": "rougeL"})
    assert error.value.key == "train.best_metric"
    assert "'rougeL' needs generated validations, and train.eval_generate is false" in \
        str(error.value)
    cfg = compose("mlsum", "barto-tiny", overrides={"train.eval_generate": "false",
                                                    "train.best_metric": "loss"})
    assert cfg.train.eval_generate is False


@pytest.mark.slow
def test_validations_compute_the_loss_and_the_kept_weights_are_scored_at_the_end(tmp_path):
    files = demo_files(tmp_path / "data", train_size=16)
    out = tmp_path / "run"
    proc = run("none", 1, base_args(files, out, steps=4, extra=[
        "--train.eval_generate", "false", "--train.eval_every", "1", "--train.eval_at_end",
        "true", "--data.test_file", files["validation"], "--train.log_every", "1000"]))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # the validations, then the kept weights' scoring (a record with the metrics)
    evals = {r["step"]: r for r in records if "eval/loss" in r and "eval/rougeL" not in r}
    assert sorted(evals) == [1, 2, 3, 4]
    assert all(set(k for k in r if k.startswith("eval/")) == {"eval/loss"}
               for r in evals.values())  # no generation, no metric, in any validation
    best = min(evals, key=lambda step: evals[step]["eval/loss"])

    results = json.loads((out / "final_results.json").read_text())
    assert (results["main_metric"], results["best_step"]) == ("loss", best)
    # the chosen weights scored on validation (same loss as when chosen) and on test
    assert results["validation"]["loss"] == pytest.approx(evals[best]["eval/loss"], rel=1e-6)
    assert {"rougeL", "rouge1"} <= set(results["validation"])
    assert {"loss", "rougeL"} <= set(results["test"])
    assert f"scoring step {best} on validation (train.eval_generate=false)" in proc.stdout
    # only the chosen step's predictions are written
    assert sorted(p.name for p in (out / "eval").iterdir()) == [f"step_{best:08d}"]
    # its validation scores are logged at its step, as its test scores are (they reached no
    # log or tracker before)
    [scored] = [r for r in records if "eval/rougeL" in r]
    assert scored["step"] == best
    validation = {k: v for k, v in results["validation"].items() if k != "loss"}
    assert {k[len("eval/"):]: v for k, v in scored.items() if k.startswith("eval/")} == \
        pytest.approx(validation)
    # the step's loss is its validation's, logged once (TensorBoard and W&B showed it twice)
    assert [r["step"] for r in records if "eval/loss" in r].count(best) == 1
    [tested] = [r for r in records if "test/rougeL" in r]
    assert tested["step"] == best and records.index(tested) > records.index(scored)


def test_seq2seq_es_config_says_the_loss_picks_checkpoints(capsys):
    from seq2seq_es.cli import main

    assert main(["config", "--task", "mlsum", "--model", "barto-tiny",
                 "--train.eval_generate", "false"]) == 0
    assert "best_metric: null  # loss (train.eval_generate false)" in capsys.readouterr().out
