"""What `predict --input` reads, before any model is loaded: lines as `score` counts them."""

from __future__ import annotations

import json

import pytest

from seq2seq_es.engine.inference import InputError, read_sources
from seq2seq_es.tasks import get_task


def test_only_a_newline_ends_a_source(tmp_path):
    # U+2028 is what json.dumps(ensure_ascii=False) leaves raw in a string; str.splitlines()
    # broke the row (jsonl: "not valid JSON") and the text file (3 predictions for 2 lines).
    text = "Primera parte\u2028segunda parte.\x0cy más"
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"source": text}, ensure_ascii=False) + "\r\n"
                    + json.dumps({"source": "Otro."}) + "\r\n", encoding="utf-8")
    assert "\u2028" in rows.read_text(encoding="utf-8")
    assert read_sources(rows, None) == [text, "Otro."]
    lines = tmp_path / "lines.txt"
    lines.write_text(text + "\nOtro texto.\n", encoding="utf-8")
    assert read_sources(lines, None) == [text, "Otro texto."]


@pytest.mark.parametrize("name, content", [
    ("bom.txt", "Hola.\nAdiós.\n"),
    ("bom.jsonl", '{"source": "Hola."}\n{"source": "Adiós."}\n'),
])
def test_a_byte_order_mark_is_not_part_of_the_first_source(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + content.encode("utf-8"))
    assert read_sources(path, None) == ["Hola.", "Adiós."]


def test_a_dialogue_turn_row_is_told_what_predict_takes(tmp_path):
    path = tmp_path / "miam.jsonl"
    path.write_text(json.dumps({"Speaker": "A", "Utterance": "Hola.", "Dialogue_ID": "d1"}) + "\n",
                    encoding="utf-8")
    with pytest.raises(InputError) as error:
        read_sources(path, get_task("miam"))
    assert str(error.value).startswith(f"input file {path}, line 1: a miam data row holds one "
                                       "turn of a dialogue; predict takes one history a row")
    path.write_text(json.dumps({"source": "A: Hola.\nB: ¿Qué tal?"}) + "\n", encoding="utf-8")
    assert read_sources(path, get_task("miam")) == ["A: Hola.\nB: ¿Qué tal?"]


def test_keys_evaluate_and_predict_do_not_read_are_named():
    # `predict --optim.lr 5` ran without a word, and `evaluate --data.test_file FILE` scored
    # validation while the file was never read.
    from seq2seq_es.engine.inference import unread_by_inference

    given = {"optim.lr": "5", "train.max_steps": "9", "train.eval_batch_size": "4",
             "train.seed": "3", "data.test_file": "t.jsonl", "data.validation_file": "v.jsonl",
             "data.max_eval_samples": "5", "gen.num_beams": "2", "dist.zero_stage": "3"}
    assert unread_by_inference(given, "evaluate", "validation") == [
        "--optim.lr (training only)", "--train.max_steps (training only)",
        "--data.test_file (the validation split is scored)"]
    assert unread_by_inference(given, "evaluate", "test") == [
        "--optim.lr (training only)", "--train.max_steps (training only)",
        "--data.validation_file (the test split is scored)"]
    assert unread_by_inference(given, "predict") == [
        "--optim.lr (training only)", "--train.max_steps (training only)",
        "--data.test_file (predict reads --input)",
        "--data.validation_file (predict reads --input)",
        "--data.max_eval_samples (predict reads --input)"]


def test_a_training_only_key_is_no_other_scoring_setting():
    # `evaluate --optim.lr 5` into a folder of the same evaluation said it replaced one "with
    # other settings": the key is not read, so nothing scored differs.
    from seq2seq_es.engine.inference import scoring_settings

    assert scoring_settings({"optim.lr": "5", "train.epochs": "2", "train.seed": "3",
                             "gen.num_beams": "2", "dist.zero_stage": "3"}) == {
        "train.seed": "3", "gen.num_beams": "2"}
