"""Malformed local data files: each defect class either loads with its bad lines skipped and
counted, or fails with one error line naming the file and the 1-based line (issue 11)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from seq2seq_es.errors import DataError
from seq2seq_es.tasks import load_examples

GOOD = [{"text": f"Texto número {i} sobre la canción.", "summary": f"Resumen {i}."}
        for i in range(4)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    datasets.disable_progress_bars()
    return str(tmp_path_factory.mktemp("hf_cache"))


def load(path: Path, cache: str, **kwargs):
    return load_examples("mlsum", "train", data_files={"train": str(path)}, cache_dir=cache,
                         **kwargs)


def jsonl_lines(rows: list[dict]) -> list[bytes]:
    return [json.dumps(row, ensure_ascii=False).encode("utf-8") for row in rows]


def refused(path: Path, cache: str, **kwargs) -> DataError:
    with pytest.raises(DataError) as err:
        load(path, cache, **kwargs)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"file {path}")
    return err.value


def test_invalid_utf8_in_any_column_is_a_bad_line(tmp_path, cache):
    for column in ("text", "summary"):
        lines = jsonl_lines(GOOD)
        lines[2] = lines[2].replace("ó".encode(), b"\xf3") if column == "text" else \
            lines[2].replace(b"Resumen", b"Res\xffmen")
        path = tmp_path / f"{column}.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        examples, report = load(path, cache)
        assert examples.num_rows == 3 and report.rows_read == 4
        assert report.skipped == {"not valid UTF-8": 1}
        assert report.skipped_rows == {"not valid UTF-8": [3]}
        assert "(line 3)" in str(report)
        err = refused(path, cache, skip_bad_rows=False)
        assert err.line == 3 and "UTF-8" in str(err) and "line 3" in str(err)
        assert "more bad row" not in str(err)            # the only one


def test_a_refused_bad_row_says_how_many_more_follow(tmp_path, cache):
    # Only the first bad row was named: a user fixed it and reran to find the next one.
    lines = jsonl_lines(GOOD)
    lines[1], lines[3] = lines[1][:25], lines[3][:25]
    path = tmp_path / "two_bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    err = refused(path, cache, skip_bad_rows=False)
    assert err.line == 2 and "; 1 more bad row after it (the skip report of " \
        "--data.skip_bad_rows true lists them)" in str(err)


def test_a_truncated_line_anywhere_is_a_bad_line(tmp_path, cache):
    for index in (0, 2, 3):
        lines = jsonl_lines(GOOD)
        lines[index] = lines[index][:25]
        path = tmp_path / f"truncated{index}.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        examples, report = load(path, cache)
        assert examples.num_rows == 3 and report.skipped_rows == {"not valid JSON": [index + 1]}
        assert refused(path, cache, skip_bad_rows=False).line == index + 1


def test_bom_and_crlf_load_every_row(tmp_path, cache):
    body = "\r\n".join(json.dumps(row, ensure_ascii=False) for row in GOOD) + "\r\n"
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    examples, report = load(path, cache)
    assert examples["source"] == [row["text"] for row in GOOD] and report.total_skipped == 0
    csv_path = tmp_path / "bom.csv"
    csv_text = "text,summary\r\n" + "".join(f'"{r["text"]}","{r["summary"]}"\r\n' for r in GOOD)
    csv_path.write_bytes(b"\xef\xbb\xbf" + csv_text.encode("utf-8"))
    examples, report = load(csv_path, cache)
    assert examples["target"] == [row["summary"] for row in GOOD] and report.total_skipped == 0


def test_blank_lines_with_mixed_type_columns(tmp_path, cache):
    rows = [dict(row) for row in GOOD]
    rows[1]["summary"] = 7                      # the task reads this column: a bad row
    for row in rows:
        row["views"] = "many"
    rows[3]["views"] = 12                       # not read by the task: the column is left out
    lines = jsonl_lines(rows)
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n" + b"\n\n".join(lines) + b"\n\n")
    examples, report = load(path, cache)
    assert examples.num_rows == 3
    assert report.skipped == {"column 'summary' not a string (int)": 1}
    assert report.skipped_rows == {"column 'summary' not a string (int)": [4]}  # after blanks
    assert any("'views'" in note for note in report.notes)
    err = refused(path, cache, skip_bad_rows=False)
    assert (err.line, err.column) == (4, "summary")


def test_numbers_in_most_rows_of_a_text_column_are_the_bad_rows(tmp_path, cache):
    """The task reads 'summary' as text: its number rows are bad even when they are most rows;
    the rows that hold text are not blamed for differing from them."""
    rows = [dict(row) for row in GOOD]
    for index in (0, 2, 3):
        rows[index]["summary"] = 2024 + index
    path = tmp_path / "numbers.jsonl"
    path.write_bytes(b"\n".join(jsonl_lines(rows)) + b"\n")
    examples, report = load(path, cache)
    assert examples["target"] == [GOOD[1]["summary"]]
    assert report.skipped_rows == {"column 'summary' not a string (int)": [1, 3, 4]}
    err = refused(path, cache, skip_bad_rows=False)
    assert (err.line, err.column) == (1, "summary")


def test_a_formatter_problem_and_a_bad_line_are_numbered_alike(tmp_path, cache):
    rows = [dict(row) for row in GOOD]
    rows[3]["summary"] = "   "                  # empty after stripping: found by the formatter
    lines = jsonl_lines(rows)
    lines[1] = b'{"text": "roto'                # found before formatting
    path = tmp_path / "both.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    _, report = load(path, cache)
    assert report.skipped_rows == {"not valid JSON": [2], "column 'summary' empty": [4]}
    assert refused(path, cache, skip_bad_rows=False).line == 2


def test_files_without_data_rows_are_refused(tmp_path, cache):
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n\r\n", encoding="utf-8")
    assert "only blank lines" in str(refused(blank, cache))
    header_only = tmp_path / "header.csv"
    header_only.write_text("text,summary\n\n", encoding="utf-8")
    err = refused(header_only, cache)
    assert err.line == 1 and "header line and nothing under it" in str(err)


def test_semicolon_csv_is_read_with_its_delimiter(tmp_path, cache):
    path = tmp_path / "excel.csv"
    path.write_text("text;summary\n" + "".join(f'{r["text"]};"{r["summary"]}"\n' for r in GOOD),
                    encoding="utf-8")
    examples, report = load(path, cache)
    assert examples["target"] == [row["summary"] for row in GOOD]
    assert any("';'-delimited" in note for note in report.notes)


def test_invalid_utf8_in_a_csv_line(tmp_path, cache):
    lines = [b"text,summary"] + [f'"{r["text"]}",{r["summary"]}'.encode() for r in GOOD]
    lines[3] = lines[3].replace("ó".encode(), b"\xf3")
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    examples, report = load(path, cache)
    assert examples.num_rows == 3 and report.skipped_rows == {"not valid UTF-8": [4]}
    assert refused(path, cache, skip_bad_rows=False).line == 4


def test_a_broken_json_document_names_its_line(tmp_path, cache):
    path = tmp_path / "rows.json"
    path.write_text('[\n  {"text": "a", "summary": "b"},\n  {"text": "c" "summary": "d"}\n]\n',
                    encoding="utf-8")
    err = refused(path, cache)
    assert err.line == 3 and "not valid JSON: Expecting ',' delimiter at column 16" in str(err)


def test_a_broken_json_line_says_where_once(tmp_path, cache):
    # json's "Unterminated string starting at" came out as "... starting at at column 10"
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "a", "summary": "b"}\n{"text": "c, "summary": "d"}\n',
                    encoding="utf-8")
    err = refused(path, cache, skip_bad_rows=False)
    assert err.line == 2
    assert ("not valid JSON: Expecting ',' delimiter at column 15 (a truncated or broken line?)"
            in str(err))
    path.write_text('{"text": "a", "summary": "b"}\n{"text": "c\n', encoding="utf-8")
    err = refused(path, cache, skip_bad_rows=False)
    assert "not valid JSON: Unterminated string starting at column 10 (a truncated" in str(err)


def test_a_tsv_field_that_opens_with_a_quotation_mark_stays_one_row(tmp_path, cache):
    # TSV has no quoting: read as CSV, the first '"' swallowed the next lines into one field.
    rows = [('"Es un día histórico", dijo el presidente.', "El presidente firmó."),
            ("El ministro habló de la crisis.", '"Saldremos de esta", afirmó.'),
            ("La lluvia llegó a Madrid.", 'Llueve en Madrid" según la AEMET.'),
            ("El Barça ganó.", "Victoria del Barça.")]
    path = tmp_path / "news.tsv"
    path.write_text("text\tsummary\n" + "".join(f"{s}\t{t}\n" for s, t in rows), encoding="utf-8")
    examples, report = load(path, cache)
    assert report.rows_read == 4 and not report.skipped
    assert list(zip(examples["source"], examples["target"])) == rows


def test_a_csv_written_by_pandas_keeps_its_reference_lists(tmp_path, cache):
    # pandas' to_csv writes a list column as a Python literal (['a', "it's"]), not JSON.
    import pandas as pd

    rows = [{"gem_id": f"wikilingua-{i}", "source": f"Texto {i} sobre la receta.",
             "target": f"Resumen {i}.", "references": [f"Resumen {i}.", f"Otro resumen {i}, it's"]}
            for i in range(3)]
    path = tmp_path / "wikilingua.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    examples, report = load_examples("wikilingua", "validation",
                                     data_files={"validation": str(path)}, cache_dir=cache)
    assert not report.skipped and examples.num_rows == 3
    assert [list(r) for r in examples["references"]] == [row["references"] for row in rows]
    # Text that is neither JSON nor a literal list is still one bad row, named by its column.
    path.write_text(path.read_text().replace("['Resumen 1.'", "[Resumen 1.'"), encoding="utf-8")
    examples, report = load_examples("wikilingua", "validation",
                                     data_files={"validation": str(path)}, cache_dir=cache)
    assert examples.num_rows == 2 and "references" in str(report)


def test_decomposed_accents_are_loaded_composed(tmp_path, cache):
    import unicodedata

    rows = [{"text": unicodedata.normalize("NFD", r["text"]),
             "summary": unicodedata.normalize("NFD", r["summary"] + " Canción.")} for r in GOOD]
    path = tmp_path / "nfd.jsonl"
    path.write_bytes(b"\n".join(jsonl_lines(rows)) + b"\n")
    examples, _ = load(path, cache)
    assert examples["source"] == [r["text"] for r in GOOD]
    assert examples["target"] == [r["summary"] + " Canción." for r in GOOD]


def test_a_tsv_written_by_pandas_is_read_with_its_quoting(tmp_path, cache):
    # pandas and the csv module quote a TSV field that holds '"' (inner quotes doubled): such a
    # file parses strictly with quoting, and its quotes are quoting, not text.
    import pandas as pd

    rows = [('"Es un día histórico", dijo el presidente.', "El presidente firmó."),
            ('Dijo "hola" ayer.', "Saludo."), ("Normal.", "Sin comillas.")]
    path = tmp_path / "pandas.tsv"
    pd.DataFrame(rows, columns=["text", "summary"]).to_csv(path, sep="\t", index=False)
    assert '"""Es un día' in path.read_text(encoding="utf-8")
    examples, report = load(path, cache)
    assert list(zip(examples["source"], examples["target"])) == rows
    assert any("read with CSV quoting" in note for note in report.notes)


