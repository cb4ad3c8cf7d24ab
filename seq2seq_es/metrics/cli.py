"""`seq2seq-es score`: score prediction files against reference files, print JSON.

    seq2seq-es score --metric rouge [--metric meteor ...] | --task T  [--mode spanish|paper]
                     --predictions FILE --references FILE [--sources FILE]

Files hold one example per line (UTF-8; a final newline and Windows line endings are fine).
A references file ending in ``.jsonl`` holds one JSON value per line: a string, or a list of
strings for several references. With --task, the task's own data file (.jsonl, .json, .csv, .tsv,
.parquet) gives each example's references as a run scores them; predictions may then be one per
scored example or one per data row (predict's output for the same file). Errors name the file
and its 1-based line. Every line of a plain file is one example, empty lines included, so an
empty prediction is scored rather than skipped. Files are paired line by line; where both carry
an "example_id" per line, the ids must agree at every line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from seq2seq_es.errors import (ConfigError, DataError, Seq2SeqEsError, comma_names,
                               json_problem)
from seq2seq_es.line_files import has_cr_line_ends, split_lines

EM_CONVENTION_CHOICES = ("strict", "squad", "mlqa-es", "loose")
F1_CONVENTION_CHOICES = ("words", "squad", "mlqa-es", "whitespace-membership")

METRIC_NAMES_HELP = "rouge, bleu, chrf, sari, exact_match, meteor, token_f1"


def _read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError("file not found", file=path) from None
    except OSError as error:
        raise DataError(f"cannot read it ({error.strerror})", file=path) from None


def read_lines(path: str) -> list[str]:
    """One string per line (line_files.split_lines: only "\\n" ends a line)."""
    raw = _read_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError("not valid UTF-8", file=path,
                        line=raw[:error.start].count(b"\n") + 1) from None
    if has_cr_line_ends(text):  # read as predict reads it: each "\r" ends a line
        text = text.replace("\r", "\n")
    return split_lines(text)


def _jsonl_values(path: str) -> list[tuple[int, object]]:
    """(line number, value) of each JSON line; blank lines are passed over, as training's reader
    passes them over (a file ending in an empty line was refused as "not valid JSON")."""
    values = []
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            values.append((number, json.loads(line)))
        except json.JSONDecodeError as error:
            raise DataError(f"not valid JSON ({json_problem(error)})", file=path,
                            line=number) from None
    return values


def is_json_lines(path: str) -> bool:
    """A JSON-lines file by its name, in any case (`R.JSONL` was read as plain lines and its JSON
    markup scored as text)."""
    return path.lower().endswith(".jsonl")


def example_ids(path: str) -> list[str] | None:
    """The "example_id" of every line of a JSON-lines file (what evaluate's predictions.jsonl
    writes), as strings; None where the file is not JSON lines or a line has none."""
    if not is_json_lines(path):
        return None
    ids = []
    for _, value in _jsonl_values(path):
        if not isinstance(value, dict) or value.get("example_id") is None:
            return None
        ids.append(str(value["example_id"]))
    return ids


def check_same_examples(first: tuple[str, list[str] | None],
                        second: tuple[str, list[str] | None]) -> None:
    """Refuse two files whose lines carry example ids that do not pair up line by line (score
    lines files up by position: a reordered file was scored against the wrong references,
    silently). A file that repeats an id is said on stderr (an example scored twice, or a data
    set whose ids repeat: training does not refuse those, so neither does rescoring them)."""
    for path, ids in (first, second):
        seen: dict[str, int] = {}
        repeats = []
        for line, example_id in enumerate(ids or [], start=1):
            if example_id in seen:
                repeats.append(f"line {line} repeats example_id {example_id!r} of line "
                               f"{seen[example_id]}")
            seen.setdefault(example_id, line)
        if repeats:
            print(f"note: {path}: {len(repeats)} line(s) repeat an earlier example_id "
                  f"({repeats[0]}); each line is scored as an example of its own",
                  file=sys.stderr)
    (first_path, first_ids), (second_path, second_ids) = first, second
    if first_ids is None or second_ids is None:
        return
    for line, (one, other) in enumerate(zip(first_ids, second_ids), start=1):
        if one != other:
            raise DataError(f"example_id {one!r} where {second_path} has {other!r} at the same "
                            "line; score pairs the files' lines in order: give them in the same "
                            "order", file=first_path, line=line)


def read_predictions(path: str) -> list[str]:
    """Plain lines, or for ``.jsonl`` a string or an object with a "prediction" string per line
    (what `predict --output X.jsonl` and evaluate's predictions.jsonl hold)."""
    if not is_json_lines(path):
        return read_lines(path)
    predictions = []
    for row, value in _jsonl_values(path):
        if isinstance(value, dict):
            value = value.get("prediction")
        if not isinstance(value, str):
            raise DataError('expected a string or an object with a "prediction" string',
                            file=path, line=row)
        predictions.append(value)
    return predictions


def read_sources(path: str) -> list[str]:
    """Plain lines, or for ``.jsonl`` a string or an object with "scored_source" or "source"
    per line (evaluate's predictions.jsonl: what SARI compared with)."""
    if not is_json_lines(path):
        return read_lines(path)
    sources = []
    for row, value in _jsonl_values(path):
        if isinstance(value, dict):
            value = value.get("scored_source", value.get("source"))
        if not isinstance(value, str):
            raise DataError('expected a string or an object with "source" or "scored_source"',
                            file=path, line=row)
        sources.append(value)
    return sources


@dataclass
class TaskReferences:
    """What a run of a task scores in its data file: each example's references, and which of the
    file's data rows gave them (`scored_rows`, where a row gives at most one example: every
    task but dialogue), to line up predict's output, which has one prediction per row."""

    references: list[list[str]]
    rows: int
    scored_rows: list[int] | None
    # The file's rows as a reader of the whole file counts them, with those training leaves
    # out before reading (a column of mixed types, a repeated key, a SQuAD question without an
    # answer text): the non-blank lines of a JSON-lines file (predict reads each as a row) or
    # the rows of a JSON document; and the positions among them of the scored rows.
    file_rows: int | None = None
    scored_file_rows: list[int] | None = None
    # each example's source as the task formats it (what SARI compares with), in
    # `references` order
    sources: list[str] | None = None

    def rows_to_score(self, predictions: int, predictions_path: str, path: str) -> list[int] | None:
        """The predictions to keep: None for all (one per scored example), or the scored rows'
        when there is one prediction per data row or line (what predict writes for the file)."""
        if predictions == len(self.references) or self.scored_rows is None:
            return None
        if predictions == self.rows:
            keep, total = self.scored_rows, self.rows
        elif self.scored_file_rows is not None and predictions == self.file_rows:
            keep, total = self.scored_file_rows, self.file_rows
        else:
            return None
        print(f"{predictions_path}: one prediction per data row of {path} (as predict writes "
              f"them); the predictions of the {total - len(self.references)} row(s) a run "
              "does not score are left out", file=sys.stderr)
        return keep


@contextlib.contextmanager
def columns_named_as_the_flag():
    """Errors about the renames, named as score takes them (--columns), not as a run's key."""
    try:
        yield
    except ConfigError as err:
        if err.key != "data.columns":
            raise
        raise ConfigError("--columns", err.reason) from None


TASK_DATA_SUFFIXES = (".csv", ".tsv", ".json", ".parquet")


def read_references(path: str, task=None, columns: dict[str, str] | None = None
                    ) -> list[str] | list[list[str]] | TaskReferences:
    """Plain lines, or for ``.jsonl`` one string or list of strings per line, or an object with
    "scored_references" or "reference" (evaluate's predictions.jsonl: what it scored against).
    With `task` (a TaskSpec), also the task's own data file, read as training reads it (.jsonl
    with the task's rows, .json, .csv, .tsv, .parquet, compressed or not): each example's
    references as a run of the task scores them (QA: every answer); `columns` renames its
    columns to the task's, as a run's data.columns."""
    if task is not None and _is_task_data_file(path, task, columns):
        return _task_references(path, task, columns)
    if not is_json_lines(path):
        return read_lines(path)
    references: list[str | list[str]] = []
    for row, value in _jsonl_values(path):
        if isinstance(value, dict):
            value = value.get("scored_references", value.get("reference"))
        valid = isinstance(value, str) or (
            isinstance(value, list) and value and all(isinstance(item, str) for item in value))
        if not valid:
            raise DataError("expected a string, a non-empty list of strings, or an object with "
                            '"reference" or "scored_references"', file=path, line=row)
        references.append(value)
    return references


def _is_task_data_file(path: str, task, columns: dict[str, str] | None = None) -> bool:
    """A data file of the task's (under --task): any data-file suffix but .jsonl, and a .jsonl
    file whose first JSON value is an object with the task's columns (EUR-Lex-Sum's source
    column is named "reference"), or without the keys of our reference files. Lines that are not
    JSON (or not UTF-8) are passed over here: training skips them, and so does
    _task_references."""
    # Imported here, like every use of the task loaders: plain scoring reads no data file.
    from seq2seq_es.tasks.loading import COMPRESSED_SUFFIXES

    name = path.lower()
    if name.endswith(COMPRESSED_SUFFIXES):
        return True  # our reference files are never compressed
    if name.endswith(TASK_DATA_SUFFIXES):
        return True
    if not name.endswith(".jsonl"):
        return False
    for raw in _read_bytes(path).splitlines():  # a missing or unreadable file: its error, here
        try:
            value = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not isinstance(value, dict):
            return False
        in_file = {ours: theirs for theirs, ours in (columns or {}).items()}
        if {in_file.get(name, name) for name in task.formatter.required_columns()} <= set(value):
            return True
        return "reference" not in value and "scored_references" not in value
    return False


def _task_references(path: str, task, columns: dict[str, str] | None = None) -> TaskReferences:
    """The references of the examples a run of `task` makes from its data file `path`, read by
    training's own reader (tasks.loading.read_task_file: formats, delimiters, TSV quoting, bad
    lines, missing columns) and, as a run does by default, skipping bad rows (said on stderr)."""
    import datasets

    from seq2seq_es.tasks.formatting import Example, RowFormatter
    from seq2seq_es.tasks.loading import check_column_map, read_task_file
    from seq2seq_es.tasks.registry import OWN_KIND

    _read_bytes(path)  # a missing or unreadable file: its error, as for any references file
    datasets.disable_progress_bars()  # "Generating data split" bars: the scores are the output
    check_column_map(task, columns)
    raw, local = read_task_file(task.formatter, path, columns=columns,
                                own_task=task.kind == OWN_KIND)
    place = local.line_of_row if local.by_line else local.row_of_row
    unit = "line" if local.by_line and place is not None else "row"

    def where(row: int) -> str:
        return f"{unit} {place[row] if place is not None else row}"

    for note in local.notes:  # e.g. read as ';'-delimited
        print(f"{path}: {note}", file=sys.stderr)
    # a SQuAD question by its place and id, as training names it ("row 1 (question
    # data[0].paragraphs[1].qas[0], id '7')"), rather than by a row number alone
    skipped = [(f"line {at}" if local.by_line else
                f"row {at}" + (f" ({local.row_names[at]})" if at in local.row_names else ""),
                f"column '{column}' {reason}" if column else reason)
               for at, column, reason in local.bad]
    references, scored_rows, sources = [], [], []
    rows = raw.to_list()
    for position, item in enumerate(task.formatter.format_rows(rows, list(range(len(rows))),
                                                               "test")):
        if isinstance(item, Example):
            references.append(list(item.references))
            sources.append(item.source)
            scored_rows.append(position)  # a RowFormatter gives item k for row k
        else:
            skipped.append((where(item.row), f"column '{item.column}' {item.reason}"))
    if skipped:
        shown = "; ".join(f"{at}: {reason}" for at, reason in skipped[:5])
        print(f"{path}: read as a {task.name} data file (--task); left out {len(skipped)} bad "
              f"row(s), as a run's scoring does: {shown}" + ("; ..." if len(skipped) > 5 else ""),
              file=sys.stderr)
    if not references:
        raise DataError(f"no usable {task.name} row (read as a {task.name} data file, since "
                        "--task is given)", file=path)
    if not isinstance(task.formatter, RowFormatter):
        return TaskReferences(references, len(rows), None, sources=sources)
    file_rows = scored_file_rows = None
    if local.by_line and local.line_of_row is not None and path.lower().endswith(".jsonl"):
        numbers = [number for number, text in enumerate(_read_bytes(path).split(b"\n"), 1)
                   if text.strip()]
        position = {number: index for index, number in enumerate(numbers)}
        file_rows = len(numbers)
        scored_file_rows = [position[local.line_of_row[row]] for row in scored_rows]
    elif not local.by_line and local.row_of_row is not None:
        # a JSON document whose bad rows were left out at reading: row_of_row holds each data
        # row's place among all of the document's rows
        file_rows = len(rows) + len(local.bad)
        scored_file_rows = [local.row_of_row[row] for row in scored_rows]
    return TaskReferences(references, len(rows), scored_rows, file_rows, scored_file_rows,
                          sources)


def as_a_run_scores(task, predictions: list[str], references: list) -> tuple[list[str], list]:
    """The texts as a run of `task` scores them: predictions cleaned as a run cleans decoded
    ones (split-and-rephrase: every marker spelling as ` <SPLIT> `), and references read from a
    plain or .jsonl file given the marker the task's data file gets (references read from the
    data file have it already). Else a BiSECT output written with the dataset's `_SPLIT_` lost
    a quarter of its SARI and BLEU against the data file's references."""
    from seq2seq_es.tasks.formatting import clean_prediction, normalize_split_markers

    predictions = [clean_prediction(task, text) for text in predictions]
    if task.kind == "split_rephrase":
        references = [normalize_split_markers(item) if isinstance(item, str)
                      else [normalize_split_markers(text) for text in item]
                      for item in references]
    return predictions, references


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seq2seq-es score",
        description="Score predictions against references; prints the scores (0-100) as JSON. "
                    "Files are paired line by line; where both carry an example_id per line "
                    "(evaluate's predictions.jsonl), the ids must agree at every line.")
    parser.add_argument("--metric", action="append", metavar="NAME",
                        help=f"metric to compute, repeatable or comma-separated (rouge,bleu): "
                             f"{METRIC_NAMES_HELP} (default with --task: the task's metrics)")
    parser.add_argument("--task", metavar="T",
                        help="score as a run of task T does: its metrics and answer conventions "
                             "(QA: mlqa-es EM and F1); the flags below still win")
    parser.add_argument("--mode", choices=("spanish", "paper"), default="spanish",
                        help="ROUGE and SARI tokenization: spanish (default: Unicode words, "
                             "accents kept, ROUGE stems with Snowball Spanish) or paper (as the "
                             "paper's scripts: ROUGE keeps only [a-z0-9] and stems with English "
                             "Porter; SARI lowercases and uses sacreBLEU's 13a tokenizer)")
    parser.add_argument("--predictions", type=os.path.expanduser, required=True, metavar="FILE",
                        help="one prediction per line, or .jsonl with a string or an object "
                             'with "prediction" per line (predict\'s and evaluate\'s output)')
    parser.add_argument("--references", type=os.path.expanduser, required=True, metavar="FILE",
                        help="one reference per line, or .jsonl with a string, a list, or an "
                             'object with "reference" / "scored_references" per line; with '
                             "--task also the task's own data file (.jsonl, .json, .csv, .tsv, "
                             ".parquet; its references, e.g. every answer of a QA row)")
    parser.add_argument("--columns", metavar="FILE=TASK,...",
                        help="with --task: the data file's own names for the task's columns, as "
                             "a run's data.columns (e.g. article=text,highlights=summary)")
    parser.add_argument("--sources", type=os.path.expanduser, metavar="FILE",
                        help="one source per line, or .jsonl with a string or an object with "
                             '"source" / "scored_source" per line (needed by sari)')
    parser.add_argument("--stem", action=argparse.BooleanOptionalAction, default=True,
                        help="ROUGE stemming of words over 3 characters (default on, as in the "
                             "paper): Snowball Spanish in spanish mode, which also folds acute "
                             "accents (\"público\" and \"publicó\" share a stem; \"él\" and "
                             "\"el\" stay apart), English Porter in paper mode; --no-stem "
                             "compares whole lowercased words")
    parser.add_argument("--aggregate", choices=("mean", "bootstrap"), default="mean",
                        help="ROUGE over examples: mean of per-example F-measures (default), or "
                             "rouge_score's bootstrap mid under a fixed seed (what evaluate's "
                             "rouge, and so the paper, reports)")
    parser.add_argument("--split-sentences", action="store_true",
                        help="paper-mode ROUGE-Lsum: re-split texts into sentences (as the "
                             "paper's scripts did, but with the Spanish splitter, not punkt) "
                             "instead of taking newlines as given")
    # The names of metrics.answers.CONVENTIONS / F1_CONVENTIONS (not imported: --help stays
    # light; tests/test_metrics.py checks that the lists agree).
    parser.add_argument("--em-convention", choices=EM_CONVENTION_CHOICES, default=None,
                        help="exact_match normalisation: strict (whitespace and Unicode NFC only; "
                             "case, accents, punctuation count), squad (SQuAD v1.1 script: "
                             "lowercase, ASCII punctuation and a/an/the dropped), mlqa-es (MLQA "
                             "script, lang=es: lowercase, all Unicode punctuation and "
                             "el/la/los/las/un/una/unos/unas dropped), loose (the paper's BiSECT "
                             "scoring, evaluate's exact_match ignoring case, ASCII punctuation "
                             "and digits). Accents always count. Default: --task's, else strict")
    parser.add_argument("--f1-convention", choices=F1_CONVENTION_CHOICES, default=None,
                        help="token_f1 tokens: words (lowercased Unicode words, articles kept), "
                             "squad / mlqa-es as for --em-convention, or whitespace-membership "
                             "(the paper's dialogue F1: whitespace tokens, case kept, no "
                             "clipping). Default: --task's, else words")
    return parser


