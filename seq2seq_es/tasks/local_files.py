"""Local data files read defensively: every defect is named by file and 1-based line.

`datasets` reads local JSON lines with pyarrow and CSV with pandas, which either crash on bad
input far from its cause (a line of invalid UTF-8 surfaces as a UnicodeDecodeError while the
rows are formatted) or report a byte position instead of a line ("Expected object or value at
position 32"). So before `datasets` sees a file, `prepare_local_file` checks it and, where it
must, writes a cleaned copy that `datasets` then reads:

- a UTF-8 byte-order mark is dropped (pandas would glue it to the first column's name);
- JSON lines: blank lines are ignored; a line that is not valid UTF-8, not valid JSON (a
  truncated line) or not a JSON object is a bad line; a column whose values change type from
  row to row (text in one row, a number in another) makes the rows of the minority type bad
  lines if the task reads that column, and is dropped (with a note) if it does not;
- CSV/TSV: a line that is not valid UTF-8 is a bad line; a file with a header and no data rows,
  or only blank lines, is refused; a header that only has the task's columns when split at
  ';', tab or '|' is read with that delimiter (a note says so);
- Windows line endings (CRLF) are accepted everywhere;
- a SQuAD-format JSON document ({"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]},
  how SQAC and MLQA ship their files) is flattened to one row per question (id, title, context,
  question, answers {text, answer_start}), the hub's schema of both.

Bad lines are left out of what `datasets` reads and returned in `bad_lines`; the loader counts
them with the rows the formatter finds bad, or, when bad rows are not to be skipped, refuses
the earliest of either, naming the file and line. `line_of_row` maps each data row `datasets` will read to
its 1-based line in the original file, so later row problems are reported by line too.
A clean file is handed over as it is, without a copy.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError

# Bump when the cleaning rules change: the cleaned copy's name includes it.
CLEAN_VERSION = 1
_BOM = b"\xef\xbb\xbf"
_OTHER_DELIMITERS = (";", "\t", "|")
_JSON_TYPE_NAMES = {str: "text", bool: "true/false", int: "a number", float: "a number",
                    list: "a list", dict: "an object"}


@dataclass
class LocalFile:
    """What `datasets` should read, and how its rows map back to the user's file."""

    path: str                                   # the original, or a cleaned copy
    options: dict = field(default_factory=dict)  # extra builder options (delimiter)
    line_of_row: list[int] | None = None        # 1-based line of data row i; None: unknown
    # Skipped lines: (line, column or None, reason); a column's reason reads like the row
    # formatter's ("not a string (int)"), so both count under one key in the report.
    bad_lines: list[tuple[int, str | None, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def prepare_local_file(path: str, builder: str, options: dict, required_columns: tuple[str, ...],
                       *, cache_dir: str | None) -> LocalFile:
    """Check a local jsonl/json/csv/tsv file; see the module docstring. Parquet passes through."""
    if builder == "parquet" or path.lower().endswith((".gz", ".bz2", ".xz", ".zst")):
        return LocalFile(path, dict(options))
    raw = Path(path).read_bytes()
    bom = raw.startswith(_BOM)
    if bom:
        raw = raw[len(_BOM):]
    if builder == "json":
        stripped = raw.lstrip()
        if stripped.startswith(b"[") or (stripped.startswith(b"{") and not _is_json_lines(raw)):
            return _json_document(path, raw, bom, options, cache_dir)
        return _json_lines(path, raw, bom, required_columns, cache_dir)
    return _csv(path, raw, bom, options, required_columns, cache_dir)


def _lines(raw: bytes) -> list[bytes]:
    """The file's lines without their ending; only b"\\n" ends a line (CRLF keeps no "\\r")."""
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def _decode(line: bytes) -> tuple[str | None, str]:
    try:
        return line.decode("utf-8"), ""
    except UnicodeDecodeError as error:
        return None, (f"not valid UTF-8 (byte 0x{line[error.start]:02x} at column "
                      f"{error.start + 1}; save the file as UTF-8)")


def _cleaned_copy(path: str, text: str, suffix: str, cache_dir: str | None) -> str:
    """Write `text` once per content under the cache; the name is its hash (stable for reuse)."""
    root = Path(cache_dir or os.environ.get("SEQ2SEQ_ES_CACHE",
                                            Path.home() / ".cache" / "seq2seq_es")) / "clean"
    digest = hashlib.sha256(f"{CLEAN_VERSION}\0{os.path.abspath(path)}\0{text}".encode()).hexdigest()
    target = root / f"{Path(path).stem}-{digest[:16]}{suffix}"
    if not target.is_file():
        root.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
    return str(target)


# ---- JSON -----------------------------------------------------------------------------------

def _is_json_lines(raw: bytes) -> bool:
    """A file starting with '{' is JSON lines unless it is one JSON document (e.g. {"data": [..]})."""
    try:
        json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return True
    return False


def _line_of_offset(raw: bytes, offset: int) -> int:
    return raw[:offset].count(b"\n") + 1


def _json_document(path: str, raw: bytes, bom: bool, options: dict,
                   cache_dir: str | None) -> LocalFile:
    """A .json holding one document (a list of rows, or rows under "data"): rows have no lines."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError("not valid UTF-8 (save the file as UTF-8)", file=path,
                        line=_line_of_offset(raw, error.start)) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"not valid JSON: {error.msg} (column {error.colno})", file=path,
                        line=error.lineno) from None
    rows = _squad_rows(document, path)
    if rows is not None:
        flat = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        return LocalFile(_cleaned_copy(path, flat, ".jsonl", cache_dir), {},
                         notes=[f"SQuAD-format document: {len(rows)} questions read as rows"])
    if bom:
        return LocalFile(_cleaned_copy(path, text, ".json", cache_dir), dict(options))
    return LocalFile(path, dict(options))


def _squad_rows(document, path: str) -> list[dict] | None:
    """One row per question of a SQuAD-format document, or None for any other document."""
    articles = document.get("data") if isinstance(document, dict) else None
    if not (isinstance(articles, list) and articles
            and all(isinstance(a, dict) and "paragraphs" in a for a in articles)):
        return None
    rows = []
    for a, article in enumerate(articles):
        for p, paragraph in enumerate(article["paragraphs"]):
            where = f"SQuAD-format document: data[{a}].paragraphs[{p}]"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("context"), str):
                raise DataError(f"{where} has no context text", file=path)
            for q, qa in enumerate(paragraph.get("qas", [])):
                if not isinstance(qa, dict) or not isinstance(qa.get("question"), str):
                    raise DataError(f"{where}.qas[{q}] has no question text", file=path)
                answers = [x for x in qa.get("answers", []) if isinstance(x, dict)]
                rows.append({"id": str(qa.get("id", f"{a}-{p}-{q}")),
                             "title": str(article.get("title", "")),
                             "context": paragraph["context"], "question": qa["question"],
                             "answers": {"text": [x.get("text") for x in answers],
                                         "answer_start": [int(x.get("answer_start", -1))
                                                          for x in answers]}})
    return rows


def _json_type(value) -> str | None:
    return None if value is None else _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _json_lines(path: str, raw: bytes, bom: bool, required_columns: tuple[str, ...],
                cache_dir: str | None) -> LocalFile:
    rows: list[tuple[int, dict]] = []
    bad: list[tuple[int, str | None, str]] = []
    blank = 0
    for number, line in enumerate(_lines(raw), start=1):
        if not line.strip():
            blank += 1
            continue
        text, problem = _decode(line)
        if text is None:
            bad.append((number, None, problem))
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            bad.append((number, None, f"not valid JSON: {error.msg} at column {error.colno} "
                                      "(a truncated or broken line?)"))
            continue
        if not isinstance(value, dict):
            bad.append((number, None, f"not a JSON object but {_json_type(value) or 'null'}"))
            continue
        rows.append((number, value))
    notes: list[str] = []
    # Columns whose values change type between rows (pyarrow refuses them).
    types: dict[str, dict[str, list[tuple[int, str]]]] = {}
    for number, row in rows:
        for key, value in row.items():
            kind = _json_type(value)
            if kind is not None:
                types.setdefault(key, {}).setdefault(kind, []).append(
                    (number, type(value).__name__))
    dropped: set[str] = set()
    bad_rows: dict[int, tuple[str, str]] = {}
    for key, kinds in types.items():
        if len(kinds) < 2:
            continue
        if key not in required_columns:
            dropped.add(key)
            notes.append(f"column '{key}' mixes {' and '.join(sorted(kinds))} and the task does "
                         "not read it: left out")
            continue
        # The kind most rows have is the column's; text wins a tie (the task reads text).
        usual = max(kinds, key=lambda kind: (len(kinds[kind]), kind == "text"))
        for kind, found in kinds.items():
            if kind != usual:
                for number, type_name in found:
                    reason = (f"not a string ({type_name})" if usual == "text" else
                              f"holds {kind} where the other rows hold {usual}")
                    bad_rows.setdefault(number, (key, reason))
    bad += [(number, column, reason) for number, (column, reason) in bad_rows.items()]
    bad.sort(key=lambda item: item[0])
    kept = [(number, row) for number, row in rows if number not in bad_rows]
    if not kept:
        what = "only blank lines" if not bad else "no usable line"
        raise DataError(f"no data rows: the file holds {what}", file=path)
    if not (bom or blank or bad or dropped):
        return LocalFile(path, {}, [number for number, _ in kept], [], notes)
    text = "".join(json.dumps({k: v for k, v in row.items() if k not in dropped},
                              ensure_ascii=False) + "\n" for _, row in kept)
    if bad:
        notes.append(f"skipped {len(bad)} bad lines")
    return LocalFile(_cleaned_copy(path, text, ".jsonl", cache_dir), {},
                     [number for number, _ in kept], bad, notes)


# ---- CSV ------------------------------------------------------------------------------------

def _csv(path: str, raw: bytes, bom: bool, options: dict, required_columns: tuple[str, ...],
         cache_dir: str | None) -> LocalFile:
    options = dict(options)
    notes: list[str] = []
    lines = _lines(raw)
    texts: list[tuple[int, str]] = []
    bad: list[tuple[int, str | None, str]] = []
    for number, line in enumerate(lines, start=1):
        text, problem = _decode(line)
        if text is None:
            bad.append((number, None, problem))
        else:
            texts.append((number, text))
    content = [(number, text) for number, text in texts if text.strip()]
    if not content:
        raise DataError("no data rows: the file holds only blank lines", file=path)
    header_line, header = content[0]
    if bad and bad[0][0] < header_line:
        raise DataError(bad[0][2] + " in the header line", file=path, line=bad[0][0])
    default = delimiter = options.get("delimiter", ",")
    if not _has_columns(header, delimiter, required_columns):
        for other in _OTHER_DELIMITERS:
            if other != delimiter and _has_columns(header, other, required_columns):
                options["delimiter"] = delimiter = other
                if other != "\t":
                    options.pop("quoting", None)  # a ".tsv" that is really CSV: CSV's quoting
                break
    kept_text = "\n".join(text for _, text in texts) + "\n"
    if options.get("quoting") == csv.QUOTE_NONE and _written_with_quoting(kept_text, delimiter):
        options.pop("quoting")
        notes.append("read with CSV quoting: every '\"' of the file is a field's quoting "
                     "(as pandas and the csv module write TSV)")
    line_numbers = [number for number, _ in texts]
    line_of_row = []
    reader = csv.reader(io.StringIO(kept_text), delimiter=delimiter,
                        quoting=options.get("quoting", csv.QUOTE_MINIMAL))
    previous_end = 0
    for record in reader:
        start = previous_end + 1
        previous_end = reader.line_num
        if record and any(cell.strip() for cell in record):
            line_of_row.append(line_numbers[start - 1])
    data_rows = line_of_row[1:]  # the first record is the header
    if not data_rows:
        raise DataError("no data rows: the file has a header line and nothing under it",
                        file=path, line=header_line)
    if delimiter != default:
        notes.append(f"read as {_delimiter_name(delimiter)}-delimited: the header has the "
                     f"task's columns only when split at {_delimiter_name(delimiter)}")
    if not (bom or bad):
        return LocalFile(path, options, data_rows, [], notes)
    if bad:
        notes.append(f"skipped {len(bad)} bad lines")
    suffix = ".tsv" if path.lower().endswith(".tsv") else ".csv"
    return LocalFile(_cleaned_copy(path, kept_text, suffix, cache_dir), options, data_rows, bad,
                     notes)


def _written_with_quoting(text: str, delimiter: str) -> bool:
    """TSV has no quoting, but pandas and the csv module write a TSV field holding '"' quoted
    (inner quotes doubled). Such a file parses strictly with quoting; a plain TSV whose field
    opens with a quotation ('"Es un día", dijo') does not, and is read without quoting."""
    if '"' not in text:
        return False
    try:
        for _ in csv.reader(io.StringIO(text), delimiter=delimiter, strict=True):
            pass
    except csv.Error:
        return False
    return True


def _has_columns(header: str, delimiter: str, required: tuple[str, ...]) -> bool:
    names = {cell.strip() for cell in next(csv.reader([header], delimiter=delimiter), [])}
    return bool(required) and set(required) <= names


def _delimiter_name(delimiter: str) -> str:
    return {"\t": "tab", ";": "';'", "|": "'|'", ",": "','"}[delimiter]
