"""Compressed data files get the checks of their plain form; files in UTF-16/UTF-32 and JSON
documents whose "data" holds no rows are refused in our words, naming the file."""

from __future__ import annotations

import bz2
import gzip
import importlib.util
import json
import lzma
from pathlib import Path

import datasets
import pytest

from seq2seq_es.errors import DataError
from seq2seq_es.tasks import load_examples

GOOD = [{"text": f"Texto número {i} sobre la canción.", "summary": f"Resumen {i}."}
        for i in range(4)]
COMPRESS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    datasets.disable_progress_bars()
    return str(tmp_path_factory.mktemp("hf_cache"))


def load(path: Path, cache: str, task: str = "mlsum", **kwargs):
    return load_examples(task, "train", data_files={"train": str(path)}, cache_dir=cache,
                         **kwargs)


def refused(path: Path, cache: str, task: str = "mlsum", **kwargs) -> DataError:
    with pytest.raises(DataError) as err:
        load(path, cache, task, **kwargs)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"file {path}")
    return err.value


def mixed_jsonl() -> bytes:
    """Four good rows and four bad lines, of the kinds only the line checks find."""
    rows = [json.dumps(row, ensure_ascii=False) for row in GOOD]
    bad = ['{"text": "Sin resumen.", "summary": null}', '{"text": "Número.", "summary": 7}',
           '["una", "lista"]', '"texto suelto"']
    return ("\n".join(rows[:2] + bad + rows[2:]) + "\n").encode("utf-8")


def squad_document() -> dict:
    context = "El Ebro nace en Fontibre, en Cantabria, y desemboca en el mar Mediterráneo."
    qas = [{"id": "q0", "question": "¿Dónde nace el Ebro?",
            "answers": [{"text": "en Fontibre", "answer_start": 13}]},
           {"id": "q1", "question": "¿Dónde desemboca?",
            "answers": [{"text": "el mar Mediterráneo", "answer_start": 56}]}]
    return {"version": "1.1",
            "data": [{"title": "Ebro", "paragraphs": [{"context": context, "qas": qas}]}]}


@pytest.mark.parametrize("suffix", list(COMPRESS))
def test_a_compressed_jsonl_gets_the_checks_of_the_plain_one(tmp_path, cache, suffix):
    """A .jsonl.gz was handed to the reader unchecked: one bad line failed the whole file
    ("JSON parse error: Column() changed from object to string in row 0")."""
    plain = tmp_path / "mixed.jsonl"
    plain.write_bytes(mixed_jsonl())
    packed = tmp_path / f"mixed.jsonl{suffix}"
    packed.write_bytes(COMPRESS[suffix](mixed_jsonl()))
    plain_examples, plain_report = load(plain, cache)
    examples, report = load(packed, cache)
    assert examples.to_list() == plain_examples.to_list() and examples.num_rows == 4
    assert report.skipped_rows == plain_report.skipped_rows and report.total_skipped == 4
    err = refused(packed, cache, skip_bad_rows=False)
    assert (err.line, err.column) == (3, "summary")


@pytest.mark.parametrize("name, delimiter", [("train.csv.gz", ","), ("train.tsv.bz2", "\t")])
def test_a_compressed_csv_or_tsv_is_read_as_the_plain_one(tmp_path, cache, name, delimiter):
    text = f"text{delimiter}summary\n" + "".join(
        f"{row['text']}{delimiter}NA\n" for row in GOOD)
    # a line of invalid UTF-8 is a bad line, as in the plain file (it failed the whole file)
    data = text.encode("utf-8") + f"Texto roto{delimiter}Mal\n".encode("utf-8").replace(
        b"roto", b"r\xf3to")
    path = tmp_path / name
    path.write_bytes(COMPRESS[Path(name).suffix](data))
    examples, report = load(path, cache)
    assert examples["target"] == ["NA"] * 4  # cells read as the text they hold
    assert report.skipped_rows == {"not valid UTF-8": [6]}


def test_a_compressed_squad_document_is_read_as_squad(tmp_path, cache):
    path = tmp_path / "train.json.gz"
    path.write_bytes(gzip.compress(json.dumps(squad_document()).encode("utf-8")))
    examples, report = load(path, cache, "sqac")
    assert examples["example_id"] == ["q0", "q1"]
    assert any(note.startswith("SQuAD-format document") for note in report.notes)


def test_a_file_that_is_not_what_its_compression_suffix_says_is_named(tmp_path, cache):
    not_gzip = tmp_path / "train.jsonl.gz"
    not_gzip.write_bytes(mixed_jsonl())
    assert "not gzip-compressed although named .gz: if it is plain text, remove '.gz'" in str(
        refused(not_gzip, cache))
    for suffix, compress in COMPRESS.items():
        cut = tmp_path / f"cut.jsonl{suffix}"
        cut.write_bytes(compress(mixed_jsonl() * 50)[:-40])
        assert "the file ends before its compressed data does" in str(refused(cut, cache))


