"""Every reference (and SARI's source) goes through the encode-decode path a prediction takes:
WordPiece (BETO, mBERT) spaces punctuation, T5S's NFKC normaliser rewrites "1º"; byte-level BPE
gives the text back. predictions.jsonl records what was scored, and rescores to the run's
numbers."""

from __future__ import annotations

import pytest

from seq2seq_es.config import RunConfig
from seq2seq_es.engine.builders import get_model
from seq2seq_es.engine.evaluation import (_write_predictions, round_trip, scoring_references,
                                          scoring_sources)
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


@pytest.mark.parametrize("name", ["barto-tiny", "roberta2roberta-tiny"])
def test_references_of_byte_level_tokenizers_come_back_as_written(name):
    tokenizer = _tokenizer(name)
    references = [[REFERENCE], ["otra", "respuesta\ncon dos líneas"], "nº 1º … ½"]
    assert scoring_references(references, tokenizer, get_task("sqac")) == references


def test_a_perfect_t5s_prediction_scores_full_marks_against_nfkc_forms():
    # T5S's SentencePiece normaliser (NFKC) writes "nº 1º 2ª …" as "no 1o 2a ...": its best
    # output scored ROUGE-1 76.6, BLEU 29, exact match 0 against the references as written.
    tokenizer = _tokenizer("t5s-tiny")
    task = get_task("sqac")
    reference = "El nº 1º y la 2ª… llegaron"
    prediction = tokenizer.decode(tokenizer(text_target=reference).input_ids,
                                  skip_special_tokens=True)
    assert prediction == "El no 1o y la 2a... llegaron"
    raw = compute_metrics(["exact_match", "bleu"], [prediction], [[reference]])
    scored = scoring_references([[reference, "otra"]], tokenizer, task)
    assert scored == [[prediction, "otra"]]
    fair = compute_metrics(["exact_match", "bleu"], [prediction], scored)
    assert raw["exact_match"] == 0.0 and raw["bleu"] < 50
    assert fair["exact_match"] == 100.0 and fair["bleu"] == pytest.approx(100.0)


def test_sari_sources_take_the_round_trip_and_only_sari_reads_them():
    tokenizer = _tokenizer("beto2beto-tiny")
    assert scoring_sources(["¿Sabías que (5) es 3,5?"], tokenizer, get_task("bisect")) == \
        round_trip(["¿Sabías que (5) es 3,5?"], tokenizer, get_task("bisect"))
    assert scoring_sources(["¿Sabías que (5) es 3,5?"], tokenizer,
                           get_task("bisect"))[0].startswith("¿ Sab")
    assert scoring_sources(["¿Sabías?"], tokenizer, get_task("mlsum")) is None


