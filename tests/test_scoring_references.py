"""Scoring models whose tokenizer cannot give text back (WordPiece: BETO, mBERT): references go
through the same encode-decode path as predictions; other tokenizers' references stay as written."""

from __future__ import annotations

import pytest

from seq2seq_es.config import RunConfig
from seq2seq_es.engine.builders import get_model
from seq2seq_es.engine.evaluation import decode_is_lossy, scoring_references
from seq2seq_es.metrics import compute_metrics
from seq2seq_es.tasks import get_task

REFERENCE = "¿Qué hora es? El niño (5 años) dijo: «sí»; pagó 3,5 euros."


def _tokenizer(name: str):
    cfg = RunConfig()
    cfg.model.name = name
    return get_model(cfg)[1]


@pytest.mark.parametrize("name", ["beto2beto-tiny", "mbert2mbert-tiny"])
def test_a_perfect_wordpiece_prediction_scores_full_marks(name):
    tokenizer = _tokenizer(name)
    task = get_task("bisect")
    assert decode_is_lossy(tokenizer)
    # What the model emits when it generates the reference token for token.
    prediction = tokenizer.decode(tokenizer(text_target=REFERENCE).input_ids,
                                  skip_special_tokens=True)
    assert prediction != REFERENCE                     # "¿ Qué", "( 5 años )", "3, 5"
    raw = compute_metrics(task.metrics, [prediction], [[REFERENCE]],
                          sources=["x"], options=task.metric_options)
    references = scoring_references([[REFERENCE]], tokenizer, task)
    fair = compute_metrics(task.metrics, [prediction], references, sources=["x"],
                           options=task.metric_options)
    assert raw["exact_match"] == 0.0 and raw["bleu"] < 90
    assert fair["exact_match"] == 100.0 and fair["bleu"] == pytest.approx(100.0)
    # A split-and-rephrase marker comes back as the marker, on both sides.
    marked = scoring_references([["Uno. <SPLIT> Dos."]], tokenizer, task)[0][0]
    assert "<SPLIT>" in marked


@pytest.mark.parametrize("name", ["barto-tiny", "t5s-tiny", "roberta2roberta-tiny"])
def test_references_of_lossless_tokenizers_stay_as_written(name):
    tokenizer = _tokenizer(name)
    assert not decode_is_lossy(tokenizer)
    references = [[REFERENCE], [" otra ", "respuesta"]]
    assert scoring_references(references, tokenizer, get_task("sqac")) is references



@pytest.mark.parametrize("name, rewritten", [("beto2beto-tiny", True), ("barto-tiny", False)])
def test_a_run_scores_wordpiece_models_against_round_tripped_references(one_rank, tmp_path, capsys,
                                                                        name,
                                                                        rewritten):
    # The validation of a real run: predictions.jsonl names the texts the scores used where they
    # are not the references themselves.
    import json

    from seq2seq_es.engine.trainer import Trainer

    rows = [{"text": f"Artículo {i}: el niño de {i} años preguntó la hora en la plaza mayor.",
             "summary": f"¿Qué hora es? El niño ({i} años) dijo: «sí»; pagó {i},5 euros."}
            for i in range(8)]
    files = {}
    for split, part in (("train", rows[:6]), ("validation", rows[6:])):
        files[split] = tmp_path / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part),
                                encoding="utf-8")
    cfg = RunConfig()
    cfg.model.name, cfg.data.task = name, "mlsum"
    cfg.data.train_file, cfg.data.validation_file = str(files["train"]), str(files["validation"])
    cfg.data.max_source_length, cfg.data.max_target_length = 64, 64
    cfg.train.output_dir, cfg.train.max_steps, cfg.train.batch_size = str(tmp_path / "run"), 2, 2
    cfg.train.precision, cfg.train.eval_per_epoch, cfg.train.export = "fp32", False, False
    cfg.train.report_to, cfg.train.progress_bar, cfg.optim.warmup_steps = "none", False, 1
    cfg.gen.num_beams, cfg.gen.max_new_tokens, cfg.gen.min_new_tokens = 1, 4, 0
    with Trainer(cfg) as trainer:
        trainer.train()
    records = [json.loads(line) for line in
               (tmp_path / "run" / "eval" / "step_00000002" / "predictions.jsonl").open()]
    assert len(records) == 2
    if rewritten:
        assert all(r["scored_references"][0].startswith("¿ Qué") for r in records), records
        assert all(r["reference"].startswith("¿Qué") for r in records)
    else:
        assert not any("scored_references" in r for r in records)
    # The step folder's line files rescore to the run's own numbers (like with like).
    from seq2seq_es.cli import main as cli_main

    step = tmp_path / "run" / "eval" / "step_00000002"
    scored = [json.loads(line) for line in (step / "scored_references.jsonl").open()]
    assert scored == [r.get("scored_references", [r["reference"]]) for r in records]
    assert len((step / "sources.txt").read_text().splitlines()) == 2
    logged = json.loads((step / "scores.json").read_text())
    capsys.readouterr()
    assert cli_main(["score", "--metric", "rouge", "--predictions", str(step / "predictions.txt"),
                     "--references", str(step / "scored_references.jsonl")]) == 0
    rescored = json.loads(capsys.readouterr().out)
    for key in ("rouge1", "rouge2", "rougeL"):
        assert rescored[key] == pytest.approx(logged[f"eval/{key}"], abs=1e-9), key
