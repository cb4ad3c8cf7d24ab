"""Columns of a JSON-lines file whose values change type between rows, and column names that
differ only in letter case: a column the task reads is never left out, and a name that is
almost right is named (local_files, loading._check_columns)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from seq2seq_es.errors import ConfigError, DataError
from seq2seq_es.tasks import load_examples


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    datasets.disable_progress_bars()
    return str(tmp_path_factory.mktemp("hf_cache"))


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
                    encoding="utf-8")
    return str(path)


def load(task: str, path: str, cache: str, **kwargs):
    return load_examples(task, "test", data_files={"test": path}, cache_dir=cache, **kwargs)


def refused(task: str, path: str, cache: str, **kwargs) -> DataError:
    with pytest.raises(DataError) as err:
        load(task, path, cache, **kwargs)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"file {path}")
    return err.value


def split_rows() -> list[dict]:
    rows = []
    for i in range(4):
        source = f"Frase larga número {i}, que se puede dividir en dos."
        target = f"Frase larga número {i}. <SPLIT> Se puede dividir en dos."
        rows.append({"gem_id": f"g{i}", "source": source, "target": target,
                     "references": [target, f"Otra referencia {i}. <SPLIT> Con dos frases."]})
    return rows


@pytest.mark.parametrize("task", ["bisect", "wikilingua"])
def test_a_reference_written_as_text_among_lists_is_one_reference(tmp_path, cache, task):
    """One row's `references` is text, the others' lists: the column was left out for every
    row, and each example scored against its target alone."""
    rows = split_rows()
    rows[2]["references"] = "La única referencia. <SPLIT> Dos frases."
    examples, report = load(task, write_jsonl(tmp_path / "refs.jsonl", rows), cache)
    expected = [row["references"] for row in rows]
    expected[2] = [rows[2]["references"]]
    assert examples["references"] == expected
    assert report.total_skipped == 0
    assert any("column 'references'" in note and "one reference" in note
               for note in report.notes)


def test_a_reference_list_written_as_json_text_is_still_a_list(tmp_path, cache):
    rows = split_rows()
    rows[1]["references"] = json.dumps(rows[1]["references"], ensure_ascii=False)
    examples, _ = load("bisect", write_jsonl(tmp_path / "refs.jsonl", rows), cache)
    assert examples["references"][1] == split_rows()[1]["references"]


def test_a_reference_of_another_kind_is_a_bad_row_with_its_line(tmp_path, cache):
    rows = split_rows()
    rows[3]["references"] = 7
    path = write_jsonl(tmp_path / "refs.jsonl", rows)
    examples, report = load("bisect", path, cache)
    assert examples["references"] == [row["references"] for row in rows[:3]]
    assert report.skipped_rows == {"column 'references' not a list of strings (int)": [4]}
    err = refused("bisect", path, cache, skip_bad_rows=False)
    assert (err.line, err.column) == (4, "references")


def turns(ids: list) -> list[dict]:
    speakers = "MUMUMU"
    return [{"Speaker": speakers[i], "Utterance": f"Turno {i} del diálogo.", "Dialogue_ID": d,
             "Idx": i} for i, d in enumerate(ids)]


def test_dialogue_ids_of_numbers_and_text_are_read_as_their_text(tmp_path, cache):
    """Dialogue_ID 7 in some rows, "7" in others: skipping the number rows took turns out of
    the middle of the dialogue and changed the history of every later turn."""
    as_text, _ = load("miam", write_jsonl(tmp_path / "text.jsonl", turns(["7"] * 6)), cache)
    mixed_path = write_jsonl(tmp_path / "mixed.jsonl", turns([7, "7", 7, "7", "7", 7]))
    mixed, report = load("miam", mixed_path, cache)
    assert report.total_skipped == 0 and as_text.num_rows == 5
    assert mixed.to_list() == as_text.to_list()
    assert any("'Dialogue_ID'" in note and "read as their text" in note for note in report.notes)


def test_an_id_that_is_neither_text_nor_a_number_is_a_bad_row(tmp_path, cache):
    path = write_jsonl(tmp_path / "ids.jsonl", turns(["7", "7", ["7"], "7"]))
    _, report = load("miam", path, cache)
    assert report.skipped_rows == {"column 'Dialogue_ID' not a string or number (list)": [3]}
    err = refused("miam", path, cache, skip_bad_rows=False)
    assert (err.line, err.column) == (3, "Dialogue_ID")


def test_an_example_id_column_of_numbers_and_text_keeps_every_id(tmp_path, cache):
    rows = [{"text": f"Texto {i} de la noticia.", "summary": f"Resumen {i}.",
             "url": f"https://example.org/{i}"} for i in range(3)]
    rows[1]["url"] = 12
    examples, report = load("mlsum", write_jsonl(tmp_path / "ids.jsonl", rows), cache)
    assert examples["example_id"] == ["https://example.org/0", "12", "https://example.org/2"]
    assert report.total_skipped == 0


def test_answers_as_an_object_and_as_a_list_of_records_both_load(tmp_path, cache):
    """The QA formatter reads either form; a file mixing them made the fewer rows bad."""
    context = "El Ebro nace en Fontibre, en Cantabria."
    rows = [{"id": f"q{i}", "question": f"¿Dónde nace el Ebro? ({i})", "context": context,
             "answers": {"text": ["en Fontibre"], "answer_start": [13]}} for i in range(3)]
    rows[1]["answers"] = [{"text": "Cantabria", "answer_start": 29}]
    examples, report = load("sqac", write_jsonl(tmp_path / "qa.jsonl", rows), cache)
    assert examples["target"] == ["en Fontibre", "Cantabria", "en Fontibre"]
    assert report.total_skipped == 0


def test_a_broken_written_list_among_lists_is_a_bad_row_not_one_reference(tmp_path, cache):
    # It was kept as one reference holding the brackets, where the same text in a column of
    # text alone is a bad row.
    rows = split_rows()
    rows[1]["references"] = "['Una. <SPLIT> Dos.', 'Otra"
    rows[2]["references"] = "['Tres. <SPLIT> Cuatro.', 'Otra más. <SPLIT> Cinco.']"
    examples, report = load("bisect", write_jsonl(tmp_path / "broken.jsonl", rows), cache)
    assert examples["references"] == [rows[0]["references"],
                                      ["Tres. <SPLIT> Cuatro.", "Otra más. <SPLIT> Cinco."],
                                      rows[3]["references"]]
    assert report.total_skipped == 1
    [reason] = report.skipped
    assert "text that starts as a list but is not a JSON or Python list of strings" in reason
    assert report.skipped_rows[reason] == [2]


def test_a_mixed_column_the_task_does_not_read_is_left_out_with_a_true_note(tmp_path, cache):
    rows = split_rows()
    for i, row in enumerate(rows):
        row["views"] = i if i % 2 else str(i)
    examples, report = load("bisect", write_jsonl(tmp_path / "views.jsonl", rows), cache)
    assert examples["references"] == [row["references"] for row in rows]
    assert [note for note in report.notes if "left out" in note] == [
        "column 'views' mixes a number and text and the task does not read it: left out"]


# ---- names that differ in letter case -------------------------------------------------------

def test_a_missing_column_names_the_column_that_differs_only_in_case(tmp_path, cache):
    rows = [{"Text": "Texto de la noticia.", "summary": "Resumen."}]
    err = refused("mlsum", write_jsonl(tmp_path / "case.jsonl", rows), cache)
    assert err.column == "text" and "did you mean 'Text' for 'text'?" in str(err)
    # a rename whose file name is spelt in other case: the file's own spelling is named
    csv_path = tmp_path / "case.csv"
    csv_path.write_text("cuerpo,titular\nTexto de la noticia.,Resumen.\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load("mlsum", str(csv_path), cache, columns={"cuerpo": "text", "Titular": "summary"})
    assert err.value.key == "data.columns" and err.value.reason.startswith(
        f"Titular=summary: file {csv_path} has no column 'Titular' (did you mean 'titular'?)")


def test_no_near_name_no_hint(tmp_path, cache):
    err = refused("mlsum", write_jsonl(tmp_path / "other.jsonl", [{"body": "a", "summary": "b"}]),
                  cache)
    assert "did you mean" not in str(err)


def test_a_row_with_the_key_in_other_case_is_a_bad_row_that_says_so(tmp_path, cache):
    rows = [{"text": f"Texto {i} de la noticia.", "summary": f"Resumen {i}."} for i in range(3)]
    rows[1] = {"Text": rows[1]["text"], "summary": rows[1]["summary"]}
    path = write_jsonl(tmp_path / "row_case.jsonl", rows)
    examples, report = load("mlsum", path, cache)
    assert examples.num_rows == 2 and report.total_skipped == 1
    [reason] = report.skipped
    assert reason.startswith("column 'text' missing value") and "did you mean 'text'?" in reason
    assert report.skipped_rows[reason] == [2]
    err = refused("mlsum", path, cache, skip_bad_rows=False)
    assert (err.line, err.column) == (2, "text") and "the row has 'Text'" in str(err)


def test_references_all_written_as_text_are_one_reference_each(tmp_path, cache):
    # In a JSON document (no line checks) every row's `references` as text was a bad row.
    rows = split_rows()
    for row in rows:
        row["references"] = row["target"]
    path = tmp_path / "refs.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    examples, report = load("bisect", str(path), cache)
    assert examples["references"] == [[row["target"]] for row in rows]
    assert report.total_skipped == 0
    # Text that opens a list must be one: a broken literal is a bad row, not a reference.
    rows[1]["references"] = "['Una. <SPLIT> Dos.', 'Otra"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    examples, report = load("bisect", str(path), cache)
    assert examples.num_rows == 3 and report.total_skipped == 1


def test_a_csv_answer_that_is_a_number_is_reported_as_text_like_the_others(tmp_path, cache):
    # "1898" parses as JSON (a number): it was "expected {'text': [...], ...}, got int" while
    # the other plain-text answers got the nested-field message.
    path = tmp_path / "qa.csv"
    path.write_text("id,question,context,answers\n"
                    "a,¿Cuándo?,Ocurrió en 1898.,1898\n"
                    "b,¿Dónde?,Ocurrió en Cuba.,Cuba\n", encoding="utf-8")
    error = refused("sqac", str(path), cache, skip_bad_rows=False)
    assert "column 'answers': text, not the JSON or Python list/dict literal a nested field " \
        "needs" in str(error)


def test_a_dialogue_file_with_no_reply_to_predict_says_why(tmp_path, cache):
    # Every turn by one speaker: the turns merge into one per dialogue, leaving nothing to
    # predict; the error gave the counts only.
    rows = [{"Speaker": "U", "Utterance": f"Hola {i}.", "Dialogue_ID": str(i // 4)}
            for i in range(8)]
    error = refused("miam", write_jsonl(tmp_path / "one_speaker.jsonl", rows), cache)
    assert "no usable example" in str(error) and str(error).endswith(
        "so every dialogue here has a single turn (one speaker, or one row per dialogue id)")


def test_a_translation_file_with_a_column_per_language_points_to_an_own_task(tmp_path, cache):
    # The hint was data.columns, which cannot build the nested `translation` column.
    rows = [{"es": f"Hola {i}.", "en": f"Hello {i}."} for i in range(3)]
    error = refused("wmt13-es-en", write_jsonl(tmp_path / "flat.jsonl", rows), cache)
    assert str(error).endswith(
        "for a file with one column per language, train a task of your own on it: --task "
        "my-translation --data.source_column es --data.target_column en --data.metrics bleu,chrf")


def test_whole_number_ids_written_as_floats_are_their_integer_text(tmp_path, cache):
    """A pandas export writes Dialogue_ID 7 as 7.0: every row was refused as "not a string
    (float)"; and mixed with text, 7.0 read as "7.0", another dialogue than "7"."""
    as_text, _ = load("miam", write_jsonl(tmp_path / "text.jsonl", turns(["7"] * 6)), cache)
    floats, report = load("miam", write_jsonl(tmp_path / "floats.jsonl", turns([7.0] * 6)),
                          cache)
    assert report.total_skipped == 0 and floats.to_list() == as_text.to_list()
    mixed, report = load("miam", write_jsonl(tmp_path / "mixed.jsonl",
                                             turns([7.0, "7", 7.0, "7", "7", 7.0])), cache)
    assert report.total_skipped == 0 and mixed.to_list() == as_text.to_list()
    # A fraction stays itself; NaN (pandas' missing value) is no id.
    fractions, _ = load("miam", write_jsonl(tmp_path / "half.jsonl", turns([7.5] * 6)), cache)
    assert {i.rsplit("-", 1)[0] for i in fractions["example_id"]} == {"7.5"}