def test_predictions_jsonl_rescores_every_answer_newlines_and_sources(tmp_path, capsys):
    """`score` on predictions.jsonl alone gives the scores back: a QA row's other answers (the
    file held only the first: EM 0 / F1 58 on rescoring where the run had 100), newlines that
    the .txt files flatten (ROUGE-Lsum 95 in the run, 48 from predictions.txt), and SARI's
    scored sources."""
    import json

    import datasets

    from seq2seq_es.cli import main as cli_main

    qa = datasets.Dataset.from_list([
        {"source": "pregunta: ¿quién? contexto: Ana vino.", "target": "Ana",
         "references": ["Ana", "la señora Ana"]},
        {"source": "pregunta: ¿dónde? contexto: en Lima.", "target": "Lima",
         "references": ["Lima"]}])
    predictions = ["la señora Ana", "Lima"]
    task = get_task("sqac")
    scores = compute_metrics(task.metrics, predictions, list(qa["references"]),
                             options=task.metric_options)
    _write_predictions(tmp_path / "qa", qa, predictions, scores, list(qa["references"]), None)
    rows = [json.loads(line) for line in (tmp_path / "qa" / "predictions.jsonl").open()]
    assert rows[0]["scored_references"] == ["Ana", "la señora Ana"]
    assert "scored_references" not in rows[1]
    jsonl = str(tmp_path / "qa" / "predictions.jsonl")
    capsys.readouterr()
    assert cli_main(["score", "--task", "sqac", "--predictions", jsonl, "--references",
                     jsonl]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(scores)

    reference = "El gobierno aprobó la ley y la oposición votó en contra."
    summaries = datasets.Dataset.from_list([{"source": "x", "target": reference,
                                             "references": [reference]}])
    predictions = ["la oposición votó en contra\nel gobierno aprobó la ley"]
    task = get_task("mlsum")
    scores = compute_metrics(task.metrics, predictions, [[reference]],
                             options=task.metric_options)
    _write_predictions(tmp_path / "sum", summaries, predictions, scores, [[reference]], None)
    jsonl = str(tmp_path / "sum" / "predictions.jsonl")
    assert cli_main(["score", "--task", "mlsum", "--predictions", jsonl, "--references",
                     jsonl]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(scores)
    # the line files flatten newlines: ROUGE-Lsum, which splits at them, differs there
    assert cli_main(["score", "--task", "mlsum", "--predictions",
                     str(tmp_path / "sum" / "predictions.txt"), "--references", jsonl]) == 0
    flattened = json.loads(capsys.readouterr().out)
    assert flattened["rougeLsum"] < scores["rougeLsum"] - 10

    bisect = datasets.Dataset.from_list([
        {"source": "¿Sabías que vino y se fue?", "target": "¿Sabías que vino? <SPLIT> Se fue.",
         "references": ["¿Sabías que vino? <SPLIT> Se fue."]}])
    predictions = ["¿ Sabías que vino? <SPLIT> Se fue."]
    scored_sources = ["¿ Sabías que vino y se fue?"]
    task = get_task("bisect")
    for mode in ("spanish", "paper"):
        scores = compute_metrics(task.metrics, predictions, [["¿ Sabías que vino? <SPLIT> Se "
                                                              "fue."]], sources=scored_sources,
                                 mode=mode, options=task.metric_options)
        _write_predictions(tmp_path / "bisect", bisect, predictions, scores,
                           [["¿ Sabías que vino? <SPLIT> Se fue."]], scored_sources)
        row = json.loads((tmp_path / "bisect" / "predictions.jsonl").read_text())
        assert row["scored_source"] == scored_sources[0]
        assert (tmp_path / "bisect" / "sources.txt").read_text() == scored_sources[0] + "\n"
        jsonl = str(tmp_path / "bisect" / "predictions.jsonl")
        assert cli_main(["score", "--task", "bisect", "--mode", mode, "--predictions", jsonl,
                         "--references", jsonl, "--sources", jsonl]) == 0
        assert json.loads(capsys.readouterr().out) == pytest.approx(scores), mode


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
    step = tmp_path / "run" / "eval" / "step_00000002"
    # references.txt holds the targets as scored (the paper's QA ROUGE rescores the first
    # answer from it, as its scripts decoded the labels)
    targets = (step / "references.txt").read_text(encoding="utf-8").splitlines()
    if rewritten:
        assert all(r["scored_references"][0].startswith("¿ Qué") for r in records), records
        assert all(r["reference"].startswith("¿Qué") for r in records)
        assert targets == [r["scored_references"][0] for r in records]
    else:
        assert not any("scored_references" in r for r in records)
        assert targets == [r["reference"] for r in records]
    # The step folder's line files rescore to the run's own numbers (like with like).
    from seq2seq_es.cli import main as cli_main

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


def test_a_prediction_is_cleaned_into_composed_unicode_and_its_split_markers():
    # Written as decoded, an NFD "canción" in predictions.jsonl and predict's output differed
    # byte for byte from the (NFC) references any other tool compares them with.
    from seq2seq_es.engine.evaluation import clean_prediction

    decomposed = " La cancio\u0301n gano\u0301. "
    assert clean_prediction(None, decomposed) == "La canción ganó."
    assert clean_prediction(get_task("mlsum"), "Uno. _SPLIT_ Dos.") == "Uno. _SPLIT_ Dos."
    assert clean_prediction(get_task("bisect"), "Uno. _SPLIT_ Dos. < SPLIT > Tre\u0301s.") \
        == "Uno. <SPLIT> Dos. <SPLIT> Trés."