def test_zstd_needs_its_module(tmp_path, cache):
    path = tmp_path / "train.jsonl.zst"
    if importlib.util.find_spec("zstandard") is None:
        path.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 16)
        message = str(refused(path, cache))
        assert "needs the 'zstandard' module" in message and "decompress it" in message
    else:
        import zstandard
        path.write_bytes(zstandard.ZstdCompressor().compress(mixed_jsonl()))
        _, report = load(path, cache)
        assert report.total_skipped == 4


def test_a_compressed_parquet_file_is_refused(tmp_path, cache):
    path = tmp_path / "train.parquet.gz"
    path.write_bytes(gzip.compress(b"PAR1"))
    assert "a compressed Parquet file" in str(refused(path, cache))


# ---- encodings ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, encoding, says", [
    ("notepad.jsonl", "utf-16", "UTF-16"),          # with its byte-order mark, as Notepad
    ("notepad.csv", "utf-16", "UTF-16"),
    ("no_mark.jsonl", "utf-16-be", "UTF-16"),       # without one: found by its NUL bytes
    ("wide.jsonl", "utf-32", "UTF-32"),
    ("wide.json.gz", "utf-16-le", "UTF-16"),
])
def test_a_utf16_or_utf32_file_is_named_as_such(tmp_path, cache, name, encoding, says):
    """A UTF-16 .jsonl was taken for CSV ("name it .csv"), a UTF-16 .csv for invalid UTF-8."""
    text = ("text,summary\n" + "".join(f"{r['text']},{r['summary']}\n" for r in GOOD)
            if name.endswith(".csv") else
            "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in GOOD))
    data = text.encode(encoding)
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    err = refused(path, cache)
    assert str(err) == f"file {path}: the file is {says}, not UTF-8: save it as UTF-8"


# ---- JSON documents -------------------------------------------------------------------------

@pytest.mark.parametrize("data, says", [
    ({"x": 1}, "'data' holds an object, not a list"),
    ("hola", "'data' holds text, not a list"),
    (squad_document()["data"][0], "SQuAD-format document: 'data' must be a list of articles, "
                                  "got one article object"),
])
def test_a_document_whose_data_holds_no_rows_is_refused_in_our_words(tmp_path, cache, data,
                                                                      says):
    """pandas said "If using all scalar values, you must pass an index"."""
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"version": "1.1", "data": data}), encoding="utf-8")
    message = str(refused(path, cache, "sqac"))
    assert says in message and "scalar values" not in message


def test_a_document_with_its_columns_under_data_still_loads(tmp_path, cache):
    path = tmp_path / "columns.json"
    columns = {"text": [row["text"] for row in GOOD], "summary": [row["summary"] for row in GOOD]}
    path.write_text(json.dumps({"version": 1, "data": columns}), encoding="utf-8")
    examples, _ = load(path, cache)
    assert examples["target"] == columns["summary"]


def test_json_lines_named_csv_says_so(tmp_path, cache):
    # The whole first line was shown as the CSV's one column name.
    path = tmp_path / "train.csv"
    path.write_text('{"text": "Texto.", "summary": "Resumen."}\n'
                    '{"text": "Otro.", "summary": "Otro resumen."}\n', encoding="utf-8")
    assert "content does not match the extension: a CSV or TSV file's first line names its " \
        "columns, this one is a JSON object (JSON lines? name it .jsonl)" in \
        str(refused(path, cache))


def test_binary_and_unnamed_compressed_content_are_named(tmp_path, cache):
    # Read as text, binary data was "CSV or plain text? name it .csv".
    binary = tmp_path / "train.jsonl"
    binary.write_bytes(bytes(range(256)) * 4)
    assert "not a text file (binary content;" in str(refused(binary, cache))
    packed = tmp_path / "packed.jsonl"
    packed.write_bytes(gzip.compress(b'{"text": "a", "summary": "b"}\n'))
    assert "gzip-compressed content, but the name does not end in .gz: add it " \
           "(packed.jsonl.gz)" in str(refused(packed, cache))
    # Latin-1 text is text: its rows get their own encoding message, not this one
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,summary\nCanción de España,Año\n".encode("latin-1"))
    assert "not valid UTF-8" in str(refused(latin, cache, skip_bad_rows=False))


def test_a_json_object_of_one_list_per_column_is_read_as_rows(tmp_path, cache):
    """pandas' to_json(orient="list") layout at the top of the file was read as one row, with
    "column 'text' not a string (list)" and no word of why; under "data" it loaded."""
    columns = {"text": [row["text"] for row in GOOD], "summary": [row["summary"] for row in GOOD]}
    path = tmp_path / "columns.json"
    path.write_text(json.dumps(columns, ensure_ascii=False), encoding="utf-8")
    examples, report = load(path, cache)
    assert examples["source"] == columns["text"] and examples["target"] == columns["summary"]
    assert any("column-oriented JSON" in note for note in report.notes)
    columns["summary"].pop()
    path.write_text(json.dumps(columns, ensure_ascii=False), encoding="utf-8")
    err = refused(path, cache)
    assert "the lists differ in length: text 4, summary 3" in str(err)
