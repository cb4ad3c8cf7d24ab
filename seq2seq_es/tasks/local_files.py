"""Local data files read defensively: every defect is named by file and 1-based line.

`datasets` reads local JSON lines with pyarrow and CSV with pandas, which either crash on bad
input far from its cause (a line of invalid UTF-8 surfaces as a UnicodeDecodeError while the
rows are formatted) or report a byte position instead of a line ("Expected object or value at
position 32"). So before `datasets` sees a file, `prepare_local_file` checks it and, where it
must, writes a cleaned copy that `datasets` then reads:

- a compressed file (.gz, .bz2, .xz; .zst with the zstandard module) is decompressed first and
  gets every check below, and `datasets` reads the decompressed copy;
- a file in UTF-16 or UTF-32 (by its byte-order mark or NUL bytes) is refused as such;
- a UTF-8 byte-order mark is dropped (pandas would glue it to the first column's name);
- JSON lines: blank lines are ignored; a line that is not valid UTF-8, not valid JSON (a
  truncated line), not a JSON object, or an object with a key written twice (JSON readers keep
  one of the two values) is a bad line; so is a row that lacks a required key other rows have
  but has it in other letter case ('Text' for 'text'). A column whose values change type from
  row to row (text in one row, a number in another; pyarrow refuses it) is dropped, with a
  note, only if the task does not read it. If it does: in a column read as text the rows of
  other types are bad lines; in an id column numbers are read as their text; in a reference
  list a text value is a list of that one reference; a nested field (answers, translation) is
  written as JSON text, which the formatter parses and judges row by row; any other type there
  is a bad line;
- CSV/TSV: a line that is not valid UTF-8 is a bad line, and so is a row with more fields than
  the header (pandas refuses the whole file for it); a header that names a column the task
  reads twice is refused (pandas would rename the second copy and the task read the first;
  another repeated name gets pandas' '.1', noted); so is a quoted
  field that is never closed (it swallows the rest of the file); a file with a header and no data
  rows, or only blank lines, is refused; a header that only has the task's columns when split
  at ';', tab or '|' is read with that delimiter (a note says so). `columns` gives the header's
  names so that every cell is read as text (the loader asks pandas for strings, with only an
  empty cell missing: "NA", "None", "nan" and "007" stay the text they are);
- Windows line endings (CRLF) are accepted everywhere;
- a JSON document holding a list of rows (at the top or under "data"): an element that is not
  an object, or has a key written twice, is a bad row (0-based element index); a "data" that
  holds neither a list nor an object of equally long columns is refused;
- a SQuAD-format JSON document ({"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]},
  how SQAC and MLQA ship their files) is flattened to one row per question (id, title, context,
  question, answers {text, answer_start}), the hub's schema of both. A question whose entry is
  broken (no question text, answers null or not a list, an answer without text, an answer_start
  that is no whole number) is a bad row, named by its place (data[a].paragraphs[p].qas[q]) and
  id; an article or paragraph that is broken (paragraphs or qas not a list, no context) is
  refused, as every question under it would be lost.

Bad lines (rows, in JSON documents) are left out of what `datasets` reads and returned in
`bad`; the loader counts them with the rows the formatter finds bad, or, when bad rows are not
to be skipped, refuses the earliest of either, naming the file and line (or row) and column.
`line_of_row` maps each data row `datasets` will read to its 1-based line in the original file,
and `row_of_row` to its 0-based row of a JSON document, so later row problems are numbered
like the bad ones. A clean file is handed over as it is, without a copy, under a link whose name
changes with its content (`datasets` would read a file rewritten with the same modification
time from the cache of its old rows).
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import gzip
import hashlib
import io
import json
import lzma
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError, json_problem
from .formatting import id_text, parse_nested_text

# Bump when the cleaning rules change: the cleaned copy's name includes it.
CLEAN_VERSION = 3
_BOM = b"\xef\xbb\xbf"
_OTHER_DELIMITERS = (";", "\t", "|")
_JSON_TYPE_NAMES = {str: "text", bool: "true/false", int: "a number", float: "a number",
                    list: "a list", dict: "an object"}
# The csv module refuses a field over 128 KiB by default; pandas has no such limit, and a long
# document (EUR-Lex) is a valid cell.
_FIELD_SIZE_LIMIT = 2**31 - 1


@dataclass
class LocalFile:
    """What `datasets` should read, and how its rows map back to the user's file."""

    path: str                                   # the original, or a cleaned copy
    options: dict = field(default_factory=dict)  # extra builder options (delimiter)
    line_of_row: list[int] | None = None        # 1-based line of data row i; None: unknown
    # 0-based row of the JSON document (element, or question) of data row i, where bad rows
    # were left out; None: data row i is row i.
    row_of_row: list[int] | None = None
    # Left out: (1-based line, or 0-based row of a JSON document, column or None, reason); a
    # column's reason reads like the row formatter's ("not a string (int)"), so both count
    # under one key in the report.
    bad: list[tuple[int, str | None, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    by_line: bool = False                       # `bad` holds lines (a text file), not rows
    columns: list[str] | None = None            # CSV/TSV: the header's names, as pandas reads them
    # Where a document row is, for messages: "question data[0].paragraphs[2].qas[1], id '57'".
    row_names: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Columns:
    """How the task reads a file's columns, by their names in the file."""

    required: tuple[str, ...] = ()
    text: tuple[str, ...] = ()     # required columns read as text (Formatter.text_columns)
    read: tuple[str, ...] = ()     # every column the task reads, required or not
    ids: tuple[str, ...] = ()      # ids (example, dialogue): a number there is read as its text
    lists: tuple[str, ...] = ()    # lists of strings (references)

    def all_read(self) -> set[str]:
        return {*self.required, *self.text, *self.read, *self.ids, *self.lists}


def prepare_local_file(path: str, builder: str, options: dict, required_columns: tuple[str, ...],
                       *, cache_dir: str | None, text_columns: tuple[str, ...] = (),
                       read_columns: tuple[str, ...] = (), id_columns: tuple[str, ...] = (),
                       list_columns: tuple[str, ...] = ()) -> LocalFile:
    """Check a local jsonl/json/csv/tsv file, compressed or not; see the module docstring.
    Parquet passes through. `text_columns`: required columns the task reads as text
    (Formatter.text_columns); `read_columns`: every column the task reads (a mixed-type column
    outside them is left out); `id_columns`, `list_columns`: the ids and reference lists among
    them. A file read as it is goes to `datasets` under a name of its content
    (`_content_named`)."""
    local = _checked(path, builder, options, required_columns, cache_dir=cache_dir,
                     text_columns=text_columns, read_columns=read_columns,
                     id_columns=id_columns, list_columns=list_columns)
    if local.path == path:
        local.path = _content_named(path, cache_dir)
    return local


def _content_named(path: str, cache_dir: str | None) -> str:
    """A link to the user's file under a name that changes whenever its content may have, for
    `datasets` to read. `datasets` caches a local file's rows by its path and modification
    time: a file rewritten with the same time (`touch -r`, `cp -p`, `rsync -t`, an archive
    unpacked, a coarse clock) was read from the cache of its old rows, without a word (an
    audit trained on the old text). The name holds the file's inode, size, modification and
    change times: the change time (ctime) moves with every write and no tool sets it back, and
    nothing is read (a data file of gigabytes). Where no link can be made, the file itself."""
    info = os.stat(path)
    identity = (f"{os.path.abspath(path)}\0{info.st_ino}\0{info.st_size}\0{info.st_mtime_ns}"
                f"\0{info.st_ctime_ns}")
    digest = hashlib.sha256(identity.encode()).hexdigest()
    name = Path(path)
    link = _clean_root(cache_dir) / f"{name.stem}-{digest[:16]}{name.suffix}"
    try:
        if os.path.realpath(link) != os.path.realpath(path):  # made by an earlier run
            link.parent.mkdir(parents=True, exist_ok=True)
            tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
            tmp.unlink(missing_ok=True)
            os.symlink(os.path.abspath(path), tmp)
            tmp.replace(link)  # atomic: two runs making it at once both find it whole
    except OSError:
        return path
    return str(link)


def _checked(path: str, builder: str, options: dict, required_columns: tuple[str, ...],
             *, cache_dir: str | None, text_columns: tuple[str, ...],
             read_columns: tuple[str, ...], id_columns: tuple[str, ...],
             list_columns: tuple[str, ...]) -> LocalFile:
    compression = _compression(path)
    if builder == "parquet":
        if compression is not None:
            raise DataError(f"a compressed Parquet file ({compression}): decompress it; Parquet "
                            "compresses its columns itself", file=path)
        return LocalFile(path, dict(options))
    columns = Columns(tuple(required_columns), tuple(text_columns), tuple(read_columns),
                      tuple(id_columns), tuple(list_columns))
    raw = Path(path).read_bytes()
    if compression is not None:
        raw = _decompressed(path, raw, compression)
    encoding = wide_encoding(raw)
    if encoding is not None:  # every line would be "not valid UTF-8", and JSON would look like CSV
        raise DataError(f"the file is {encoding}, not UTF-8: save it as UTF-8", file=path)
    _refuse_binary(path, raw, compression)
    bom = raw.startswith(_BOM)
    if bom:
        raw = raw[len(_BOM):]
    # A BOM or compression: `datasets` must read a plain UTF-8 copy, the very text checked here
    # (it would decompress by itself, but a clean file would then skip no check).
    rewrite = bom or compression is not None
    if builder == "json":
        stripped = raw.lstrip()
        if stripped and stripped[:1] not in (b"{", b"["):
            first_line = stripped[:4096].decode("utf-8", errors="replace").splitlines()[0][:60]
            raise DataError(f"content does not match the extension: a JSON-lines or JSON file "
                            f"starts with '{{' or '[', this one starts with {first_line!r} (CSV "
                            f"or plain text? name it .csv)", file=path)
        if stripped.startswith(b"[") or (stripped.startswith(b"{") and not _is_json_lines(raw)):
            return _json_document(path, raw, rewrite, options, required_columns, cache_dir)
        return _json_lines(path, raw, rewrite, columns, cache_dir)
    first = raw.lstrip()[:4096].split(b"\n", 1)[0].strip()
    if first.startswith(b"{") and first.endswith(b"}"):
        # Its first line is a header of one column named by the whole JSON object otherwise.
        raise DataError("content does not match the extension: a CSV or TSV file's first line "
                        "names its columns, this one is a JSON object (JSON lines? name it "
                        ".jsonl)", file=path)
    return _csv(path, raw, rewrite, options, required_columns, cache_dir,
                tuple(sorted(columns.all_read())))


# Bytes no text file holds (controls other than tab, newlines, form feed and escape).
_BINARY_BYTES = bytes(set(range(32)) - {9, 10, 11, 12, 13, 27})


def _refuse_binary(path: str, raw: bytes, compression: str | None) -> None:
    """Binary content is named as such: read as text it became a CSV or JSON error about
    garbage characters, with advice to rename it. A compressed file without the suffix that
    says so is named by its kind."""
    if compression is None:
        for suffix, (kind, magic) in _COMPRESSIONS.items():
            if raw.startswith(magic):
                raise DataError(f"{kind}-compressed content, but the name does not end in "
                                f"{suffix}: add it ({Path(path).name}{suffix})", file=path)
    head = raw[:4096]
    if head and sum(head.count(byte) for byte in _BINARY_BYTES) * 20 > len(head):
        raise DataError("not a text file (binary content; a data file is UTF-8 JSON lines, "
                        "JSON, CSV or TSV, or Parquet named .parquet)", file=path)


# Suffix -> (name, how its data starts). The standard library reads all but zstd.
_COMPRESSIONS = {".gz": ("gzip", b"\x1f\x8b"), ".bz2": ("bzip2", b"BZh"),
                 ".xz": ("xz", b"\xfd7zXZ\x00"), ".zst": ("zstd", b"\x28\xb5\x2f\xfd")}
# What a data file's name may end with after its format's suffix (tasks.loading.builder_for).
COMPRESSED_SUFFIXES = tuple(_COMPRESSIONS)


def _compression(path: str) -> str | None:
    """The compression suffix the file's name ends with, or None."""
    name = path.lower()
    return next((suffix for suffix in _COMPRESSIONS if name.endswith(suffix)), None)


def uncompressed_name(path: str) -> str:
    """The name without its compression suffix (test.jsonl.gz -> test.jsonl): the name that
    says the file's format."""
    suffix = _compression(path)
    return path[: -len(suffix)] if suffix else path


def read_decompressed(path: str) -> bytes:
    """The file's bytes, decompressed where its name says so (a DataError where they cannot
    be)."""
    raw = Path(path).read_bytes()
    suffix = _compression(path)
    return _decompressed(path, raw, suffix) if suffix else raw


def _decompressed(path: str, raw: bytes, suffix: str) -> bytes:
    """The file's content, decompressed, or a DataError saying why it cannot be."""
    kind, magic = _COMPRESSIONS[suffix]
    zstd_errors: tuple[type[BaseException], ...] = ()
    if suffix == ".zst":
        try:
            import zstandard
        except ImportError:
            raise DataError("a zstd-compressed file (.zst), which needs the 'zstandard' module, "
                            "not installed here: decompress it (zstd -d) or pip install "
                            "zstandard", file=path) from None
        zstd_errors = (zstandard.ZstdError,)
    if not raw.startswith(magic):
        raise DataError(f"not {kind}-compressed although named {suffix}: if it is plain text, "
                        f"remove '{suffix}' from its name", file=path)
    try:
        if suffix == ".gz":
            return gzip.decompress(raw)
        if suffix == ".bz2":
            return bz2.decompress(raw)
        if suffix == ".xz":
            return lzma.decompress(raw)
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)) as reader:
            return reader.read()
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError, *zstd_errors) as error:
        # gzip raises OSError for bad data: it must not pass as a failure of the file system.
        detail = ("the file ends before its compressed data does (cut short while downloading "
                  "or copying?)" if "end-of-stream" in str(error)
                  else f"the compressed data is damaged ({error})")
        raise DataError(f"cannot be decompressed as {kind}: {detail}", file=path) from None