def check_line_file(flag: str, path: str) -> None:
    """Refuse a data file (.csv, .json, .parquet, compressed) where score reads one text per
    line or .jsonl: its CSV rows or JSON text were scored as if each line were an example."""
    from seq2seq_es.tasks.loading import COMPRESSED_SUFFIXES

    name = path.lower()
    if name.endswith(".ndjson"):  # read as plain lines, its JSON markup was scored as text
        raise ConfigError(flag, f"{path}: JSON lines are read from a file named .jsonl; rename it")
    if name.endswith((*TASK_DATA_SUFFIXES, *COMPRESSED_SUFFIXES)):
        task_file = " or, with --task T, the task's data file" if flag == "--references" else ""
        raise ConfigError(flag, f"{path} is a data file by its name; score reads one text per "
                          f"line (a plain file) or .jsonl{task_file}")


def note_unread_options(args: argparse.Namespace, names: list[str]) -> None:
    """Say which of the options given are read by none of the metrics scored (as `train` notes
    the config keys a run does not read); not refused: a script may pass them for every metric."""
    unread = {"--em-convention": args.em_convention and "exact_match" not in names,
              "--f1-convention": args.f1_convention and "token_f1" not in names,
              "--aggregate": args.aggregate != "mean" and "rouge" not in names,
              "--split-sentences": args.split_sentences and "rouge" not in names,
              "--no-stem": not args.stem and "rouge" not in names,
              "--mode": args.mode != "spanish" and not {"rouge", "sari"} & set(names),
              "--sources": args.sources is not None and "sari" not in names}
    flags = [flag for flag, unused in unread.items() if unused]
    if flags:
        print(f"note: not read by the metrics scored ({', '.join(names)}): {', '.join(flags)}",
              file=sys.stderr)
    if args.split_sentences and "rouge" in names and args.mode != "paper":
        print("note: --split-sentences changes paper-mode ROUGE-Lsum only (--mode paper); "
              "spanish mode always splits texts into sentences", file=sys.stderr)