# ---------------------------------------------------------------------------------------------
# The walkthrough's findings: repeated names, SQuAD entries, CSV text, blame, one numbering

def csv_text(rows: list[tuple[str, ...]], header: str = "text,summary") -> str:
    return header + "\n" + "".join(",".join(f'"{cell}"' for cell in row) + "\n" for row in rows)


def readers_logged(caplog) -> list[str]:
    """What the datasets readers logged themselves ("Failed to read file ... with error ...")."""
    return [record.getMessage() for record in caplog.records
            if record.name.startswith("datasets.packaged_modules")]


def test_a_header_that_names_a_column_twice_is_refused(tmp_path, cache):
    # pandas renames the second 'summary' to 'summary.1': the task trained on the first.
    rows = [(r["text"], "WRONG", r["summary"]) for r in GOOD]
    for name, delimiter in (("dup.csv", ","), ("dup.tsv", "\t")):
        path = tmp_path / name
        path.write_text(delimiter.join(("text", "summary", "summary")) + "\n"
                        + "".join(delimiter.join(row) + "\n" for row in rows), encoding="utf-8")
        for skip in (True, False):
            err = refused(path, cache, skip_bad_rows=skip)
            assert (err.file, err.line, err.column) == (str(path), 1, "summary")
            assert "twice" in str(err) and "fields 2 and 3" in str(err)


