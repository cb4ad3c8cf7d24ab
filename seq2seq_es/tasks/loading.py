"""Loading a task's split, from local files or the hub, as a `datasets.Dataset` of examples.

The result has the string columns `source`, `target`, `example_id` and `references` (a list of
strings: every distinct gold answer for QA, the dataset's reference list where it has one, else
`[target]`), so that scoring code never needs to know the task.

Formatting runs as a `datasets` map over the raw split, so it is cached: a second run reuses the
formatted split, and its fingerprint is stable, so the tokenization map after it is reused too.
Bad rows are not dropped inside the map but marked there; the report is computed from the marks,
so a cached run reports the same counts as the first.

Errors a user can cause are `DataError`s naming the file (or hub dataset), and the line or row
and column where there is one. Local JSON-lines and CSV files are checked line by line first
(`local_files.py`: invalid UTF-8, UTF-16, truncated JSON, repeated keys or column names, ragged
CSV rows, mixed-type columns, BOM, delimiters; compressed files decompressed first), and their
problems are reported by 1-based line as an editor shows it; rows of hub datasets and of JSON
documents and parquet files, which have no lines, are 0-based data rows (a SQuAD document's bad
question is also named by its place).
CSV/TSV cells are read as text, with only an empty cell missing. A failure of the file system
around the file (the cache folder) is a `ConfigError` of data.cache_dir, not blamed on the file.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import dataclasses
import functools
import hashlib
import inspect
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, DataError, cache_folder_error
from ..heap import return_freed_memory
from .formatting import (DialogueFormatter, Example, Formatter, Problem,
                         TranslationFormatter, id_text, turn_place)
from .local_files import (COMPRESSED_SUFFIXES, LocalFile, prepare_local_file,
                          uncompressed_name)
from .registry import OWN_KIND, TaskSpec, get_task

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

PARQUET_REVISION = "refs/convert/parquet"
# Part of the formatting map's cache key: datasets hashes the map function and its arguments
# but not the code they call, so a changed formatter would reuse results formatted by the old
# one (it did, once, with NFC). The key therefore holds a digest of the formatting code itself.
FORMAT_VERSION = 2


@functools.lru_cache(maxsize=1)
def formatting_code_digest() -> str:
    """FORMAT_VERSION and a digest of formatting.py and this module's formatting map."""
    from . import formatting
    code = inspect.getsource(formatting) + inspect.getsource(_format_batch)
    return f"{FORMAT_VERSION}-{hashlib.sha256(code.encode()).hexdigest()[:16]}"

# Local data files: suffix -> datasets builder (also what `slurm sweep --data-root` looks for).
LOCAL_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
_PROBLEM_COLUMNS = ("_problem_row", "_problem_column", "_problem_reason")
_OUTPUT_COLUMNS = ("source", "target", "references", "example_id")
_FIRST_ROWS_KEPT = 5


