"""data.columns: a data file with its own column names (article, highlights) trains, scores and
predicts as the task's (text, summary), as run_summarization's --text_column/--summary_column."""

from __future__ import annotations

import json

import pytest

from engine_runs import base_args, demo_files, run
from seq2seq_es.config import DataConfig, compose
from seq2seq_es.engine.inference import read_sources
from seq2seq_es.errors import ConfigError, DataError
from seq2seq_es.metrics.cli import score_main
from seq2seq_es.tasks import get_task, load_examples

RENAMES = {"article": "text", "highlights": "summary"}
ROWS = [{"article": "Llueve en Madrid desde el lunes.", "highlights": "Llueve en Madrid."},
        {"article": "Sale el sol en Sevilla.", "highlights": "Sale el sol."}]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
                    encoding="utf-8")
    return str(path)


def test_a_file_with_its_own_column_names_loads_as_the_tasks(tmp_path):
    data = _jsonl(tmp_path / "own.jsonl", ROWS)
    examples, report = load_examples("mlsum", "train", data_files={"train": data},
                                     columns=RENAMES, cache_dir=str(tmp_path / "cache"))
    assert [(e["source"], e["target"]) for e in examples] == [
        (row["article"], row["highlights"]) for row in ROWS]
    assert report.examples == 2
    csv = tmp_path / "own.csv"
    csv.write_text("article,highlights\n\"Uno, dos.\",Uno.\n", encoding="utf-8")
    examples, _ = load_examples("mlsum", "test", data_files={"test": str(csv)}, columns=RENAMES,
                                cache_dir=str(tmp_path / "cache"))
    assert examples[0]["source"] == "Uno, dos." and examples[0]["references"] == ["Uno."]
    # without the renames: the missing columns, and the key that renames them
    with pytest.raises(DataError) as error:
        load_examples("mlsum", "train", data_files={"train": data},
                      cache_dir=str(tmp_path / "cache"))
    assert str(error.value).endswith("columns found: article, highlights; data.columns (e.g. "
                                     "article=text) renames a file's columns to the task's")


def test_a_rename_onto_a_column_the_file_has_is_refused(tmp_path):
    data = _jsonl(tmp_path / "both.jsonl", [{**ROWS[0], "text": "otro"}])
    with pytest.raises(DataError) as error:
        load_examples("mlsum", "train", data_files={"train": data}, columns=RENAMES,
                      cache_dir=str(tmp_path / "cache"))
    assert "renames a column to 'text', which the data has already" in str(error.value)


def test_a_rename_of_a_column_the_file_lacks_is_refused_by_the_key(tmp_path, capsys):
    # A misspelt name trained on the file's own 'summary' in silence; with neither name the
    # missing-column error said "data.columns renamed artcle=text", a rename never made.
    titled = _jsonl(tmp_path / "titled.jsonl", [{"text": "Llueve.", "summary": "Llueve en "
                                                 "Madrid.", "title": "Lluvia"}])
    with pytest.raises(ConfigError) as error:
        load_examples("mlsum", "train", data_files={"train": titled},
                      columns={"titel": "summary"}, cache_dir=str(tmp_path / "cache"))
    assert error.value.key == "data.columns"
    assert error.value.reason == (
        f"titel=summary: file {titled} has no column 'titel' (did you mean 'title'?), so the "
        "data's own 'summary' would be read instead; columns found: text, summary, title")
    data = _jsonl(tmp_path / "own.jsonl", ROWS)
    with pytest.raises(ConfigError) as error:
        load_examples("mlsum", "train", data_files={"train": data},
                      columns={"artcle": "text", "highlights": "summary"},
                      cache_dir=str(tmp_path / "cache"))
    assert error.value.reason == (
        f"artcle=text: file {data} has no column 'artcle' (did you mean 'article'?), nor a "
        "column 'text'; columns found: article, highlights")
    # score names it by its own flag
    predictions = tmp_path / "pred.txt"
    predictions.write_text("Llueve en Madrid.\n", encoding="utf-8")
    assert score_main(["--task", "mlsum", "--predictions", str(predictions), "--references",
                       data, "--columns", "artcle=text,highlights=summary"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "error: argument --columns: artcle=text: file ")
    # a pair the task can do without (no id column here) is not a file's to have
    examples, _ = load_examples("sqac", "train", data_files={"train": _jsonl(
        tmp_path / "qa.jsonl", [{"question": "¿Qué?", "context": "Algo pasa.",
                                 "answers": {"text": ["Algo"], "answer_start": [0]}}])},
        columns={"qid": "id"}, cache_dir=str(tmp_path / "cache"))
    assert len(examples) == 1


@pytest.mark.parametrize("value, says", [
    ("article", "expected FILE=TASK pairs separated by commas"),
    ("article=text,body=text", "body=text: each column is renamed once"),
    ("article=texto", "article=texto: 'texto' is no column of task mlsum; its columns: text, "
                      "summary"),
])
def test_bad_renames_are_refused_by_the_key(value, says):
    with pytest.raises(ConfigError) as error:
        compose(task="mlsum", model="barto-tiny", overrides={"data.columns": value})
    assert error.value.key == "data.columns" and says in str(error.value)


def test_score_and_predict_read_such_a_file_with_the_renames(tmp_path, capsys):
    data = _jsonl(tmp_path / "own.jsonl", ROWS)
    predictions = tmp_path / "pred.txt"
    predictions.write_text("Llueve en Madrid.\nSale el sol.\n", encoding="utf-8")
    assert score_main(["--task", "mlsum", "--predictions", str(predictions), "--references",
                       data, "--columns", "article=text,highlights=summary"]) == 0
    assert json.loads(capsys.readouterr().out)["rougeL"] == 100.0
    assert score_main(["--predictions", str(predictions), "--references", data, "--metric",
                       "rouge", "--columns", "article=text"]) == 2
    assert "--columns renames a task's data file's columns: give --task" in \
        capsys.readouterr().err
    # predict formats a row of the run's data as the run read it (its config's data.columns)
    columns = DataConfig(columns="article=text,highlights=summary").column_map()
    assert read_sources(tmp_path / "own.jsonl", None, get_task("mlsum"), columns) == [
        row["article"] for row in ROWS]


@pytest.mark.slow
def test_a_run_trains_on_a_file_with_its_own_column_names(tmp_path):
    files = demo_files(tmp_path / "data", train_size=16)
    renamed = {}
    for split, path in files.items():
        rows = [json.loads(line) for line in open(path, encoding="utf-8")]
        renamed[split] = _jsonl(tmp_path / f"{split}.jsonl", [
            {"article": row["text"], "highlights": row["summary"]} for row in rows])
    out = tmp_path / "run"
    run("none", 1, base_args(renamed, out, steps=2,
                             extra=["--data.columns", "article=text,highlights=summary"]))
    report = json.loads((out / "data_report.json").read_text())
    assert report["train"]["examples"] == 16