def test_an_optional_column_the_task_reads_named_twice_is_refused(tmp_path, cache):
    # MLSUM's ids come from its url column when there is one: the first of two was read and
    # the note said the task did not read it
    path = tmp_path / "urls.csv"
    path.write_text("text,summary,url,url\n" + "".join(
        f"{r['text']},{r['summary']},https://a/{k},https://b/{k}\n" for k, r in enumerate(GOOD)),
        encoding="utf-8")
    err = refused(path, cache)
    assert (err.file, err.line, err.column) == (str(path), 1, "url")
    assert "fields 3 and 4" in str(err)


def test_a_column_the_task_does_not_read_may_be_named_twice(tmp_path, cache):
    # Only a repeated task column is ambiguous; another gets pandas' ".1" and a note.
    path = tmp_path / "notes.csv"
    path.write_text("text,summary,notes,notes\n" + "".join(
        f"{r['text']},{r['summary']},a,b\n" for r in GOOD), encoding="utf-8")
    examples, report = load(path, cache)
    assert examples["target"] == [r["summary"] for r in GOOD]
    assert any("names column 'notes' twice" in note and "'notes.1'" in note
               for note in report.notes)


def test_a_json_line_with_a_key_written_twice_is_a_bad_line(tmp_path, cache):
    lines = jsonl_lines(GOOD)
    lines[2] = lines[2][:-1] + b', "summary": "DUPLICADO"}'
    path = tmp_path / "dup_keys.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    examples, report = load(path, cache)
    assert examples["target"] == [GOOD[i]["summary"] for i in (0, 1, 3)]
    assert report.skipped_rows == {"key 'summary' appears twice in one object": [3]}
    err = refused(path, cache, skip_bad_rows=False)
    assert err.line == 3 and "key 'summary' appears twice" in str(err)
    assert "does not match the extension" not in str(err)