@dataclass
class LoadReport:
    """What loading one split read and what it left out; str() gives the line to print."""

    task: str
    split: str
    origin: str                                  # "file <path>" or "hub <id> ..."
    rows_read: int = 0
    examples: int = 0
    skipped: dict[str, int] = field(default_factory=dict)           # reason -> rows
    skipped_rows: dict[str, list[int]] = field(default_factory=dict)  # reason -> first rows
    notes: list[str] = field(default_factory=list)
    row_unit: str = "0-based data rows"          # or "lines" (1-based) for local text files
    # Both the lines left out before reading and the rows the formatter refused are numbered in
    # row_unit, so the report has one numbering and one count.

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (the run folder's data_report.json)."""
        return {"task": self.task, "split": self.split, "origin": self.origin,
                "rows_read": self.rows_read, "examples": self.examples,
                "skipped_total": self.total_skipped, "skipped": dict(self.skipped),
                "first_skipped": dict(self.skipped_rows), "numbered_by": self.row_unit,
                "notes": list(self.notes)}

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def __str__(self) -> str:
        text = (f"task {self.task}, split {self.split}, from {self.origin}: "
                f"{self.rows_read} rows -> {self.examples} examples")
        if self.skipped:
            label = "lines" if self.row_unit == "lines" else "rows"
            numbered = ("numbered by line in the file" if self.row_unit == "lines"
                        else f"numbered as {self.row_unit}")
            parts = []
            for reason, count in self.skipped.items():
                rows = ", ".join(map(str, self.skipped_rows[reason]))
                more = ", ..." if count > len(self.skipped_rows[reason]) else ""
                one = count == 1 and not more
                parts.append(f"{reason}: {count} ({label[:-1] if one else label} {rows}{more})")
            total = self.total_skipped
            text += (f"; skipped {total} bad row{'s' if total != 1 else ''} ({numbered}): "
                     + "; ".join(parts))
        for note in self.notes:
            text += f"; {note}"
        return text


def load_examples(task: str | TaskSpec, split: str, *, data_files: Mapping[str, str] | None = None,
                  hub_revision: str | None = None, cache_dir: str | None = None,
                  max_samples: int | None = None, skip_bad_rows: bool = True,
                  max_history_turns: int | None = None,
                  columns: Mapping[str, str] | None = None) -> tuple[datasets.Dataset, LoadReport]:
    """Load one split of a task as (datasets.Dataset of examples, LoadReport).

    data_files maps our split names to local files; a split not in it comes from the hub.
    max_samples keeps the first N examples (the report still counts the whole split).
    max_history_turns caps dialogue histories at the last K turns (a Python-only option: runs
    read whole histories, cut from the left at data.max_source_length).
    columns renames a data source's columns to the task's ({"article": "text"}: data.columns).
    Raises DataError for a missing or unreadable file, a missing column, a hub failure, a split
    with no usable row, and, with skip_bad_rows=False, the first bad row.
    """
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    _check_request(spec, split, data_files, max_samples)
    formatter = _formatter_for(spec, max_history_turns)
    check_column_map(spec, columns)
    path = (data_files or {}).get(split)
    local: LocalFile | None = None
    if path is not None:
        file = str(path)
        raw, local = read_task_file(formatter, file, cache_dir, columns,
                                    own_task=spec.kind == OWN_KIND)
        report = LoadReport(spec.name, split, f"file {file}", notes=list(local.notes))
    elif not spec.hub_id:
        raise DataError(f"task {spec.name} is your own: it reads local files and none is given "
                        f"for its {split} split (data.{split}_file), nor a data.hub_dataset")
    else:
        file = None
        raw, origin, notes = _read_hub(spec, split, hub_revision, cache_dir)
        report = LoadReport(spec.name, split, origin, notes=notes)
        raw = _renamed(raw, columns, file, origin, formatter.required_columns())
        _check_columns(raw, formatter, file, report.origin, columns,
                       own_task=spec.kind == OWN_KIND)

    marked = _format(raw, formatter, split, _left_out_before(local))
    left_out = list(local.bad) if local else []
    report.rows_read = raw.num_rows + len(left_out)
    # Where data row i is: its line (text files), its row of the JSON document (where rows were
    # left out), or i itself.
    by_line = local is not None and local.by_line
    place_of_row = (local.line_of_row if by_line else local.row_of_row) if local else None
    if isinstance(formatter, DialogueFormatter):
        note = _turn_order_note(raw, formatter, place_of_row, by_line)
        if note:
            report.notes.append(note)
    if by_line and place_of_row is None:
        # The line map was lost (pandas split a record differently): formatter rows are data
        # rows, left-out lines stay lines; the known line comes first.
        problems = left_out + _problems(marked, None)
        if left_out:
            report.notes.append("the lines left out before reading are numbered by line, the "
                                "other bad rows as 0-based data rows")
    else:
        problems = sorted(left_out + _problems(marked, place_of_row), key=lambda p: p[0])
        if by_line:
            report.row_unit = "lines"
    for place, column, reason in problems:
        _count(report, f"column '{column}' {reason}" if column else _reason_kind(reason), place)
    if problems and not skip_bad_rows:
        place, column, reason = problems[0]
        named_by_line = by_line and (place_of_row is not None or bool(left_out))
        name = local.row_names.get(place) if local and not named_by_line else None
        unit = ("" if named_by_line else f" ({name})" if name
                else " (rows are 0-based data rows)")
        where = {"line": place} if named_by_line else {"row": place}
        # The whole split was checked: say whether fixing this row is enough for a rerun.
        more = len(problems) - 1
        others = (f"; {more} more bad row{'s' if more > 1 else ''} after it (the skip report of "
                  "--data.skip_bad_rows true lists them)" if more else "")
        raise DataError(f"{reason}{_in_hub(report, file)}{unit}{others}; pass "
                        "--data.skip_bad_rows true to skip such rows", file=file, column=column,
                        **where)
    examples = marked.filter(_is_example, input_columns="_problem_reason", batched=True)
    examples = examples.remove_columns(list(_PROBLEM_COLUMNS))
    if examples.num_rows == 0:
        why = ""
        if isinstance(formatter, DialogueFormatter) and not report.total_skipped:
            # Rows were fine: what is missing is a reply to predict.
            why = ("; a dialogue gives an example for each turn after its first, and a "
                   "speaker's consecutive turns merge into one, so every dialogue here has a "
                   "single turn (one speaker, or one row per dialogue id)")
        raise DataError(f"no usable example{_in_hub(report, file)}: {report}{why}", file=file)
    if max_samples is not None and max_samples < examples.num_rows:
        examples = examples.select(range(max_samples))
        report.notes.append(f"kept the first {max_samples} examples")
    report.examples = examples.num_rows
    return_freed_memory()  # the file check's and the readers' copies, kept by the allocators
    return examples, report


def _check_request(spec: TaskSpec, split: str, data_files: Mapping[str, str] | None,
                   max_samples: int | None) -> None:
    if split not in spec.splits:
        raise DataError(f"task '{spec.name}' has no split '{split}'; "
                        f"splits: {', '.join(spec.splits)}")
    unknown = sorted(set(data_files or {}) - set(spec.splits))
    if unknown:
        raise DataError(f"data files given for unknown split(s) {', '.join(unknown)}; "
                        f"splits: {', '.join(spec.splits)}")
    if max_samples is not None and max_samples < 1:
        raise ConfigError(f"data.max_{'train' if split == 'train' else 'eval'}_samples",
                          f"must be at least 1, got {max_samples}")


def _formatter_for(spec: TaskSpec, max_history_turns: int | None) -> Formatter:
    if max_history_turns is None:
        return spec.formatter
    # load_examples' own argument, no config key (there is no data.max_history_turns to name)
    if not isinstance(spec.formatter, DialogueFormatter):
        raise ValueError(f"load_examples(max_history_turns=...) applies to dialogue tasks, not "
                         f"to '{spec.name}'")
    if max_history_turns < 1:
        raise ValueError(f"load_examples(max_history_turns=...) must be at least 1, got "
                         f"{max_history_turns}")
    return replace(spec.formatter, max_history_turns=max_history_turns)


def _in_hub(report: LoadReport, file: str | None) -> str:
    """Where a problem is, for messages whose DataError has no file to name."""
    return "" if file is not None else f" in {report.origin}"


# ---------------------------------------------------------------------------------------------
# Reading

def check_data_file(key: str, path: str) -> None:
    """A data file named by config key `key`, checked before anything loads (and before a job is
    submitted): it exists, is a file, is not empty, and its extension has a reader. Refused by
    the key."""
    if not os.path.exists(path):
        raise ConfigError(key, f"file {path} does not exist")
    if not os.path.isfile(path):
        raise ConfigError(key, f"{path} is not a file")
    if os.path.getsize(path) == 0:  # said by its key now, not after the other splits are read
        raise ConfigError(key, f"file {path} is empty")
    try:
        builder_for(path)
    except DataError as exc:
        raise ConfigError(key, str(exc)) from None


def builder_for(path: str) -> tuple[str, dict[str, Any]]:
    extension = os.path.splitext(uncompressed_name(path.lower()))[1]
    if extension not in LOCAL_FILE_BUILDERS:
        raise DataError(f"unsupported file extension '{extension or '(none)'}'; use one of "
                        f"{', '.join(LOCAL_FILE_BUILDERS)} (all but .parquet may be compressed: "
                        f"{', '.join(COMPRESSED_SUFFIXES)})", file=path)
    # TSV has no quoting (a field holds no tab or newline), so a '"' that opens a field is text: read
    # with CSV quoting, a summary starting with a quotation swallowed the lines after it into one row.
    tsv = {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
    return LOCAL_FILE_BUILDERS[extension], (tsv if extension == ".tsv" else {})


def read_task_file(formatter: Formatter, path: str, cache_dir: str | None = None,
                   columns: Mapping[str, str] | None = None, *, own_task: bool = False
                   ) -> tuple[datasets.Dataset, LocalFile]:
    """A local data file's rows as training reads them (any of LOCAL_FILE_BUILDERS' formats),
    its columns renamed by `columns` (the file's name -> the task's) and those `formatter` needs
    checked; the LocalFile maps rows back to lines. Also what `score --task` scores against, so
    that both count the same rows."""
    in_file = {task: file for file, task in (columns or {}).items()}

    def named(names) -> tuple[str, ...]:  # the task's column names as the file has them
        return tuple(in_file.get(column, column) for column in names if isinstance(column, str))

    raw, local = _read_local_file(
        path, named(formatter.required_columns()), cache_dir, named(formatter.text_columns()),
        read=named(formatter_columns(formatter)),
        ids=named(formatter.id_columns()), lists=named(formatter.list_columns()))
    raw = _renamed(raw, columns, path, f"file {path}", formatter.required_columns())
    _check_columns(raw, formatter, path, f"file {path}", columns, own_task=own_task)
    return raw, local


def formatter_columns(formatter: Formatter) -> list[str]:
    """Every column `formatter` reads (required or not): its required ones and every field
    named *column (references_column, id_column, ...)."""
    names = [getattr(formatter, f.name) for f in dataclasses.fields(formatter)
             if f.name.endswith("column")]
    return [name for name in dict.fromkeys([*formatter.required_columns(), *names])
            if isinstance(name, str)]


def task_columns(spec: TaskSpec) -> list[str]:
    """Every column the task's formatter reads (required or not), by its field names."""
    return formatter_columns(spec.formatter)


def check_column_map(spec: TaskSpec, columns: Mapping[str, str] | None) -> None:
    """data.columns may only rename to columns the task reads."""
    known = task_columns(spec)
    for file_name, task_name in (columns or {}).items():
        if task_name not in known:
            raise ConfigError("data.columns", f"{file_name}={task_name}: '{task_name}' is no "
                              f"column of task {spec.name}; its columns: {', '.join(known)}")


def _renamed(raw, columns: Mapping[str, str] | None, file: str | None, origin: str,
             required: tuple[str, ...] = ()):
    """`raw` with data.columns' renames of the columns it has. A pair whose file-side name the
    data lacks is refused where the task needs its column: with the task's own name present
    it was read in silence instead (a misspelt `titel=summary` trained on the file's summary),
    without it the missing-column error claimed a rename that never happened."""
    found = raw.column_names
    for old, new in (columns or {}).items():
        if old in found or (new not in found and new not in required):
            continue  # renamed below; or a column the task can do without, absent
        near = difflib.get_close_matches(old, found, n=1, cutoff=0.6)
        then = (f"so the data's own '{new}' would be read instead" if new in found
                else f"nor a column '{new}'")
        raise ConfigError("data.columns", f"{old}={new}: {origin} has no column '{old}'"
                          + (f" (did you mean '{near[0]}'?)" if near else "")
                          + f", {then}; columns found: {', '.join(found) or '(none)'}")
    renames = {old: new for old, new in (columns or {}).items() if old in found}
    clash = [new for old, new in renames.items() if new in raw.column_names and new not in renames]
    if clash:
        where = "" if file is not None else f" in {origin}"
        raise DataError(f"data.columns renames a column to '{clash[0]}', which the data has "
                        f"already{where}; leave that pair out or drop the column", file=file,
                        column=clash[0])
    return raw.rename_columns(renames) if renames else raw


def _read_local_file(path: str, required: tuple[str, ...], cache_dir: str | None,
                     text_columns: tuple[str, ...] = (), *, read: tuple[str, ...] = (),
                     ids: tuple[str, ...] = (),
                     lists: tuple[str, ...] = ()) -> tuple[Any, LocalFile]:
    if not os.path.exists(path):
        raise DataError("file does not exist", file=path)
    if not os.path.isfile(path):
        raise DataError("is not a file", file=path)
    if os.path.getsize(path) == 0:
        raise DataError("file is empty", file=path)
    builder, options = builder_for(path)
    try:
        local = prepare_local_file(path, builder, options, required, cache_dir=cache_dir,
                                   text_columns=text_columns, read_columns=read,
                                   id_columns=ids, list_columns=lists)
        options = dict(local.options)
        if builder == "csv":
            options.update(_csv_as_text(local))
        raw = _load_file(local.path, builder, options, cache_dir, shown_as=path)
        # A JSON file may hold its rows under a top-level "data" key.
        if (builder == "json" and "data" in raw.column_names
                and not set(required) <= set(raw.column_names)):
            raw = _load_file(local.path, builder, {"field": "data"}, cache_dir, shown_as=path)
    except OSError as exc:  # reading the file, or writing its cleaned copy or the cache
        raise _file_system_failure(exc, path, cache_dir) from exc
    if local.line_of_row is not None and len(local.line_of_row) != raw.num_rows:
        local.line_of_row = None  # e.g. quoted CSV fields spanning lines that pandas read apart
    if local.row_of_row is not None and len(local.row_of_row) != raw.num_rows:
        local.row_of_row = None
    return raw, local


# pandas options under which a cell is the text it holds; only an empty cell is missing.
CSV_CELLS_AS_TEXT = {"keep_default_na": False, "na_values": [""]}


def _csv_as_text(local: LocalFile) -> dict[str, Any]:
    """Builder options that read every CSV/TSV cell as the text it is: pandas would turn "NA",
    "None", "nan" or "null" into a missing value and "007" into the number 7. Only an empty cell
    is missing (the formatter reports it as a missing value)."""
    import datasets

    options: dict[str, Any] = dict(CSV_CELLS_AS_TEXT)
    columns = local.columns
    if columns is not None:  # the names local_files read from the header, passed to pandas as is
        options.update(column_names=columns, header=0)
    else:  # local_files gave no header names: pandas reads the header
        columns = _csv_header(local.path, local.options)
    if columns:
        options["features"] = datasets.Features(
            {name: datasets.Value("string") for name in columns})
    return options


def _csv_header(path: str, options: dict[str, Any]) -> list[str] | None:
    import pandas as pd

    try:
        frame = pd.read_csv(path, nrows=0, sep=options.get("delimiter", ","),
                            quoting=options.get("quoting", csv.QUOTE_MINIMAL))
    except Exception:  # the builder's read reports what is wrong with the file
        return None
    return [str(name) for name in frame.columns]


def _file_system_failure(exc: OSError, path: str, cache_dir: str | None) -> Exception:
    """An OSError while loading: the data file's own (unreadable) is a DataError; any other
    (a cache folder that is a file, not writable, or full) is not the file's fault."""
    if exc.filename is not None and _same_path(exc.filename, path):
        return DataError(f"cannot be read: {exc.strerror or exc}", file=path)
    return cache_folder_error(exc, f"reading {path}", cache_dir)


def _same_path(a: Any, b: str) -> bool:
    try:
        return os.path.realpath(os.fsdecode(a)) == os.path.realpath(b)
    except (TypeError, ValueError):
        return False


def _load_file(path: str, builder: str, options: dict[str, Any], cache_dir: str | None,
               shown_as: str | None = None):
    import datasets

    try:
        with _quiet_readers():
            return datasets.load_dataset(builder, data_files={"data": path}, split="data",
                                         cache_dir=cache_dir, **options)
    except Exception as exc:  # the library raises many types for unreadable content
        system = _system_error(exc)
        if system is not None:  # not the content: the OS, about this file or the cache
            raise system from exc
        detail = _library_message(exc)
        if builder == "csv":  # local_files checked the text: what is left is a broken row
            raise DataError(f"cannot be read as CSV: {detail.removeprefix(_PANDAS_PREFIX)}",
                            file=shown_as or path) from exc
        if builder == "parquet" and _parquet_rows(path) == 0:
            raise DataError("holds no rows (a Parquet file with its columns and 0 rows)",
                            file=shown_as or path) from exc
        kind = {"json": "JSON lines or a JSON list", "parquet": "Parquet"}[builder]
        # local_files checked JSON files first, so this is a shape it does not know; the
        # reader's own words say where, ours what was expected.
        raise DataError(f"content does not match the extension: cannot be read as {kind} "
                        f"(rows as objects, one per line or in a list); the reader says: "
                        f"{detail}", file=shown_as or path) from exc


_PANDAS_PREFIX = "Error tokenizing data. C error: "


def _parquet_rows(path: str) -> int | None:
    """A Parquet file's row count from its footer; None when it has no readable footer (the
    datasets reader fails on 0 rows with "BatchSize must be greater than 0")."""
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(path).num_rows
    except Exception:  # not Parquet at all: the caller's message says so
        return None


@contextlib.contextmanager
def _quiet_readers() -> Iterator[None]:
    """Silence the datasets readers' own log line ("Failed to read file ... with error ...")
    while we read: the error we raise says it once, with the file and line."""
    readers = logging.getLogger("datasets.packaged_modules")
    level = readers.level
    readers.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        readers.setLevel(level)


def _system_error(exc: BaseException | None) -> OSError | None:
    """The OS error (one with an errno: no such folder, permission, disk full) that `exc` is or
    was raised from, if any. pyarrow raises OSError without an errno for corrupt content; that
    is the file's."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        exc = exc.__cause__
    return None


def _library_message(exc: BaseException) -> str:
    """The message of the exception that caused `exc`, which names the actual problem
    (datasets wraps parse errors in a generic "An error occurred while generating the dataset")."""
    while exc.__cause__ is not None and str(exc.__cause__).strip():
        exc = exc.__cause__
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_hub(spec: TaskSpec, split: str, revision: str | None, cache_dir: str | None):
    """(raw split, origin for the report, notes) from the hub, or a DataError saying what to try."""
    config, hub_split = spec.hub_config_for(split), spec.splits[split]
    describe = f"hub {spec.hub_id}" + (f" ({config})" if config else "") + f" split {hub_split}"
    if revision == PARQUET_REVISION:
        try:
            return _read_parquet_export(spec.hub_id, config, hub_split, describe, cache_dir)
        except Exception as exc:
            raise DataError(_hub_failure(spec, split, describe, revision, exc)) from exc
    try:
        raw = _load_hub(spec.hub_id, config, hub_split, revision, cache_dir)
        return raw, describe + (f" @ {revision}" if revision else ""), []
    except Exception as exc:
        if not _is_script_refusal(exc):
            raise DataError(_hub_failure(spec, split, describe, revision, exc)) from exc
        if revision is not None:
            raise DataError(_script_advice(spec, split, describe, tried=revision)) from exc
    # datasets 4+ no longer runs loading scripts; the hub's automatic parquet export of the
    # same dataset usually loads instead.
    logger.warning("%s is script-based; trying its parquet export (%s)", describe,
                   PARQUET_REVISION)
    try:
        raw, origin, notes = _read_parquet_export(spec.hub_id, config, hub_split, describe,
                                                  cache_dir)
    except Exception as exc:
        raise DataError(_script_advice(spec, split, describe, tried=PARQUET_REVISION,
                                       detail=_library_message(exc))) from exc
    return raw, origin, ["the dataset is script-based: read its parquet export", *notes]


def _read_parquet_export(hub_id: str, config: str | None, split: str, describe: str,
                         cache_dir: str | None):
    """The hub's parquet export, laid out as <config>/<split>/NNNN.parquet.

    Its branch has no dataset card naming the configs, so the files are given explicitly.
    Splits too large to convert whole are exported as <config>/partial-<split>/ (their first
    rows only), which the report says. Exports made before that layout (still on datasets such
    as GEM/wiki_lingua) hold flat files, <config>/<name>-<split>.parquet or sharded
    <config>/<name>-<split>-NNNNN-of-NNNNN.parquet; `-<split>` keeps test from matching
    sampled_test.
    """
    folder, origin = config or "default", f"{describe} @ {PARQUET_REVISION}"
    # The converter moves every split of a large dataset to partial-<split>/ and cuts each at a
    # few GB, so a small split there is whole: say what is known, with the row count beside it.
    partial = (f"read from the partial parquet export (partial-{split}/): a split larger than the "
               f"hub converts holds only its first rows; compare the row count with the dataset card")
    layouts = (([f"{folder}/{split}/*.parquet"], []),
               ([f"{folder}/partial-{split}/*.parquet"], [partial]),
               ([f"{folder}/*-{split}.parquet", f"{folder}/*-{split}-*-of-*.parquet"], []))
    for number, (patterns, notes) in enumerate(layouts, 1):
        try:
            return _load_parquet_files(hub_id, patterns, split, cache_dir), origin, notes
        except FileNotFoundError:
            if number == len(layouts):
                raise


def _load_parquet_files(hub_id: str, patterns: list[str], split: str, cache_dir: str | None):
    """The split from the files matching any of `patterns` (FileNotFoundError if none does)."""
    import datasets

    return datasets.load_dataset(hub_id, revision=PARQUET_REVISION, split=split,
                                 data_files={split: patterns}, cache_dir=cache_dir)


def _load_hub(hub_id: str, config: str | None, split: str, revision: str | None,
              cache_dir: str | None):
    import datasets

    return datasets.load_dataset(hub_id, config, split=split, revision=revision,
                                 cache_dir=cache_dir)


def _is_script_refusal(exc: BaseException) -> bool:
    return "scripts are no longer supported" in str(exc)


def _local_file_advice(spec: TaskSpec, split: str) -> str:
    return (f"give a local file (jsonl/json/csv/parquet) with the columns "
            f"{', '.join(spec.columns)} via --data.{split}_file")


def _script_advice(spec: TaskSpec, split: str, describe: str, *, tried: str,
                   detail: str | None = None) -> str:
    message = (f"{describe} is a script-based dataset, which datasets 4+ no longer runs; "
               f"revision {tried} did not load either")
    if detail:
        message += f" ({detail})"
    suggestion = (f"try --data.hub_revision {PARQUET_REVISION} (the hub's parquet export), or "
                  if tried != PARQUET_REVISION else
                  "convert it with datasets 3 (load it, then to_parquet or to_json), and ")
    return f"{message}; {suggestion}{_local_file_advice(spec, split)}"


def _hub_failure(spec: TaskSpec, split: str, describe: str, revision: str | None,
                 exc: BaseException) -> str:
    at = f" @ {revision}" if revision else ""
    skip = (" (in training, or --train.eval_test false: no test scores)" if split == "test"
            else "")
    return (f"could not load {describe}{at}: {_library_message(exc)}. Without the hub (no "
            f"network, HF_HUB_OFFLINE=1) or without this split there, "
            f"{_local_file_advice(spec, split)}{skip}")


# ---------------------------------------------------------------------------------------------
# Schema checks, before any row is formatted

def _check_columns(raw, formatter: Formatter, file: str | None, origin: str,
                   columns: Mapping[str, str] | None = None, *, own_task: bool = False) -> None:
    found = raw.column_names
    missing = [column for column in formatter.required_columns() if column not in found]
    if missing:  # every one at once: a file is fixed in one go, not one rerun per column
        where = "" if file is not None else f" in {origin}"
        names = ", ".join(f"'{column}'" for column in missing)
        renamed = (f"; data.columns renamed {', '.join(f'{a}={b}' for a, b in columns.items())}"
                   if columns else "; data.columns (e.g. article=text) renames a file's columns "
                   "to the task's" if file is not None else "")
        flat = _flat_translation_hint(formatter, found)
        if flat:
            renamed = flat  # data.columns cannot build the nested column: say what can
        elif own_task and not columns:  # your own task names its columns itself
            renamed = ("; your own task reads the columns data.source_column and "
                       "data.target_column name: set them to the file's")
        raise DataError(f"missing column{'s' if len(missing) > 1 else ''} {names}{where} (the "
                        f"task needs {', '.join(formatter.required_columns())}); columns found: "
                        f"{', '.join(found) or '(none)'}{_looks_like_json_hint(found)}"
                        f"{_near_names(missing, found, columns)}{renamed}",
                        file=file, column=missing[0])
    for column, keys in formatter.required_keys().items():
        present = _struct_keys(raw.features[column])
        if present is None:  # free-form values (JSON text, mixed types): checked per row
            continue
        for key in keys:
            if key not in present:
                where = "" if file is not None else f" in {origin}"
                raise DataError(f"column '{column}' has no key '{key}'{where}; keys found: "
                                f"{', '.join(present) or '(none)'}",
                                file=file, column=f"{column}.{key}")


def _flat_translation_hint(formatter: Formatter, found: list[str]) -> str:
    """For a translation file with one column per language (es, en) instead of the nested
    `translation` column: a task of the user's own reads it, which data.columns cannot."""
    if not isinstance(formatter, TranslationFormatter):
        return ""
    source, target = formatter.source_lang, formatter.target_lang
    if source not in found or target not in found:
        return ""
    return (f"; for a file with one column per language, train a task of your own on it: "
            f"--task my-translation --data.source_column {source} --data.target_column "
            f"{target} --data.metrics bleu,chrf")


def _struct_keys(feature) -> list[str] | None:
    """The keys of a struct-like column's schema, or None when the schema does not say."""
    import datasets

    if isinstance(feature, datasets.Translation):
        return list(feature.languages)
    if isinstance(feature, datasets.TranslationVariableLanguages):
        return None
    if isinstance(feature, dict):
        return list(feature)
    return None


def _near_names(missing: list[str], found: list[str], columns: Mapping[str, str] | None) -> str:
    """ "; did you mean 'titular' for 'Titular'?" for each missing column that a found column
    matches but for letter case (or spaces around it): names are case-sensitive, and the two
    look alike in a listing."""
    in_file = {task: file for file, task in (columns or {}).items()}
    hints = []
    for column in missing:
        wanted = in_file.get(column, column)  # as the file should name it
        near = [name for name in found
                if name != wanted and name.strip().lower() == wanted.strip().lower()]
        if near:
            hints.append(f"'{near[0]}' for '{wanted}'")
    if not hints:
        return ""
    return (f"; did you mean {', '.join(hints)}? (column names are case-sensitive: rename the "
            "column in the file or with data.columns)")


def _looks_like_json_hint(columns: list[str]) -> str:
    if any(c.lstrip().startswith(("{", "[")) for c in columns):
        return " (the file looks like JSON: give it a .jsonl or .json extension)"
    return ""


# ---------------------------------------------------------------------------------------------
# Formatting as a cached map

def _output_features():
    import datasets

    return datasets.Features({
        "source": datasets.Value("string"),
        "target": datasets.Value("string"),
        "references": datasets.List(datasets.Value("string")),
        "example_id": datasets.Value("string"),
        "_problem_row": datasets.Value("int64"),
        "_problem_column": datasets.Value("string"),
        "_problem_reason": datasets.Value("string"),
    })


def _left_out_before(local: LocalFile | None) -> tuple[int, ...]:
    """For each row left out before `datasets` read the file, how many of the rows it read
    come before it (sorted). A row without an id column is named `split-N` by its data row in
    the user's file: a row left out there (`"text": 5`) shifted every later name by one, where
    the formatter's bad rows (`"text": null`) kept them, so predictions lost their rows."""
    import bisect

    if local is None or not local.bad:
        return ()
    kept = local.line_of_row if local.by_line else local.row_of_row
    if kept is None:  # the map back to the file is unknown: names as read
        return ()
    return tuple(sorted(bisect.bisect_left(kept, place) for place, _, _ in local.bad))


def _turn_order_note(raw, formatter: DialogueFormatter, place_of_row: list[int] | None,
                     by_line: bool) -> str | None:
    """The note for dialogues read in file order although the file has an order column: a row
    of theirs holds no whole number there (a missing value, '3a', full-width digits). Their
    turns would be scrambled in silence where the file is shuffled."""
    order, dialogue = formatter.order_column, formatter.dialogue_column
    if order not in raw.column_names or dialogue not in raw.column_names:
        return None
    values = raw.select_columns([order, dialogue]).to_dict()
    unordered = [row for row, value in enumerate(values[order]) if turn_place(value) is None]
    if not unordered:
        return None
    first = unordered[0]
    # named as the formatter names them (a dialogue id 7.0 is '7')
    dialogues = list(dict.fromkeys(str(id_text(values[dialogue][row])) for row in unordered))
    place = place_of_row[first] if place_of_row is not None else first
    where = f"line {place}" if by_line and place_of_row is not None else f"data row {place}"
    named = ", ".join(repr(name) for name in dialogues[:3]) + (", ..." if len(dialogues) > 3
                                                                 else "")
    return (f"column '{order}': {len(unordered)} row(s) hold no whole number (first: {where}, "
            f"{values[order][first]!r}); the turns of their {len(dialogues)} dialogue(s) "
            f"({named}) are read in the file's order, not by '{order}'")


def _format(raw, formatter: Formatter, split: str, left_out_before: tuple[int, ...] = ()):
    # Dialogue examples span rows, so the whole split is one batch there.
    batch_size = None if isinstance(formatter, DialogueFormatter) else 1000
    return raw.map(_format_batch, batched=True, batch_size=batch_size, with_indices=True,
                   remove_columns=raw.column_names, features=_output_features(),
                   fn_kwargs={"formatter": formatter, "split": split,
                              "format_version": formatting_code_digest(),
                              "left_out_before": left_out_before},
                   desc=f"Formatting {split}")


def _format_batch(batch: dict[str, list], indices: list[int], *, formatter: Formatter,
                  split: str, format_version: str,
                  left_out_before: tuple[int, ...] = ()) -> dict[str, list]:
    import bisect

    del format_version  # only part of the cache key
    columns = list(batch)
    rows = [dict(zip(columns, values)) for values in zip(*(batch[c] for c in columns))]
    out: dict[str, list] = {name: [] for name in (*_OUTPUT_COLUMNS, *_PROBLEM_COLUMNS)}
    # Row i of what was read is data row i + (rows left out before it) of the user's file
    id_indices = [index + bisect.bisect_right(left_out_before, index) for index in indices] \
        if left_out_before else None
    for item in formatter.format_rows(rows, indices, split, id_indices):
        if isinstance(item, Example):
            values = (item.source, item.target, list(item.references), item.example_id,
                      -1, "", "")
        else:
            assert isinstance(item, Problem)
            values = ("", "", [], "", item.row, item.column, item.reason)
        for name, value in zip(out, values):
            out[name].append(value)
    return out


def _is_example(reasons: list[str]) -> list[bool]:
    return [reason == "" for reason in reasons]


def _reason_kind(reason: str) -> str:
    """The reason without its details (byte values, columns), to group skipped lines by."""
    for separator in (" (", ": "):
        reason = reason.split(separator, 1)[0]
    return reason


def _count(report: LoadReport, key: str, row: int) -> None:
    report.skipped[key] = report.skipped.get(key, 0) + 1
    kept = report.skipped_rows.setdefault(key, [])
    if len(kept) < _FIRST_ROWS_KEPT:
        kept.append(row)


def _problems(marked, place_of_row: list[int] | None) -> list[tuple[int, str, str]]:
    """(row, column, reason) of every row the formatter refused, in order.

    With `place_of_row` a data row is numbered by its place in the file: its 1-based line
    (local text files) or its row of a JSON document some rows of which were left out."""
    import pyarrow.compute as pc

    reasons = marked.data.column("_problem_reason")
    bad = pc.indices_nonzero(pc.not_equal(reasons, "")).to_pylist()
    if not bad:
        return []
    problems = marked.select(bad).select_columns(list(_PROBLEM_COLUMNS)).to_dict()
    rows = problems["_problem_row"]
    if place_of_row is not None:
        rows = [place_of_row[row] for row in rows]
    return sorted(zip(rows, problems["_problem_column"], problems["_problem_reason"]))
