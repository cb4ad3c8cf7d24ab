"""One file, one reading: predict's input as the loader reads a data file (composed Unicode,
compressed names), a CSV's Windows line ends whatever else the file holds, and an empty JSON
list named as such."""

from __future__ import annotations

import gzip
import json
import unicodedata

import datasets
import pytest

from seq2seq_es.engine.inference import InputError, check_line_file, read_sources
from seq2seq_es.errors import DataError
from seq2seq_es.tasks import get_task, load_examples

DECOMPOSED = unicodedata.normalize("NFD", "Canción de la montaña, año pasado.")
ROWS = [{"text": DECOMPOSED, "summary": "Canción."},
        {"text": "Otro artículo.", "summary": "Otro."}]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    datasets.disable_progress_bars()
    return str(tmp_path_factory.mktemp("hf_cache"))


def load(path, cache: str):
    return load_examples("mlsum", "test", data_files={"test": str(path)}, cache_dir=cache)[0]


def jsonl(rows) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


def test_predict_reads_sources_as_the_loader_does(tmp_path, cache):
    # A decomposed accent is other tokens than the composed one (BARTO's byte-level BPE does
    # not normalize): predict must feed the model what evaluate feeds it for the same row.
    path = tmp_path / "test.jsonl"
    path.write_bytes(jsonl(ROWS))
    task = get_task("mlsum")
    assert read_sources(path, task) == load(path, cache)["source"]
    lines = tmp_path / "test.txt"
    lines.write_text(DECOMPOSED + "\n", encoding="utf-8")
    assert read_sources(lines, None) == [unicodedata.normalize("NFC", DECOMPOSED)]


def test_predict_reads_a_compressed_data_file_as_training_does(tmp_path, cache):
    path = tmp_path / "test.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl(ROWS)))
    # It said "line 1: not UTF-8 text" of the gzip bytes.
    assert read_sources(path, get_task("mlsum")) == load(path, cache)["source"]
    fake = tmp_path / "plain.jsonl.gz"
    fake.write_bytes(jsonl(ROWS))
    with pytest.raises(InputError, match="not gzip-compressed"):
        read_sources(fake, None)
    with pytest.raises(Exception, match="not .json"):
        check_line_file(tmp_path / "rows.json.gz", "--input")
    with pytest.raises(Exception, match="uncompressed"):
        check_line_file(tmp_path / "out.jsonl.gz", "--output")
    # an output has nothing to convert: it was told "convert the file (e.g. a .json array ...)"
    with pytest.raises(Exception, match=r"not \.json; name it out\.jsonl or out\.txt$"):
        check_line_file(tmp_path / "out.json", "--output")


def test_a_csv_field_reads_alike_with_or_without_a_bom(tmp_path, cache):
    content = 'text,summary\r\n"línea uno\r\nlínea dos",resumen\r\nb,c\r\n'.encode()
    plain, bom = tmp_path / "plain.csv", tmp_path / "bom.csv"
    plain.write_bytes(content)
    bom.write_bytes(b"\xef\xbb\xbf" + content)
    # Without a BOM the field kept its "\r\n"; with one (a cleaned copy) it read "\n".
    assert load(plain, cache)["source"] == load(bom, cache)["source"]
    assert load(plain, cache)["source"][0] == "línea uno\nlínea dos"


@pytest.mark.parametrize("document, says", [
    ([], "the JSON list is empty"),
    ({"data": []}, "the JSON list under 'data' is empty"),
])
def test_an_empty_json_list_is_named_as_such(tmp_path, cache, document, says):
    path = tmp_path / "empty.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(DataError) as err:
        load(path, cache)
    # It was "content does not match the extension ... Instruction "data" corresponds to no
    # data!", though the file is a JSON list as the extension says.
    assert says in str(err.value) and "does not match" not in str(err.value)


def test_rows_without_an_id_are_named_by_their_row_whichever_check_left_a_bad_row_out(tmp_path,
                                                                                    cache):
    """mlsum rows have no id column: each example is named `split-N`, N its 0-based data row.
    A bad row left out before reading (`"text": 5`) shifted every later name by one, where one
    the formatter finds (`"text": null`) did not: predictions named other rows of the file."""
    good = [{"text": f"Artículo número {i}.", "summary": f"Resumen {i}."} for i in range(4)]
    names = {}
    for kind, bad in (("read", 5), ("formatted", None), ("document", 5)):
        rows = good[:1] + [{"text": bad, "summary": "x"}] + good[1:]
        if kind == "document":  # a .json list: rows without lines
            path = tmp_path / f"{kind}.json"
            path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
        else:
            path = tmp_path / f"{kind}.jsonl"
            path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
                            encoding="utf-8")
        examples = load(path, cache)
        names[kind] = dict(zip(examples["target"], examples["example_id"]))
    expected = {"Resumen 0.": "test-0", "Resumen 1.": "test-2", "Resumen 2.": "test-3",
                "Resumen 3.": "test-4"}
    assert names == {"read": expected, "formatted": expected, "document": expected}