def squad_document(answers_of_q1) -> dict:
    context = "El Ebro nace en Fontibre, en Cantabria, y desemboca en el mar Mediterráneo."
    qas = [{"id": "q0", "question": "¿Dónde nace el Ebro?",
            "answers": [{"text": "en Fontibre", "answer_start": 13}]},
           {"id": "q1", "question": "¿Dónde desemboca?", "answers": answers_of_q1},
           {"id": "q2", "question": "¿En qué comunidad nace?",
            "answers": [{"text": "Cantabria", "answer_start": 29}]}]
    return {"version": "1", "data": [{"title": "Ebro", "paragraphs": [
        {"context": context, "qas": qas[:1]}, {"context": context, "qas": qas[1:]}]}]}


@pytest.mark.parametrize("answers, column, reason", [
    (None, "answers", "missing value"),
    ([{"text": "el mar Mediterráneo", "answer_start": "abc"}], "answers.answer_start",
     "not a whole number (str)"),
    ([{"text": "el mar Mediterráneo", "answer_start": None}], "answers.answer_start",
     "missing value"),
    ([{"text": None, "answer_start": 57}], "answers.text", "missing value"),
    (["el mar Mediterráneo"], "answers", "an answer is not an object {text, answer_start} (str)"),
])
def test_a_broken_squad_question_is_a_bad_row_named_by_its_place(tmp_path, cache, answers,
                                                                 column, reason):
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad_document(answers), ensure_ascii=False), encoding="utf-8")
    data_files = {"validation": str(path)}
    examples, report = load_examples("sqac", "validation", data_files=data_files,
                                     cache_dir=cache)
    assert examples["example_id"] == ["q0", "q2"] and report.rows_read == 3
    assert report.skipped_rows == {f"column '{column}' {reason}": [1]}  # the 2nd question
    with pytest.raises(DataError) as err:
        load_examples("sqac", "validation", data_files=data_files, cache_dir=cache,
                      skip_bad_rows=False)
    assert (err.value.file, err.value.row, err.value.column) == (str(path), 1, column)
    assert "data[0].paragraphs[1].qas[0], id 'q1'" in str(err.value)


def test_a_squad_question_after_a_bad_one_is_named_by_its_own_place(tmp_path, cache):
    # Rows after a left-out question keep their document numbers.
    document = squad_document(None)
    document["data"][0]["paragraphs"][1]["qas"][1]["answers"] = []
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    _, report = load_examples("sqac", "validation", data_files={"validation": str(path)},
                              cache_dir=cache)
    assert report.skipped_rows == {"column 'answers' missing value": [1],
                                   "column 'answers.text' no answer": [2]}