# Byte-order marks of the encodings a text editor may save "Unicode" text in; UTF-32's first,
# as they start like UTF-16's.
_WIDE_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
              (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))


def wide_encoding(raw: bytes) -> str | None:
    """The encoding of a file in UTF-16 or UTF-32 (Windows Notepad's "Unicode"), found by its
    byte-order mark or, without one, by its NUL bytes; None for anything else."""
    for mark, name in _WIDE_BOMS:
        if raw.startswith(mark):
            return name
    head = raw[:4096]
    # UTF-8 text has no NUL byte; UTF-16 has one beside every ASCII character, UTF-32 three.
    nuls = head.count(0)
    if not head or nuls * 4 < len(head):
        return None
    return "UTF-32" if nuls * 3 >= len(head) * 2 else "UTF-16"


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


def _clean_root(cache_dir: str | None) -> Path:
    """Where cleaned copies and content-named links go."""
    return Path(cache_dir or os.environ.get("SEQ2SEQ_ES_CACHE",
                                            Path.home() / ".cache" / "seq2seq_es")) / "clean"


def _cleaned_copy(path: str, text: str, suffix: str, cache_dir: str | None) -> str:
    """Write `text` once per content under the cache; the name is its hash (stable for reuse)."""
    root = _clean_root(cache_dir)
    digest = hashlib.sha256(f"{CLEAN_VERSION}\0{os.path.abspath(path)}\0{text}".encode()).hexdigest()
    target = root / f"{Path(path).stem}-{digest[:16]}{suffix}"
    if not target.is_file():
        root.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
    return str(target)


