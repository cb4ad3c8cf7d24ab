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
        assert "lines 3" in str(report)
        err = refused(path, cache, skip_bad_rows=False)
        assert err.line == 3 and "UTF-8" in str(err) and "line 3" in str(err)


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
    assert err.line == 3 and "not valid JSON" in str(err)


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