def test_squad_paragraphs_that_are_not_a_list_are_named(tmp_path, cache):
    path = tmp_path / "squad.json"
    for key, value, where in (("paragraphs", None, "data[0].paragraphs is null"),
                              ("qas", None, "data[0].paragraphs[0].qas is null")):
        document = squad_document([])
        if key == "paragraphs":
            document["data"][0]["paragraphs"] = value
        else:
            document["data"][0]["paragraphs"][0]["qas"] = value
        path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
        with pytest.raises(DataError) as err:
            load_examples("sqac", "validation", data_files={"validation": str(path)},
                          cache_dir=cache)
        assert err.value.file == str(path) and where in str(err.value)


def test_csv_cells_are_read_as_the_text_they_hold(tmp_path, cache):
    # pandas' default NA strings and numbers: the file holds that text.
    texts = ["NA", "None", "nan", "null", "007", "2024"]
    rows = [(f"Texto {i} sobre la canción.", text) for i, text in enumerate(texts)]
    path = tmp_path / "na.csv"
    path.write_text("text,summary\n" + "".join(f"{s},{t}\n" for s, t in rows)
                    + "Un texto sin resumen.,\n", encoding="utf-8")
    examples, report = load(path, cache)
    assert examples["target"] == texts
    # Only an empty cell is missing, and it is reported as such, by line.
    assert report.skipped_rows == {"column 'summary' missing value": [8]}
    digits = tmp_path / "digits.tsv"
    digits.write_text("text\tsummary\n" + "".join(f"Texto {i}.\t{i}\n" for i in range(3)),
                      encoding="utf-8")
    examples, report = load(digits, cache)
    assert examples["target"] == ["0", "1", "2"] and not report.skipped


def test_a_row_with_too_many_fields_is_a_bad_line_not_a_wrong_extension(tmp_path, cache, caplog):
    rows = [(r["text"], r["summary"]) for r in GOOD]
    text = csv_text(rows).splitlines()
    text[3] = text[3] + ",sobra"  # line 4 has 3 fields
    path = tmp_path / "ragged.csv"
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    examples, report = load(path, cache)
    assert examples["target"] == [GOOD[i]["summary"] for i in (0, 1, 3)]
    assert report.skipped_rows == {"has more fields than the header": [4]}
    err = refused(path, cache, skip_bad_rows=False)
    assert err.line == 4 and "3, the header 2" in str(err)
    assert "extension" not in str(err)
    assert not readers_logged(caplog)


def test_lines_a_stray_quote_merges_are_said_by_their_span(tmp_path, cache):
    # A '"' that opens no field made one row of two lines: with the right field count it
    # trained on a wrong example without a word; with too many fields only its first line
    # was named, and the next line's row was lost unsaid.
    lines = ["text,summary", *(f"{r['text']},{r['summary']}" for r in GOOD)]
    merged = lines[:2] + ['"' + lines[2].replace(",", " y ", 1), lines[3].replace(",", '",', 1)]
    merged += lines[4:]
    # line 3 opens a quote that line 4 closes: one row of 2 fields over lines 3-4
    path = tmp_path / "merged.csv"
    path.write_text("\n".join(merged) + "\n", encoding="utf-8")
    examples, report = load(path, cache)
    assert examples["target"] == [GOOD[i]["summary"] for i in (0, 2, 3)]
    assert not report.skipped
    assert ("1 row(s) span several lines (a quoted field holding a line break): lines 3-4"
            in report.notes[0])
    broken = lines[:2] + [lines[2].replace(",", ',"', 1), lines[3].replace(",", '",', 1)]
    broken += lines[4:]  # the quote opens line 3's second field: 3 fields over lines 3-4
    path = tmp_path / "broken.csv"  # the record over lines 3-4 has 3 fields
    path.write_text("\n".join(broken) + "\n", encoding="utf-8")
    examples, report = load(path, cache)
    assert examples["target"] == [GOOD[i]["summary"] for i in (0, 3)]
    assert report.skipped_rows == {
        "a record over several lines has more fields than the header": [3]}
    assert ("left out as one record each (a quoted field over several lines): lines 3-4"
            in report.notes)
    err = refused(path, cache, skip_bad_rows=False)
    assert err.line == 3 and "opens on line 3 and closes on line 4" in str(err)


def test_the_readers_own_log_line_is_not_printed_before_our_error(tmp_path, cache, caplog):
    path = tmp_path / "garbage.parquet"
    path.write_text("text,summary\nhola,adiós\n", encoding="utf-8")
    err = refused(path, cache)
    assert "Parquet" in str(err)
    assert not readers_logged(caplog)