def _no_usable_row(path: str, bad: list[tuple[int, str | None, str]], *, by_line: bool,
                   names: dict[int, str] | None = None) -> DataError:
    """Every row with data is bad: refuse, naming the first and why."""
    place, column, reason = bad[0]
    what = "line" if by_line else "row"
    name = (names or {}).get(place)
    return DataError(f"no usable {what}: all {len(bad)} {what}s with data are bad; the first: "
                     f"{reason}" + (f" ({name})" if name else ""),
                     file=path, column=column, **({"line": place} if by_line else {"row": place}))


# ---- JSON -----------------------------------------------------------------------------------

class _RepeatedKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _repeated(pairs: list[tuple[str, object]]) -> str | None:
    """The first key written twice among an object's pairs, or None."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return key
        seen.add(key)
    return None


def _object_without_repeats(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _RepeatedKey(_repeated(pairs))
    return obj


# A line's JSON, refusing an object that names a key twice (json keeps the last value, pyarrow
# refuses the whole file).
_LINE_DECODER = json.JSONDecoder(object_pairs_hook=_object_without_repeats)


def _repeated_key_reason(key: str) -> str:
    return f"key '{key}' appears twice in one object (a JSON reader keeps only one of the values)"


def decode_json_line(text: str):
    """One line's JSON value, as training reads a .jsonl line: json.JSONDecodeError if it is
    not JSON, ValueError (its reason) if an object in it names a key twice."""
    try:
        return _LINE_DECODER.decode(text)
    except _RepeatedKey as repeated:
        raise ValueError(_repeated_key_reason(repeated.key)) from None


def _document_decoder(repeats: dict[int, str]) -> json.JSONDecoder:
    """A decoder that records, by id, every object that names a key twice (and its key)."""
    def hook(pairs):
        obj = dict(pairs)
        if len(obj) != len(pairs):
            repeats[id(obj)] = _repeated(pairs)
        return obj
    return json.JSONDecoder(object_pairs_hook=hook)


def _repeated_key_in(value, repeats: dict[int, str]) -> str | None:
    """The first key written twice in any object inside `value` (see `_document_decoder`)."""
    if not repeats:
        return None
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if id(item) in repeats:
                return repeats[id(item)]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _is_json_lines(raw: bytes) -> bool:
    """A file starting with '{' is JSON lines unless it is one JSON document (e.g. {"data": [..]})."""
    try:
        json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return True
    return False


def _line_of_offset(raw: bytes, offset: int) -> int:
    return raw[:offset].count(b"\n") + 1


def _column_oriented_rows(document, required_columns: tuple[str, ...],
                          path: str) -> list[dict] | None:
    """The rows of a top-level object holding one list per column (pandas' to_json(orient=
    "list"), `{"text": [...], "summary": [...]}`), or None for any other document. It was read
    as one row whose text columns held lists: "column 'text' not a string (list)", row 0, with
    no word of why. A task's required columns hold one value per row, never a list, in a
    row-oriented object, so lists in all of them mark the column layout."""
    if not (isinstance(document, dict) and required_columns
            and set(required_columns) <= set(document)
            and all(isinstance(document[name], list) for name in required_columns)):
        return None
    lists = {name: value for name, value in document.items() if isinstance(value, list)}
    lengths = {name: len(value) for name, value in lists.items()}
    if len(set(lengths.values())) > 1:
        raise DataError("a JSON object of one list per column, but the lists differ in length: "
                        + ", ".join(f"{name} {n}" for name, n in lengths.items()), file=path)
    rows = [dict(zip(lists, values)) for values in zip(*lists.values())]
    if not rows:
        raise DataError("no data rows: the JSON object's column lists are empty", file=path)
    return rows


def _json_document(path: str, raw: bytes, rewrite: bool, options: dict,
                   required_columns: tuple[str, ...], cache_dir: str | None) -> LocalFile:
    """A .json holding one document (a list of rows, or rows under "data"): rows have no lines.
    `rewrite`: hand over a copy even when nothing is wrong (a BOM, a compressed file)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError("not valid UTF-8 (save the file as UTF-8)", file=path,
                        line=_line_of_offset(raw, error.start)) from None
    repeats: dict[int, str] = {}
    try:
        document = _document_decoder(repeats).decode(text)
    except json.JSONDecodeError as error:
        raise DataError(f"not valid JSON: {json_problem(error)}", file=path,
                        line=error.lineno) from None
    if isinstance(document, dict) and repeats.get(id(document)) in ("data", *required_columns):
        raise DataError(f"key '{repeats[id(document)]}' appears twice at the top of the document "
                        "(a JSON reader keeps only one of the values)", file=path)
    squad = _squad_rows(document, path, repeats)
    if squad is not None:
        rows, places, bad, names = squad
        if not rows:
            raise _no_usable_row(path, bad, by_line=False, names=names)
        flat = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        return LocalFile(_cleaned_copy(path, flat, ".jsonl", cache_dir), {},
                         row_of_row=places if bad else None, bad=bad, row_names=names,
                         notes=[f"SQuAD-format document: {len(rows) + len(bad)} questions read "
                                "as rows (0-based, in document order)"])
    columns = _column_oriented_rows(document, required_columns, path)
    if columns is not None:
        flat = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in columns)
        return LocalFile(_cleaned_copy(path, flat, ".jsonl", cache_dir), {},
                         notes=[f"column-oriented JSON (a list per column): {len(columns)} rows "
                                "read (0-based, in list order)"])
    if isinstance(document, dict) and not set(required_columns) <= set(document):
        _check_data_key(path, document)
    elements = None
    if isinstance(document, list):
        elements = document
    elif (isinstance(document, dict) and isinstance(document.get("data"), list)
          and not set(required_columns) <= set(document)):
        elements = document["data"]  # read as the rows (the loader's field="data")
    if elements is not None and not elements:
        # datasets' own words for it ('Instruction "data" corresponds to no data!') were
        # reported as content that does not match the extension.
        where = "list" if isinstance(document, list) else "list under 'data'"
        raise DataError(f"no data rows: the JSON {where} is empty", file=path)
    bad = []
    for index, element in enumerate(elements or ()):
        if not isinstance(element, dict):
            bad.append((index, None, f"not a JSON object but {_json_type(element) or 'null'}"))
        elif (key := _repeated_key_in(element, repeats)) is not None:
            bad.append((index, None, _repeated_key_reason(key)))
    if bad:
        left_out = {index for index, _, _ in bad}
        kept = [index for index in range(len(elements)) if index not in left_out]
        if not kept:
            raise _no_usable_row(path, bad, by_line=False)
        rows_text = json.dumps([elements[index] for index in kept], ensure_ascii=False)
        return LocalFile(_cleaned_copy(path, rows_text, ".json", cache_dir), {},
                         row_of_row=kept, bad=bad)
    if rewrite:
        return LocalFile(_cleaned_copy(path, text, ".json", cache_dir), dict(options))
    return LocalFile(path, dict(options))


