"""Guards from the mutation audit of seq2seq_es/engine/evaluation.py and the best-step choice:
each test names the bug it catches, and checks the package against an expectation computed
plainly here (the example order of the data, the metrics of predictions.jsonl's own rows
computed with seq2seq_es.metrics, a loss summed one example at a time). All run in one process:
a rank's padding batches and a rank's dealing order are reproduced by replacing
`evaluation.shard_batches`, as the ranks' gather would hand them over.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine_runs import demo_files
from test_guards_engine import _eval_cfg
from seq2seq_es.engine import evaluation as E
from seq2seq_es.engine.distributed import DistEnv

ONE = DistEnv(0, 1, 0, "127.0.0.1", 0, "none")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from seq2seq_es.engine.builders import (get_collator, get_generation_config, get_model,
                                            get_split)
    from seq2seq_es.tasks import get_task

    folder = tmp_path_factory.mktemp("eval_mut")
    files = demo_files(folder / "data", train_size=4)  # validation: 5 examples
    cfg = _eval_cfg(files, folder, max_new_tokens=8)
    torch.manual_seed(0)
    model, tokenizer, spec = get_model(cfg)
    task = get_task("mlsum")
    data = get_split(cfg, task, tokenizer, model, "validation", None, lambda message: None)
    kwargs = dict(tokenized=data.tokenized, examples=data.examples,
                  collator=get_collator(cfg, spec, tokenizer, model), tokenizer=tokenizer,
                  generation_config=get_generation_config(cfg, spec, tokenizer),
                  task=task, env=ONE, zero_stage=0, bf16=False, step=0, out_dir=None)
    return model, kwargs


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


def _plain_loss(model, kwargs) -> float:
    from seq2seq_es.engine.loss import token_ce_sum
    ce, tokens = 0.0, 0
    model.eval()
    with torch.no_grad():
        for row in kwargs["tokenized"]:
            batch = kwargs["collator"]([row])
            labels = batch.pop("labels")
            ce += token_ce_sum(model(**batch).logits, labels).item()
            tokens += int((labels != -100).sum())
    return ce / tokens


def _source_as_prediction(tokenizer):
    """A generate_batch whose prediction for each example is the start of its own source (the
    tiny untrained model predicts "" for all): a prediction in the wrong row shows."""
    def fake(model, batch, idx, **_):
        texts = tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
        return [(i, " ".join(t.split()[:6])) for i, t in zip(idx, texts) if i >= 0]
    return fake


def _expected_predictions(kwargs) -> list[str]:
    return [" ".join(t.split()[:6]) for t in kwargs["tokenizer"].batch_decode(
        [r["input_ids"] for r in kwargs["tokenized"]], skip_special_tokens=True)]


def _dealt(batches):
    """A shard_batches that hands out `batches` (what a rank of a sharded run gets)."""
    return lambda order, env, batch_size: [list(b) for b in batches]


def test_padding_batches_count_no_tokens_and_no_predictions(setup, tmp_path, monkeypatch):
    # bugs: the -1 padding slot's labels counted in the loss; its prediction kept (counted twice)
    model, kwargs = setup
    expected_loss = _plain_loss(model, kwargs)
    clean = E.evaluate(model, **kwargs, batch_size=2, predictions_dir=tmp_path / "clean")
    # rank 1 of 2 with 5 examples in batches of 2 pads with [-1]; here padding inside a batch too
    monkeypatch.setattr(E, "shard_batches", _dealt([[0, 1], [2, -1], [3, 4], [-1]]))
    padded = E.evaluate(model, **kwargs, batch_size=2, predictions_dir=tmp_path / "padded")
    assert padded["eval/loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert [r["prediction"] for r in _rows(tmp_path / "padded")] == \
        [r["prediction"] for r in _rows(tmp_path / "clean")]
    assert padded == pytest.approx(clean, rel=1e-5)


def test_generate_batch_drops_the_padding_slots(setup):
    # bug: generate_batch returns (-1, text) for a padding slot (an example predicted twice)
    model, kwargs = setup
    idx = [3, -1]
    batch = kwargs["collator"](E.batch_features(kwargs["tokenized"], idx))
    model.eval()
    with torch.no_grad():
        got = E.generate_batch(model, batch, idx, generation_config=kwargs["generation_config"],
                               tokenizer=kwargs["tokenizer"], task=kwargs["task"],
                               synced_gpus=False, autocast=torch.autocast("cpu", enabled=False))
    assert [i for i, _ in got] == [3]


def test_predictions_are_paired_with_their_own_examples_whatever_the_batch_order(
        setup, tmp_path, monkeypatch):
    # bug: predictions taken in the order the batches ran (a rank's dealing), not example order
    model, kwargs = setup
    monkeypatch.setattr(E, "generate_batch", _source_as_prediction(kwargs["tokenizer"]))
    clean = E.evaluate(model, **kwargs, batch_size=2, predictions_dir=tmp_path / "clean")
    monkeypatch.setattr(E, "shard_batches", _dealt([[4], [2, 3], [0, 1]]))
    shuffled = E.evaluate(model, **kwargs, batch_size=2, predictions_dir=tmp_path / "shuffled")
    rows, clean_rows = _rows(tmp_path / "shuffled"), _rows(tmp_path / "clean")
    assert len(set(_expected_predictions(kwargs))) == 5  # else the order could not show
    assert [r["prediction"] for r in rows] == _expected_predictions(kwargs)
    assert [r["prediction"] for r in clean_rows] == _expected_predictions(kwargs)
    examples = kwargs["examples"]
    assert [r["source"] for r in rows] == list(examples["source"])
    assert [r["reference"] for r in rows] == list(examples["target"])
    assert shuffled == pytest.approx(clean, rel=1e-6)


def test_scores_are_the_metrics_of_the_written_predictions_and_references(setup, tmp_path,
                                                                          monkeypatch):
    # bugs: metrics computed on predictions in another order / against other references than
    # those predictions.jsonl pairs them with
    from seq2seq_es.metrics import compute_metrics

    model, kwargs = setup
    monkeypatch.setattr(E, "generate_batch", _source_as_prediction(kwargs["tokenizer"]))
    monkeypatch.setattr(E, "shard_batches", _dealt([[3, 4], [0, 1], [2], [-1]]))
    results = E.evaluate(model, **kwargs, batch_size=2, predictions_dir=tmp_path / "p",
                         prefix="test")
    rows = _rows(tmp_path / "p")
    assert [r["prediction"] for r in rows] == _expected_predictions(kwargs)
    assert [r["reference"] for r in rows] == list(kwargs["examples"]["target"])
    refs = [r.get("scored_references", [r["reference"]]) for r in rows]
    expected = compute_metrics(kwargs["task"].metrics, [r["prediction"] for r in rows], refs,
                               options=kwargs["task"].metric_options)
    assert set(results) == {"test/loss", *(f"test/{k}" for k in expected)}
    assert 0 < expected["rougeL"] < 100  # scores that can tell pairings apart
    for key, value in expected.items():
        assert results[f"test/{key}"] == pytest.approx(value, abs=1e-9), key
    assert json.loads((tmp_path / "p" / "scores.json").read_text()) == results


def test_generate_texts_batches_longest_first_and_returns_example_order(setup, monkeypatch):
    # bugs: predict batched shortest-first or unsorted (more padding), or its output left in
    # the sorted order
    model, kwargs = setup
    seen = []
    collator = kwargs["collator"]

    def spy(rows):
        seen.append([len(r["input_ids"]) for r in rows])
        return collator(rows)
    common = dict(features=kwargs["tokenized"], tokenizer=kwargs["tokenizer"],
                  generation_config=kwargs["generation_config"], task=kwargs["task"], env=ONE,
                  batch_size=1, zero_stage=0, bf16=False)
    texts = E.generate_texts(model, collator=spy, **common)
    lengths = [len(r["input_ids"]) for r in kwargs["tokenized"]]
    assert [b[0] for b in seen] == sorted(lengths, reverse=True)
    plain = E.generate_texts(model, collator=collator, sort_by_length=False, **common)
    assert texts == plain


# -- the best step and early stopping (trainer.is_better / track_best / note_validation) -----------

def test_is_better_direction_ties_and_nan():
    # bugs: loss compared upward / metrics downward; a tie (metric or loss) taken as better;
    # a metric tie won without a recorded loss; NaN winning
    from seq2seq_es.engine.trainer import is_better

    assert is_better(1.0, {"value": 2.0}, "loss") and not is_better(2.0, {"value": 1.0}, "loss")
    assert not is_better(2.0, {"value": 2.0}, "loss")
    assert is_better(3.0, {"value": 2.0}, "rougeL") and not is_better(1.0, {"value": 2.0}, "rougeL")
    assert not is_better(2.0, {"value": 2.0}, "rougeL")
    tie = {"value": 0.0, "validation": {"loss": 5.0}}
    assert is_better(0.0, tie, "rougeL", loss=4.9)
    assert not is_better(0.0, tie, "rougeL", loss=5.0)  # equal on both: the earlier stays
    assert not is_better(0.0, {"value": 0.0}, "rougeL", loss=1.0)  # no loss to break the tie
    assert is_better(0.5, tie, "rougeL", loss=9.0)  # a higher metric wins whatever the loss
    assert not is_better(float("nan"), {"value": 2.0}, "loss")
    assert not is_better(float("nan"), {"value": 2.0}, "rougeL")
    assert not is_better(float("nan"), None, "rougeL")  # a NaN first validation is no best


def _tracker(metric: str, patience: int):
    from types import SimpleNamespace

    from seq2seq_es.engine.trainer import Trainer

    t = SimpleNamespace(best_metric=metric, last_eval={},
                        state=SimpleNamespace(best=None, evals_without_best=0),
                        cfg=SimpleNamespace(train=SimpleNamespace(early_stopping_patience=patience)))
    t.track_best = lambda step, results: Trainer.track_best(t, step, results)
    validate = lambda step, results: Trainer.note_validation(t, step, results)  # noqa: E731
    stopped = lambda: Trainer.stopped_early.fget(t)  # noqa: E731
    return t, validate, stopped


def test_the_best_step_is_chosen_by_the_main_metric_with_the_loss_breaking_ties():
    # bugs: the tie on rougeL not broken by the lower loss; the loss stored as the best value
    t, validate, stopped = _tracker("rougeL", patience=2)
    runs = {1: (0.0, 6.0), 2: (0.0, 5.0), 3: (10.0, 5.5), 4: (10.0, 5.5), 5: (9.0, 4.0)}
    chosen = [step for step, (rouge, loss) in runs.items()
              if validate(step, {"eval/rougeL": rouge, "eval/loss": loss})]
    assert chosen == [1, 2, 3]
    assert t.state.best["step"] == 3 and t.state.best["value"] == 10.0
    assert t.state.best["validation"] == {"rougeL": 10.0, "loss": 5.5}
    assert stopped()  # steps 4 and 5 brought no new best: patience 2 ran out


def test_early_stopping_counts_validations_since_the_last_best():
    # bugs: the count not reset by a new best; stopping one validation late (> patience)
    t, validate, stopped = _tracker("loss", patience=2)
    for step, loss in enumerate([5.0, 5.5, 4.0, 4.5], start=1):
        validate(step, {"eval/loss": loss})
        assert not stopped(), step
    validate(5, {"eval/loss": 4.0})  # a tie is no new best: the second in a row
    assert t.state.evals_without_best == 2 and stopped() and t.state.best["step"] == 3


def test_evaluation_leaves_the_training_rng_and_mode_as_it_found_them(setup, monkeypatch):
    # bug: the CPU RNG state not restored (when a validation runs changes the training's draws)
    model, kwargs = setup
    fake = _source_as_prediction(kwargs["tokenizer"])

    def drawing(*args, **kw):  # a generation that draws from the global RNG
        torch.rand(3)
        return fake(*args, **kw)
    monkeypatch.setattr(E, "generate_batch", drawing)
    model.train()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    E.evaluate(model, **kwargs, batch_size=2)
    assert torch.equal(torch.get_rng_state(), before) and model.training
    model.eval()