@pytest.mark.parametrize("name", ["clean.jsonl", "bom.jsonl", "rows.csv"])
def test_a_cache_folder_that_cannot_be_used_is_not_blamed_on_the_data_file(tmp_path, name):
    from seq2seq_es.errors import ConfigError

    path = tmp_path / name
    if name.endswith(".csv"):
        path.write_text(csv_text([(r["text"], r["summary"]) for r in GOOD]), encoding="utf-8")
    else:
        path.write_bytes((b"\xef\xbb\xbf" if name == "bom.jsonl" else b"")
                         + b"\n".join(jsonl_lines(GOOD)) + b"\n")
    not_a_folder = tmp_path / "afile"
    not_a_folder.write_text("x", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load(path, str(not_a_folder))
    assert err.value.key == "data.cache_dir" and str(not_a_folder) in str(err.value)
    assert "content does not match" not in str(err.value)


def test_a_data_file_that_cannot_be_read_names_it(tmp_path, cache, monkeypatch):
    import errno

    path = tmp_path / "locked.jsonl"
    path.write_bytes(b"\n".join(jsonl_lines(GOOD)) + b"\n")

    def denied(self):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    err = refused(path, cache)
    assert err.file == str(path) and "cannot be read: Permission denied" in str(err)


def test_a_json_list_element_that_is_no_object_is_named_by_its_index(tmp_path, cache):
    elements: list = [dict(row) for row in GOOD]
    elements[3] = "una cadena suelta"
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(elements, ensure_ascii=False, indent=1), encoding="utf-8")
    examples, report = load(path, cache)
    assert examples["target"] == [GOOD[i]["summary"] for i in range(3)]
    assert report.skipped_rows == {"not a JSON object but text": [3]}
    err = refused(path, cache, skip_bad_rows=False)
    assert err.row == 3 and "not a JSON object but text" in str(err)
    # A key written twice is a bad row too; rows after left-out ones keep their numbers.
    texts = [json.dumps(row, ensure_ascii=False) for row in GOOD]
    texts[1] = '{"text": "Uno.", "summary": "Resumen.", "summary": "Otro."}'
    texts[2] = "null"
    texts.append('{"text": "Algo.", "summary": ""}')
    path.write_text("[\n" + ",\n".join(texts) + "\n]\n", encoding="utf-8")
    _, report = load(path, cache)
    assert report.skipped_rows == {"key 'summary' appears twice in one object": [1],
                                   "not a JSON object but null": [2],
                                   "column 'summary' empty": [4]}


def test_a_whitespace_csv_row_is_numbered_by_its_line_in_one_report(tmp_path, cache):
    rows = [(r["text"], r["summary"]) for r in GOOD]
    lines = csv_text(rows).splitlines()
    lines.insert(3, "   ,  ")               # line 4: a row of blank cells (pandas reads it)
    lines.insert(5, "   ")                  # line 6: a blank line (pandas skips it)
    path = tmp_path / "ws.csv"
    path.write_bytes("\n".join(lines).encode("utf-8") + b"\n" + b"\xff,x\n")  # line 8: not UTF-8
    examples, report = load(path, cache)
    assert examples.num_rows == 4
    assert report.skipped_rows == {"column 'text' empty": [4], "not valid UTF-8": [8]}
    assert report.row_unit == "lines"
    text = str(report)
    assert "skipped 2 bad rows (numbered by line in the file)" in text
    assert "bad lines" not in text and "0-based" not in text
    assert refused(path, cache, skip_bad_rows=False).line == 4


def test_long_csv_fields_load(tmp_path, cache):
    # The csv module refuses fields over 128 KiB unless asked; pandas reads them.
    long_text = "Una frase larga sobre la canción. " * 5000
    path = tmp_path / "long.csv"
    path.write_text(csv_text([(long_text, "Resumen."), ("Corto.", "Otro.")]), encoding="utf-8")
    examples, _ = load(path, cache)
    assert examples["source"] == [long_text.strip(), "Corto."]


def test_a_quote_that_is_never_closed_is_named_by_its_line(tmp_path, cache):
    path = tmp_path / "open_quote.csv"
    path.write_text('text,summary\nUno.,Resumen uno.\n"Dos.,Resumen dos.\nTres.,Tres.\n',
                    encoding="utf-8")
    err = refused(path, cache)
    assert err.line == 3 and "never closed" in str(err)