def _check_data_key(path: str, document: dict) -> None:
    """Refuse a document whose "data" (where the loader reads its rows) holds no rows: pandas
    would fail on it with a message of its own ("If using all scalar values, you must pass an
    index"). A list of rows is read, and so is an object of equally long columns, as pandas
    reads it."""
    if "data" not in document:
        return
    data = document["data"]
    if isinstance(data, list):
        return
    if (isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values())
            and len({len(v) for v in data.values()}) == 1):
        return
    if isinstance(data, dict) and "paragraphs" in data:
        raise DataError("SQuAD-format document: 'data' must be a list of articles, got one "
                        "article object (put it in a list: \"data\": [{...}])", file=path)
    raise DataError(f"'data' holds {_json_type(data) or 'null'}, not a list: a JSON document "
                    "gives its rows (in SQuAD format, its articles {title, paragraphs}) as a list "
                    "under 'data'", file=path)


def _squad_rows(document, path: str, repeats: dict[int, str]):
    """A SQuAD-format document as (rows, their question numbers, bad questions, question names),
    one row per well-formed question; None for any other document. Questions are numbered
    0-based in document order, the bad ones included."""
    articles = document.get("data") if isinstance(document, dict) else None
    if not (isinstance(articles, list) and articles
            and all(isinstance(a, dict) and "paragraphs" in a for a in articles)):
        return None
    rows: list[dict] = []
    places: list[int] = []
    bad: list[tuple[int, str | None, str]] = []
    names: dict[int, str] = {}
    number = 0
    for a, article in enumerate(articles):
        paragraphs = article["paragraphs"]
        if not isinstance(paragraphs, list):
            raise DataError(f"SQuAD-format document: data[{a}].paragraphs is "
                            f"{_json_type(paragraphs) or 'null'}, not a list of paragraphs",
                            file=path)
        title = article.get("title")
        for p, paragraph in enumerate(paragraphs):
            where = f"data[{a}].paragraphs[{p}]"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("context"), str):
                raise DataError(f"SQuAD-format document: {where} has no context text", file=path)
            for place, obj in ((f"data[{a}]", article), (where, paragraph)):
                if id(obj) in repeats:  # the questions under it would read one of two values
                    raise DataError(f"SQuAD-format document: {place} names key "
                                    f"'{repeats[id(obj)]}' twice (a JSON reader keeps only one "
                                    "of the values)", file=path)
            questions = paragraph.get("qas", [])
            if not isinstance(questions, list):
                raise DataError(f"SQuAD-format document: {where}.qas is "
                                f"{_json_type(questions) or 'null'}, not a list of questions",
                                file=path)
            for q, qa in enumerate(questions):
                qa_id = qa.get("id") if isinstance(qa, dict) else None
                names[number] = f"question {where}.qas[{q}]" + (
                    f", id '{qa_id}'" if qa_id not in (None, "") else "")
                problem = _squad_problem(qa, repeats)
                if problem is not None:
                    bad.append((number, *problem))
                else:
                    rows.append(_squad_row(qa, paragraph, title,
                                           default_id=f"{a}-{p}-{q}"))
                    places.append(number)
                number += 1
    return rows, places, bad, names