def note_empty_references(references: list, path: str) -> None:
    """An example whose every reference is blank (a blank line of a plain references file) is
    scored against nothing: said, as the metrics differ there (chrF leaves it out, as
    sacreBLEU does, so a wrong prediction costs nothing; BLEU counts its length)."""
    empty = [index for index, item in enumerate(references)
             if all(not text.strip() for text in ([item] if isinstance(item, str) else item))]
    if empty:
        print(f"note: {len(empty)} example(s) of {path} have an empty reference (the first is "
              f"example {empty[0] + 1}): chrF leaves them out, the other metrics score their "
              "predictions against nothing", file=sys.stderr)


def _score(args: argparse.Namespace) -> dict[str, float]:
    # Imported here: `--help` and usage errors need none of the metrics.
    from seq2seq_es.metrics.scoring import check_metric_names, compute_metrics

    task = None
    if args.task:
        from seq2seq_es.tasks import get_task
        task = get_task(args.task, hint=(
            "for a task of your own, give --metric NAME (its data.metrics), or "
            "`seq2seq-es evaluate RUN` to score a run with its own task"))
    if not args.metric and task is None:
        raise Seq2SeqEsError("give --metric NAME (repeatable) or --task T (its metrics)")
    # --metric rouge,bleu as data.metrics writes them, or --metric rouge --metric bleu
    given = [name for value in args.metric or [] for name in comma_names("--metric", value)]
    for value in args.metric or []:
        if not value.replace(",", "").strip():  # else read as no --metric at all
            raise ConfigError("--metric", f"{value!r} names no metric; expected "
                              f"{METRIC_NAMES_HELP} (repeatable or comma-separated)")
    names = check_metric_names(given or list(task.metrics))
    note_unread_options(args, names)
    check_line_file("--predictions", args.predictions)
    if task is None:  # with --task a data file is read as the task's (read_references)
        check_line_file("--references", args.references)
    if args.sources is not None and "sari" in names:
        check_line_file("--sources", args.sources)
    predictions = read_predictions(args.predictions)
    columns = None
    if args.columns:
        if task is None:
            raise Seq2SeqEsError("--columns renames a task's data file's columns: give --task")
        from seq2seq_es.config import DataConfig
        with columns_named_as_the_flag():
            columns = DataConfig(columns=args.columns).column_map()
    with columns_named_as_the_flag():
        references = read_references(args.references, task, columns)
    keep, data_rows, data_sources, file_rows = None, None, None, None
    if isinstance(references, TaskReferences):
        keep = references.rows_to_score(len(predictions), args.predictions, args.references)
        data_rows, data_sources = references.rows, references.sources
        # the file's rows as its reader counts them, those left out at reading included
        file_rows = references.file_rows or data_rows
        references = references.references
    else:
        check_same_examples((args.predictions, example_ids(args.predictions)),
                            (args.references, example_ids(args.references)))
    if keep is not None:
        predictions = [predictions[row] for row in keep]
    if task is not None:
        predictions, references = as_a_run_scores(task, predictions, references)
    if len(predictions) != len(references):
        rows = (f" (of its {file_rows} data rows)" if file_rows not in (None, len(references))
                else "")
        raise DataError(f"{args.predictions} has {len(predictions)} predictions but "
                        f"{args.references} has {len(references)} references{rows}")
    sources = None
    # read only where a metric scored reads it: note_unread_options has said "not read" for the
    # others, and an unread file's line count or ids must not refuse the run
    if args.sources is not None and "sari" in names:
        check_same_examples((args.predictions, example_ids(args.predictions)),
                            (args.sources, example_ids(args.sources)))
        sources = read_sources(args.sources)
        if keep is not None and len(sources) == data_rows:  # one a data row, as the predictions
            sources = [sources[row] for row in keep]
        if len(sources) != len(predictions):
            raise DataError(f"{args.predictions} has {len(predictions)} predictions but "
                            f"{args.sources} has {len(sources)} sources")
    elif "sari" in names and data_sources is not None:
        # the task's data file holds them: a run scores SARI against each row's source
        print(f"sources: the {task.name} rows of {args.references} (--sources FILE gives "
              "others)", file=sys.stderr)
        sources = data_sources
    elif "sari" in names:
        raise ConfigError("--sources", "SARI compares each prediction with its source: give "
                          "--sources FILE (one a line, or evaluate's predictions.jsonl), or "
                          "--task T with the task's data file as --references")
    note_empty_references(references, args.references)
    task_options = task.metric_options if task is not None else {}

    def convention(flag: str | None, metric: str, fallback: str) -> str:
        return flag or task_options.get(metric, {}).get("convention", fallback)
    options = {"exact_match": {"convention": convention(args.em_convention, "exact_match",
                                                        "strict")},
               "token_f1": {"convention": convention(args.f1_convention, "token_f1", "words")},
               "rouge": {"use_stemmer": args.stem, "aggregate": args.aggregate,
                         "split_sentences": args.split_sentences}}
    return compute_metrics(names, predictions, references, sources, mode=args.mode,
                           options={name: options[name] for name in names if name in options})


def score_main(argv: list[str]) -> int:
    """Run the command; returns 0, 2 on a usage or input error (message on stderr)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_request:  # argparse has printed usage or help already
        return exit_request.code if isinstance(exit_request.code, int) else 2
    try:
        scores = _score(args)
    except Seq2SeqEsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # Ten decimals drop float noise (a perfect BLEU is exp(log 1 ...) * 100 = 100.00000000000004)
    # and keep every digit a score is ever reported to.
    print(json.dumps({name: round(value, 10) for name, value in scores.items()}, indent=2,
                     ensure_ascii=False))
    return 0
