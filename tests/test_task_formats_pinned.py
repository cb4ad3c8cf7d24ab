"""What each task reads and how it is scored, pinned where a mutation audit of the tasks
(2026-12-05) found a plausible slip that every test let through: answers given as one string,
references as one string or with blank items, Unicode forms, the split marker without a task,
repeated answers, each kind's metrics and main metric, and the paper's per-model epochs."""

from __future__ import annotations

import json

import pytest

from seq2seq_es.tasks import TASKS, get_task, load_examples
from seq2seq_es.tasks.formatting import PairFormatter, QAFormatter, clean_prediction


def _load(tmp_path, task, row, split="test"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{task}.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    examples, _ = load_examples(task, split, data_files={split: str(path)},
                                cache_dir=str(tmp_path / "cache"))
    return examples


def test_an_answer_given_as_one_string_is_the_whole_answer(tmp_path):
    examples = _load(tmp_path, "sqac", {
        "id": "q1", "title": "t", "context": "Nació en 1898 en Granada.",
        "question": "¿Cuándo nació?", "answers": {"text": "1898", "answer_start": 9}})
    assert (examples["target"], examples["references"]) == (["1898"], [["1898"]])


def test_references_given_as_one_string_or_with_blank_items(tmp_path):
    row = {"gem_id": "es-1", "source": "Texto largo.", "target": "Resumen."}
    as_text = _load(tmp_path / "text", "wikilingua", {**row, "references": "Otro resumen."})
    assert as_text["references"] == [["Otro resumen."]]
    # a blank reference would let an empty prediction match it
    blank = _load(tmp_path / "blank", "wikilingua", {**row, "references": ["Resumen.", " "]})
    assert blank["references"] == [["Resumen."]]


def test_rows_are_read_in_nfc_not_nfkc():
    # NFKC would fold "m²" to "m2" and "ﬁ" to "fi" in the references, not in the predictions
    example = next(PairFormatter("text", "summary").format_rows(
        [{"text": "Superficie de 5 m² y ﬁnal.", "summary": "5 m²."}], [0], "test"))
    assert (example.source, example.target) == ("Superficie de 5 m² y ﬁnal.", "5 m².")


def test_without_a_task_split_markers_are_left_as_written():
    # `score` without --task: only split-and-rephrase rewrites marker spellings
    assert clean_prediction(None, "Uno. _SPLIT_ Dos. ") == "Uno. _SPLIT_ Dos."
    assert clean_prediction(get_task("bisect"), "Uno. _SPLIT_ Dos.") == "Uno. <SPLIT> Dos."


def test_repeated_answers_are_one_reference():
    example = next(QAFormatter().format_rows([{
        "id": "1", "question": "¿Cuándo?", "context": "En 1898.",
        "answers": {"text": ["1898", "1898", "en 1898"], "answer_start": [3, 3, 0]}}],
        [0], "test"))
    assert tuple(example.references) == ("1898", "en 1898")


# Each kind's metrics and the main one that picks the best checkpoint (README's task table).
KIND_METRICS = {
    "summarization": (("rouge",), "rougeL"),
    "long_summarization": (("rouge",), "rougeL"),
    "qa": (("rouge", "exact_match", "token_f1"), "rougeL"),
    "split_rephrase": (("sari", "bleu", "exact_match"), "sari"),
    "dialogue": (("meteor", "token_f1"), "token_f1"),
    "translation": (("bleu", "chrf"), "bleu"),
}


@pytest.mark.parametrize("name", list(TASKS))
def test_each_tasks_metrics_and_main_metric(name):
    task = get_task(name)
    assert (tuple(task.metrics), task.main_metric) == KIND_METRICS[task.kind]


def test_the_papers_miam_runs_of_the_bert_pairs_take_six_epochs():
    # run_dialogue.sh: the BERT2BERT pairs 6 epochs; BARTO and T5S ran the script's default 3
    miam = get_task("miam")
    for model in ("beto2beto", "betoshare", "roberta2roberta", "robertashare"):
        assert miam.defaults_for(model)["train.epochs"] == 6, model
    assert miam.defaults_for("barto").get("train.epochs", 3) == 3