def _squad_problem(qa, repeats: dict[int, str]) -> tuple[str | None, str] | None:
    """(column, reason) that makes a SQuAD question entry a bad row, or None."""
    if not isinstance(qa, dict):
        return None, f"the question entry is not a JSON object but {_json_type(qa) or 'null'}"
    if (key := _repeated_key_in(qa, repeats)) is not None:
        return None, _repeated_key_reason(key)
    question = qa.get("question")
    if not isinstance(question, str):
        return "question", ("missing value" if question is None
                            else f"not a string ({type(question).__name__})")
    answers = qa.get("answers", [])
    if answers is None:
        return "answers", "missing value"
    if not isinstance(answers, list):
        return "answers", f"not a list of answers ({type(answers).__name__})"
    for answer in answers:
        if not isinstance(answer, dict):
            return "answers", ("an answer is not an object {text, answer_start} "
                               f"({type(answer).__name__})")
        text = answer.get("text")
        if not isinstance(text, str):
            return "answers.text", ("missing value" if text is None
                                    else f"not a string ({type(text).__name__})")
        if "answer_start" in answer and _answer_start(answer["answer_start"]) is None:
            start = answer["answer_start"]
            return "answers.answer_start", ("missing value" if start is None else
                                            f"not a whole number ({type(start).__name__})")
    return None