def test_an_item_of_a_reference_or_answer_list_that_is_no_text_is_a_bad_row(tmp_path, cache):
    """references [1, "x"] was read as ["x"], and answers.text [null, "y"] as ["y"], without a
    word: a reference lost and the row scored against fewer references."""
    rows = split_rows()
    rows[2]["references"] = [1, rows[2]["references"][0]]
    path = write_jsonl(tmp_path / "refs.jsonl", rows)
    examples, report = load("bisect", path, cache)
    assert examples.num_rows == len(rows) - 1
    assert report.skipped_rows == {
        "column 'references' item 0 of the list is not a string (int)": [3]}
    err = refused("bisect", path, cache, skip_bad_rows=False)
    assert (err.line, err.column) == (3, "references")
    qa = [{"id": f"q{i}", "title": "t", "context": "La capital de Francia es París.",
           "question": "¿Cuál es la capital de Francia?",
           "answers": {"text": ["París"], "answer_start": [25]}} for i in range(3)]
    qa[1]["answers"] = {"text": [None, "París"], "answer_start": [0, 25]}
    examples, report = load("sqac", write_jsonl(tmp_path / "qa.jsonl", qa), cache)
    assert examples.num_rows == 2
    assert report.skipped_rows == {
        "column 'answers.text' item 0 of the list is not a string (null)": [2]}