def _answer_start(value) -> int | None:
    """A character offset: a whole number, or text holding one ("60"); None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _squad_row(qa: dict, paragraph: dict, title, *, default_id: str) -> dict:
    answers = qa.get("answers", [])
    qa_id = qa.get("id")
    return {"id": str(qa_id) if qa_id not in (None, "") else default_id,
            "title": "" if title is None else str(title),
            "context": paragraph["context"], "question": qa["question"],
            "answers": {"text": [answer["text"] for answer in answers],
                        "answer_start": [_answer_start(answer.get("answer_start", -1))
                                         for answer in answers]}}


def _json_type(value) -> str | None:
    return None if value is None else _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _json_lines(path: str, raw: bytes, rewrite: bool, columns: Columns,
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
            value = _LINE_DECODER.decode(text)
        except _RepeatedKey as repeated:
            bad.append((number, None, _repeated_key_reason(repeated.key)))
            continue
        except json.JSONDecodeError as error:
            bad.append((number, None, f"not valid JSON: {json_problem(error)} "
                                      "(a truncated or broken line?)"))
            continue
        if not isinstance(value, dict):
            bad.append((number, None, f"not a JSON object but {_json_type(value) or 'null'}"))
            continue
        rows.append((number, value))
    notes: list[str] = []
    bad_rows = _miscased_keys(rows, columns.required)
    # Columns whose values change type between rows (pyarrow refuses them).
    types: dict[str, dict[str, list[tuple[int, str]]]] = {}
    for number, row in rows:
        for key, value in row.items():
            kind = _json_type(value)
            if kind is not None:
                types.setdefault(key, {}).setdefault(kind, []).append(
                    (number, type(value).__name__))
    dropped: set[str] = set()
    converted: dict[str, Callable[[object], object]] = {}  # column -> its values in the copy
    read = columns.all_read()
    for key, kinds in types.items():
        if len(kinds) < 2:
            continue
        if key not in read:
            dropped.add(key)
            notes.append(f"column '{key}' mixes {' and '.join(sorted(kinds))} and the task does "
                         "not read it: left out")
            continue
        bad_kinds, convert, note = _mixed_column(key, kinds, columns, rows)
        for number, type_name, reason in bad_kinds:
            bad_rows.setdefault(number, (key, reason))
        if convert is not None:
            converted[key] = convert
        if note:
            notes.append(note)
    bad += [(number, column, reason) for number, (column, reason) in bad_rows.items()]
    bad.sort(key=lambda item: item[0])
    kept = [(number, row) for number, row in rows if number not in bad_rows]
    if not kept:
        if not bad:
            raise DataError("no data rows: the file holds only blank lines", file=path)
        raise _no_usable_row(path, bad, by_line=True)
    lines = [number for number, _ in kept]
    if not (rewrite or blank or bad or dropped or converted):
        return LocalFile(path, {}, lines, notes=notes, by_line=True)
    text = "".join(json.dumps({k: converted[k](v) if k in converted and v is not None else v
                               for k, v in row.items() if k not in dropped},
                              ensure_ascii=False) + "\n" for _, row in kept)
    return LocalFile(_cleaned_copy(path, text, ".jsonl", cache_dir), {}, lines, bad=bad,
                     notes=notes, by_line=True)


def _mixed_column(key: str, kinds: dict[str, list[tuple[int, str]]], columns: Columns,
                  rows: list[tuple[int, dict]]):
    """How a column the task reads, whose values change type between rows, is read: (bad rows
    as (line, type name, reason), how each value is written in the copy or None, a note or "").
    No such column is left out: the task reads it, and without it every row would be read
    as if it had no value there (a reference list, an id) without a word."""
    kinds_text = " and ".join(sorted(kinds))
    if key in columns.text:
        # Read as text, so the rows of other kinds are bad even when they are most rows.
        return [(number, name, f"not a string ({name})")
                for kind, found in kinds.items() if kind != "text"
                for number, name in found], None, ""
    if key in columns.ids:
        # An id of a number is the number's text, as the formatters make it of a column of
        # numbers; dropping the row instead would take a turn out of the middle of a dialogue
        # and change the history of every later turn.
        return ([(number, name, f"not a string or number ({name})")
                 for kind, found in kinds.items() if kind not in ("text", "a number")
                 for number, name in found], id_text,
                f"column '{key}' mixes {kinds_text}: its numbers are read as their text")
    if key in columns.lists:
        # A reference list: a text value is kept as a list of that one reference (the same
        # list, where the text is a written list such as a CSV cell's '["a", "b"]') rather than
        # made a bad row: that loses neither the row nor its reference.
        # Text that starts as a written list but does not parse ('["a", "b"' cut short) is a
        # bad row, as in a column of text alone, not one reference holding the brackets.
        broken = [(number, "text", "text that starts as a list but is not a JSON or Python "
                                   "list of strings")
                  for number, row in rows if isinstance(value := row.get(key), str)
                  and value.lstrip().startswith("[")
                  and not isinstance(parse_nested_text(value), (list, tuple))]
        return ([(number, name, f"not a list of strings ({name})")
                 for kind, found in kinds.items() if kind not in ("text", "a list")
                 for number, name in found] + broken, _text_as_list,
                f"column '{key}' mixes {kinds_text}: a text value is read as a list of that one "
                "reference")
    # A nested field (answers, translation) the formatter parses itself, from JSON text as a
    # CSV cell gives it: written as JSON text, every row's value reaches it whatever its kind,
    # and is judged as it would be in a file of that kind alone.
    return [], _json_text, ""




def _text_as_list(value) -> object:
    if not isinstance(value, str):
        return value
    parsed = parse_nested_text(value)
    return list(parsed) if isinstance(parsed, (list, tuple)) else [value]


def _json_text(value) -> object:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _miscased_keys(rows: list[tuple[int, dict]],
                   required: tuple[str, ...]) -> dict[int, tuple[str, str]]:
    """Rows that lack a required key other rows have, but have it spelt in other letter case
    ('Text' for 'text'): bad rows that say so, where the formatter would only find the value
    missing. A key no row has is left to the missing-column error, which says the same."""
    present = {key for _, row in rows for key in row}
    bad: dict[int, tuple[str, str]] = {}
    for column in required:
        if column not in present:
            continue
        for number, row in rows:
            if column in row or number in bad:
                continue
            near = [key for key in row if key.strip().lower() == column.lower()]
            if near:
                bad[number] = (column, f"missing value (the row has '{near[0]}': did you mean "
                                       f"'{column}'? keys are case-sensitive)")
    return bad


# ---- CSV ------------------------------------------------------------------------------------

def _csv(path: str, raw: bytes, rewrite: bool, options: dict, required_columns: tuple[str, ...],
         cache_dir: str | None, read_columns: tuple[str, ...]) -> LocalFile:
    # read_columns: every column the task reads (Columns.all_read, the required ones too)
    options = dict(options)
    notes: list[str] = []
    texts: list[tuple[int, str]] = []
    bad: list[tuple[int, str | None, str]] = []
    for number, line in enumerate(_lines(raw), start=1):
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
    quoting = options.get("quoting", csv.QUOTE_MINIMAL)
    line_numbers = [number for number, _ in texts]
    # Records as pandas reads them: a line of only spaces and tabs (the delimiter aside) is
    # no row; any other line is, even one of empty cells (",").
    blank_chars = " \t".replace(delimiter, "")
    names: list[str] | None = None
    header_line = last = 0
    dropped: set[int] = set()
    data_rows = []
    spanning: list[str] = []  # "3-4": data records whose quoted field holds a line break
    dropped_spans: list[str] = []  # the same, left out
    for first, end, cells in _records(path, kept_text, line_numbers, delimiter, quoting):
        if end - first == 1 and not texts[first][1].strip(blank_chars):
            continue
        last = first
        span = f"{line_numbers[first]}-{line_numbers[end - 1]}" if end - first > 1 else None
        if names is None:
            header_line = line_numbers[first]
            names = _check_header(path, cells, header_line, read_columns, notes)
        elif len(cells) > len(names):
            if span:  # a stray '"' merged lines into one record: all of them go
                bad.append((line_numbers[first], None,
                            f"a record over several lines has more fields than the header "
                            f"({len(cells)}, the header {len(names)}: a quoted field opens on "
                            f"line {line_numbers[first]} and closes on line "
                            f"{line_numbers[end - 1]}; a '\"' that should be '\"\"'?)"))
                dropped_spans.append(span)
            else:
                bad.append((line_numbers[first], None,
                            f"has more fields than the header: {len(cells)}, the header "
                            f"{len(names)} (a {_delimiter_name(delimiter)} inside a field that "
                            "is not quoted?)"))
            dropped.update(range(first, end))
        else:
            data_rows.append(line_numbers[first])
            if span:
                spanning.append(span)
    if dropped_spans:  # the summary of bad rows names a record's first line only
        notes.append("left out as one record each (a quoted field over several lines): lines "
                     + ", ".join(dropped_spans[:5]) + (", ..." if len(dropped_spans) > 5 else ""))
    if spanning:
        # Legitimate in CSV, but also what a stray '"' does to the lines after it: said, so
        # that a row count short of the file's lines has its reason in the run's log.
        shown = ", ".join(spanning[:5]) + (", ..." if len(spanning) > 5 else "")
        notes.append(f"{len(spanning)} row(s) span several lines (a quoted field holding a "
                     f"line break): lines {shown}; a '\"' that opens no field merges the "
                     "lines up to the next '\"' into one row this way")
    assert names is not None  # `content` has a line that is not blank
    if quoting != csv.QUOTE_NONE and _never_closed([text for _, text in texts[last:]], delimiter):
        line = line_numbers[last]
        raise DataError(f"a quoted field that starts on line {line} is never closed: every line "
                        "after it would be read as part of that field (a '\"' that should be "
                        "'\"\"' or a quote missing?)", file=path, line=line)
    bad.sort(key=lambda item: item[0])
    if not data_rows:
        if bad:
            raise _no_usable_row(path, bad, by_line=True)
        raise DataError("no data rows: the file has a header line and nothing under it",
                        file=path, line=header_line)
    if delimiter != default:
        notes.append(f"read as {_delimiter_name(delimiter)}-delimited: the header has the "
                     f"task's columns only when split at {_delimiter_name(delimiter)}")
    # pandas names an unnamed column by its position.
    columns = [name if name else f"Unnamed: {position}" for position, name in enumerate(names)]
    # Windows line ends: the copy's lines end in "\n" alone (_lines), and pandas keeps a quoted
    # field's inner "\r\n". Handing over the file as it is read such a field with "\r\n" when
    # nothing else made a copy, and with "\n" when a BOM or a bad line did.
    if not (rewrite or bad or b"\r\n" in raw):
        return LocalFile(path, options, data_rows, notes=notes, by_line=True, columns=columns)
    if dropped:
        kept_text = "".join(text + "\n" for index, (_, text) in enumerate(texts)
                            if index not in dropped)
    compression = _compression(path)
    plain_name = path[:-len(compression)] if compression else path
    suffix = ".tsv" if plain_name.lower().endswith(".tsv") else ".csv"
    return LocalFile(_cleaned_copy(path, kept_text, suffix, cache_dir), options, data_rows,
                     bad=bad, notes=notes, by_line=True, columns=columns)


@contextlib.contextmanager
def _long_fields() -> Iterator[None]:
    previous = csv.field_size_limit(_FIELD_SIZE_LIMIT)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _records(path: str, text: str, line_numbers: list[int], delimiter: str,
             quoting: int) -> Iterator[tuple[int, int, list[str]]]:
    """(first line, end line, cells) of every record: 0-based indexes into text's lines, the
    end excluded (a quoted field may span lines)."""
    with _long_fields():
        reader = csv.reader(io.StringIO(text), delimiter=delimiter, quoting=quoting)
        previous_end = 0
        try:
            for cells in reader:
                yield previous_end, reader.line_num, cells
                previous_end = reader.line_num
        except csv.Error as error:
            line = line_numbers[min(reader.line_num, len(line_numbers)) - 1]
            detail = ("a carriage return (\\r) inside a field that is not quoted, where pandas "
                      "would split the row: quote the field or remove the character"
                      if "new-line character" in str(error) else str(error))
            raise DataError(f"cannot be read as CSV: {detail}", file=path, line=line) from None


def _never_closed(lines: list[str], delimiter: str) -> bool:
    """Whether the record of these lines (the file's last) opens a quoted field and the file
    ends inside it."""
    error = _strict_parse_error("".join(line + "\n" for line in lines), delimiter)
    return error is not None and "unexpected end of data" in str(error)


def _strict_parse_error(text: str, delimiter: str) -> csv.Error | None:
    """What the csv module's strict quoting finds wrong in `text` (None: nothing, or no '"')."""
    if '"' not in text:
        return None
    try:
        with _long_fields():
            for _ in csv.reader(io.StringIO(text), delimiter=delimiter, strict=True):
                pass
    except csv.Error as error:
        return error
    return None


def _check_header(path: str, names: list[str], line: int, read_columns: tuple[str, ...],
                  notes: list[str]) -> list[str]:
    """The header's names, each once. A column the task reads named twice (a required one or
    an optional one such as an id) is refused: pandas renames the second 'summary' to
    'summary.1', and the task would silently read the first. Another repeated name (a column
    the task does not read) gets pandas' '.1' suffix, noted."""
    seen: dict[str, int] = {}
    unique: list[str] = []
    for position, name in enumerate(names, start=1):
        if name and name in seen:
            if name in read_columns:
                raise DataError(f"the header names this column twice (fields {seen[name]} and "
                                f"{position}); only one would be read: rename or remove the "
                                "other", file=path, line=line, column=name)
            copy = 1
            while f"{name}.{copy}" in names or f"{name}.{copy}" in unique:
                copy += 1
            notes.append(f"the header names column '{name}' twice (fields {seen[name]} and "
                         f"{position}); the task does not read it; the second is '{name}.{copy}'")
            name = f"{name}.{copy}"
        seen.setdefault(name, position)
        unique.append(name)
    return unique


def _written_with_quoting(text: str, delimiter: str) -> bool:
    """TSV has no quoting, but pandas and the csv module write a TSV field holding '"' quoted
    (inner quotes doubled). Such a file parses strictly with quoting; a plain TSV whose field
    opens with a quotation ('"Es un día", dijo') does not, and is read without quoting."""
    return '"' in text and _strict_parse_error(text, delimiter) is None


def _has_columns(header: str, delimiter: str, required: tuple[str, ...]) -> bool:
    with _long_fields():
        names = {cell.strip() for cell in next(csv.reader([header], delimiter=delimiter), [])}
    return bool(required) and set(required) <= names


def _delimiter_name(delimiter: str) -> str:
    return {"\t": "tab", ";": "';'", "|": "'|'", ",": "','"}[delimiter]
