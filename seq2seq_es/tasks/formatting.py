"""Turning dataset rows into (source, target, references) examples, one formatter per task kind.

A formatter never raises on a bad row: it reports the row as a `Problem` (row number, column,
reason) so that the loader can skip and count it, or refuse the file, as the user asked. The
formatters are small frozen dataclasses so that `datasets` can hash them into the cache key of the
formatting step (a second run reuses the formatted split).

Choices that differ from the paper's scripts, and why:

- QA targets are the first answer, as in the paper, but rows without any answer are bad rows
  instead of training on an empty target; `references` keeps every distinct gold answer so that
  scoring can take the best match.
- The split-and-rephrase marker is ``<SPLIT>`` (`SPLIT_MARKER`). The scripts turned BiSECT's
  ``_SPLIT_`` into ``<s>`` or ``[SEP]``, which are the bos/eos tokens of BART and BERT: the model
  then learned to stop (or to emit a token that decoding drops) where a sentence break belongs.
  ``<SPLIT>`` is no special token of any family used here (BART/RoBERTa ``<s> </s> <pad>``, T5
  ``</s> <pad> <extra_id_N>``, BERT ``[CLS] [SEP] [PAD]``), so every tokenizer keeps it as
  plain text. WordPiece decodes it as ``< SPLIT >`` and a tokenizer without ``<`` in its
  vocabulary may drop the bracket, so `split_sentences` accepts those spellings too.
- Dialogue history: turns are grouped by dialogue (rows of a dialogue need not be adjacent),
  consecutive turns of one speaker are merged, every history turn carries its speaker, and
  turns are joined by a newline, not by the tokenizer's sep token (which is BART's eos).
"""

from __future__ import annotations

import ast
import json
import math
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SPLIT_MARKER = "<SPLIT>"
# Spellings of the marker after a tokenizer round trip, plus the datasets' own: "_SPLIT_"
# (GEM's BiSECT, which the paper's script replaced) and "<SEP>" (the original BiSECT release).
# The bare upper-case word counts too: a vocabulary without "<" and ">" decodes the marker as
# "SPLIT" (the tiny WordPiece models do). The cost is that an upper-case SPLIT in the text itself
# (a heading) splits there; "Split", the Croatian port, and "SPLITTING" do not.
_SPLIT_MARKER_PATTERN = re.compile(
    r"\s*(?:<\s*(?i:split)\s*>?|_SPLIT_|<SEP>|\bSPLIT\b\s*>?)\s*")

DIALOGUE_TURN_SEPARATOR = "\n"
QA_PROMPT = "question: {question} context: {context}"


def split_sentences(text: str) -> list[str]:
    """The sentences of a split-and-rephrase text, whichever marker spelling it uses."""
    return [part.strip() for part in _SPLIT_MARKER_PATTERN.split(text) if part.strip()]


def join_sentences(sentences: Iterable[str]) -> str:
    return f" {SPLIT_MARKER} ".join(sentence.strip() for sentence in sentences)


def normalize_split_markers(text: str) -> str:
    """Rewrite every marker spelling (``_SPLIT_``, ``< SPLIT >``, ...) as `` <SPLIT> ``.

    Apply it to decoded predictions too before scoring split-and-rephrase, so that a marker
    the tokenizer respaced still counts as the same token. Every marker is kept, leading,
    trailing and repeated ones too: dropping them (as `split_sentences` does) scored
    ``<SPLIT> Uno. <SPLIT> <SPLIT> Dos. <SPLIT>`` as a perfect ``Uno. <SPLIT> Dos.``.
    """
    words: list[str] = []
    for position, part in enumerate(_SPLIT_MARKER_PATTERN.split(text)):
        if position:
            words.append(SPLIT_MARKER)
        if part.strip():
            words.append(part.strip())
    return " ".join(words)


def clean_prediction(task, text: str) -> str:
    """Undo tokenizer artefacts that the task's metrics would count as errors; composed
    Unicode (NFC), as the references are loaded. Here rather than in the engine: `score --task`
    cleans a prediction file as a run cleans decoded text, without importing torch."""
    text = unicodedata.normalize("NFC", text.strip())
    if task is not None and task.kind == "split_rephrase":
        text = normalize_split_markers(text)
    return text


@dataclass(frozen=True)
class Example:
    source: str
    target: str
    references: tuple[str, ...]
    example_id: str


@dataclass(frozen=True)
class Problem:
    """A row that cannot become an example. `row` is the 0-based data row of the split."""

    row: int
    column: str
    reason: str


class _BadField(Exception):
    """Raised inside a row formatter; turned into a `Problem` by the batch loop."""

    def __init__(self, column: str, reason: str):
        super().__init__(reason)
        self.column, self.reason = column, reason


def _text(row: Mapping[str, Any], column: str) -> str:
    """A non-empty string field, stripped; anything else is a bad field."""
    return _check_text(row.get(column), column)


def _check_text(value: Any, column: str) -> str:
    if value is None:
        raise _BadField(column, "missing value")
    if not isinstance(value, str):
        raise _BadField(column, f"not a string ({type(value).__name__})")
    value = _nfc(value)
    if not value:
        raise _BadField(column, "empty")
    return value


def _nfc(text: str) -> str:
    """Stripped, in Unicode's composed form: a decomposed accent (e + U+0301) trains and scores as
    the same letter as the composed one (é), whatever tokenizer or metric reads it."""
    return unicodedata.normalize("NFC", text.strip())


def parse_nested_text(text: str) -> Any:
    """A nested value written as text: JSON, else the Python literal pandas' `to_csv` writes
    (`['a', 'b']`); None when it is neither (local_files reads mixed columns with it too)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text.strip())  # literals only: no names, calls or code
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def _structured(value: Any, column: str) -> Any:
    """Nested fields (answers, translation, references) may arrive as text from a CSV file: JSON,
    or the Python literal that pandas' `to_csv` writes for a list or dict (`['a', 'b']`)."""
    if not isinstance(value, str):
        return value
    parsed = parse_nested_text(value)
    # Text that parses as a number or a string ("1898", '"x"') is as far from a nested field as
    # text that does not parse: one message for both, not "expected {...}, got int" for one.
    if not isinstance(parsed, (list, tuple, dict)):
        raise _BadField(column, "text, not the JSON or Python list/dict literal a nested field "
                                "needs")
    return parsed


def id_text(value: Any) -> Any:
    """An id written as a number, as its text: 7 -> "7", and 7.0 -> "7" (a pandas export writes
    whole-number ids as floats: a MIAM file's Dialogue_ID 1.0 was refused on every row, and the
    same dialogue was "1" in one file and "1.0" in another). Anything else as it is (NaN too,
    which is a missing value)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return value
        if value.is_integer():
            return str(int(value))
    return str(value)


def _row_id(row: Mapping[str, Any], id_column: str | None, split: str, index: int) -> str:
    value = id_text(row.get(id_column)) if id_column else None
    return str(value) if value not in (None, "") else f"{split}-{index}"


class Formatter:
    """Base class: `format_rows` yields an Example or a Problem for the rows it is given."""

    def required_columns(self) -> tuple[str, ...]:
        raise NotImplementedError

    def required_keys(self) -> Mapping[str, tuple[str, ...]]:
        """Keys a nested (struct) column must have, checked against the schema before loading."""
        return {}

    def text_columns(self) -> tuple[str, ...]:
        """Required columns read as text: in a file whose rows mix types there, the rows that do
        not hold text are the bad ones, however many they are."""
        return ()

    def id_columns(self) -> tuple[str, ...]:
        """Columns holding ids, read as their text whether numbers or strings."""
        return ()

    def list_columns(self) -> tuple[str, ...]:
        """Optional columns holding a list of strings (reference lists)."""
        return ()

    def format_rows(self, rows: Sequence[Mapping[str, Any]], indices: Sequence[int],
                    split: str, id_indices: Sequence[int] | None = None
                    ) -> Iterator[Example | Problem]:
        """`indices`: the rows' places in what was read (for Problems); `id_indices`: their
        0-based data rows in the user's file, which name an example without an id column
        (`split-N`), or None where the two are the same."""
        raise NotImplementedError

    def source_layout(self) -> str:
        """How a row becomes the text the model reads (the export's model card says it, for
        whoever feeds the model without this package). No task adds a prefix such as
        transformers' examples' `summarize: `: the paper's scripts passed none."""
        raise NotImplementedError


class RowFormatter(Formatter):
    """A formatter where each row gives at most one example."""

    id_column: str | None = None
    references_column: str | None = None

    def id_columns(self):
        return (self.id_column,) if self.id_column else ()

    def list_columns(self):
        return (self.references_column,) if self.references_column else ()

    def format_row(self, row: Mapping[str, Any]) -> tuple[str, str, tuple[str, ...]]:
        raise NotImplementedError

    def format_rows(self, rows, indices, split, id_indices=None):
        for row, index, id_index in zip(rows, indices, id_indices or indices):
            try:
                source, target, references = self.format_row(row)
            except _BadField as bad:
                yield Problem(index, bad.column, bad.reason)
                continue
            yield Example(source, target, references,
                          _row_id(row, self.id_column, split, id_index))


def _reference_list(row: Mapping[str, Any], column: str | None, target: str) -> tuple[str, ...]:
    """The dataset's own reference list when it has one, else the target alone. A plain text
    value is one reference (as local_files reads one among lists); text that opens a list
    ('[...') must be one, so a broken list literal is a bad row, not a reference."""
    if not column or row.get(column) is None:
        return (target,)
    raw = row[column]
    if isinstance(raw, str) and not raw.lstrip().startswith("["):
        return (_nfc(raw),) if raw.strip() else (target,)
    value = _structured(raw, column)
    if not isinstance(value, (list, tuple)):
        raise _BadField(column, f"not a list of strings ({type(value).__name__})")
    _check_items(value, column)
    references = tuple(_nfc(r) for r in value if r.strip())
    return references or (target,)


def _check_items(items: Sequence[Any], column: str) -> None:
    """Every item of a list of texts is a text: [1, "x"] was read as ["x"] without a word (a
    reference or answer lost, and the scores computed against fewer references)."""
    for position, item in enumerate(items):
        if not isinstance(item, str):
            raise _BadField(column, f"item {position} of the list is not a string "
                                    f"({'null' if item is None else type(item).__name__})")


@dataclass(frozen=True)
class PairFormatter(RowFormatter):
    """Summarization: one text column to one summary column."""

    source_column: str
    target_column: str
    references_column: str | None = None
    id_column: str | None = None

    def required_columns(self):
        return (self.source_column, self.target_column)

    def text_columns(self):
        return (self.source_column, self.target_column)

    def format_row(self, row):
        source = _text(row, self.source_column)
        target = _text(row, self.target_column)
        return source, target, _reference_list(row, self.references_column, target)

    def source_layout(self):
        return f"the `{self.source_column}` text as it is, with no task prefix"


@dataclass(frozen=True)
class QAFormatter(RowFormatter):
    """Generative QA on the SQuAD schema: the prompt holds question and context."""

    question_column: str = "question"
    context_column: str = "context"
    answers_column: str = "answers"
    id_column: str | None = "id"

    def required_columns(self):
        return (self.question_column, self.context_column, self.answers_column)

    def required_keys(self):
        return {self.answers_column: ("text",)}

    def text_columns(self):
        return (self.question_column, self.context_column)

    def format_row(self, row):
        question = _text(row, self.question_column)
        context = _text(row, self.context_column)
        answers = _structured(row.get(self.answers_column), self.answers_column)
        text_column = f"{self.answers_column}.text"
        if isinstance(answers, (list, tuple)) and all(isinstance(a, Mapping) for a in answers):
            # A list of {"text", "answer_start"} records, as some exports write SQuAD answers.
            answers = {"text": [a.get("text") for a in answers]}
        if not isinstance(answers, Mapping):
            raise _BadField(self.answers_column,
                            f"expected {{'text': [...], 'answer_start': [...]}}, "
                            f"got {type(answers).__name__}")
        texts = answers.get("text")
        if texts is None:
            raise _BadField(text_column, "missing value")
        if isinstance(texts, str):  # a single answer written without the list
            texts = [texts]
        if not isinstance(texts, (list, tuple)) or not texts:
            raise _BadField(text_column, "no answer")
        _check_items(texts, text_column)
        # The first answer with text trains; a blank first one (the others given) lost the
        # whole question, which the MLQA and SQuAD scripts score against its other answers.
        # Blank answers are never references (the scripts keep them, where a prediction that
        # normalises to nothing matches one exactly; docs/metrics.md).
        usable = [t for t in texts if t.strip()]
        target = _check_text(usable[0] if usable else texts[0], text_column)
        references = tuple(dict.fromkeys(_nfc(t) for t in usable))
        return QA_PROMPT.format(question=question, context=context), target, references

    def source_layout(self):
        return (f"`{QA_PROMPT}`, from the `{self.question_column}` and `{self.context_column}` "
                "texts")


@dataclass(frozen=True)
class SplitRephraseFormatter(RowFormatter):
    """BiSECT: the target's sentences joined by `SPLIT_MARKER`, whatever marker the data used."""

    source_column: str = "source"
    target_column: str = "target"
    references_column: str | None = "references"
    id_column: str | None = "gem_id"

    def required_columns(self):
        return (self.source_column, self.target_column)

    def text_columns(self):
        return (self.source_column, self.target_column)

    def format_row(self, row):
        source = _text(row, self.source_column)
        # The data's own stray markers (leading, doubled, trailing) are tidied away here, where
        # a prediction's are kept (normalize_split_markers) and count against it.
        target = join_sentences(split_sentences(_text(row, self.target_column)))
        if not target:
            raise _BadField(self.target_column, "only split markers, no sentence")
        references = tuple(join_sentences(split_sentences(r))
                           for r in _reference_list(row, self.references_column, target))
        return source, target, references

    def source_layout(self):
        return (f"the `{self.source_column}` text as it is, with no task prefix; it writes "
                f"sentences joined by ` {SPLIT_MARKER} `")


@dataclass(frozen=True)
class TranslationFormatter(RowFormatter):
    """Rows {"translation": {"es": ..., "en": ...}}, read in one direction."""

    source_lang: str
    target_lang: str
    column: str = "translation"
    id_column: str | None = None

    def required_columns(self):
        return (self.column,)

    def required_keys(self):
        return {self.column: (self.source_lang, self.target_lang)}

    def format_row(self, row):
        pair = _structured(row.get(self.column), self.column)
        if pair is None:
            raise _BadField(self.column, "missing value")
        if not isinstance(pair, Mapping):
            raise _BadField(self.column, f"expected a mapping of language to text, "
                                         f"got {type(pair).__name__}")
        texts = []
        for lang in (self.source_lang, self.target_lang):
            label = f"{self.column}.{lang}"
            if lang not in pair:
                raise _BadField(label, f"missing language key '{lang}'")
            texts.append(_check_text(pair[lang], label))
        return texts[0], texts[1], (texts[1],)

    def source_layout(self):
        return (f"the `{self.column}.{self.source_lang}` text as it is, with no task prefix; it "
                f"writes the `{self.target_lang}` one")


def turn_place(value: Any) -> int | None:
    """A turn's place in its dialogue (MIAM's Idx): an integer, a whole float (3.0: pandas
    writes an integer column holding a missing value so) or the text of either, as a CSV or
    TSV file's cells are read; None for anything else. A CSV's "3" was no integer, so a
    shuffled CSV built scrambled histories where the same rows as JSON lines did not (mutation
    audit of the tasks)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str) and _WHOLE_NUMBER_TEXT.fullmatch(value):
        return int(float(value))
    return None


_WHOLE_NUMBER_TEXT = re.compile(r"\s*[+-]?[0-9]+(?:\.0*)?\s*")


@dataclass(frozen=True)
class DialogueFormatter(Formatter):
    """MIAM-style rows, one turn each: (history of earlier turns) -> next turn.

    Turns are grouped by dialogue id in order of first appearance, in `order_column`'s order
    inside a dialogue where every one of its rows has a whole number there, or its text
    (`turn_place`; MIAM's Idx, the row's place in the published split: a shuffled file's
    histories were scrambled in silence), else in row order (the load report's notes name such
    dialogues); consecutive turns of one speaker are merged into one. Each merged turn after the
    first gives an example whose source is the earlier turns, oldest first, as
    "<speaker>: <utterance>" joined by `separator`, cut to the last `max_history_turns` turns
    when set (the tokenizer then cuts what is still too long from the left). Bad rows are left
    out before merging.
    """

    speaker_column: str = "Speaker"
    utterance_column: str = "Utterance"
    dialogue_column: str = "Dialogue_ID"
    order_column: str = "Idx"
    separator: str = DIALOGUE_TURN_SEPARATOR
    max_history_turns: int | None = None

    def required_columns(self):
        return (self.speaker_column, self.utterance_column, self.dialogue_column)

    def source_layout(self):
        last = (f"the last {self.max_history_turns} " if self.max_history_turns else "")
        return (f"{last or 'the '}earlier turns of the dialogue, oldest first, each as "
                f"`<speaker>: <utterance>`, joined by {self.separator!r} (a speaker's "
                "consecutive turns merged into one); it writes the next turn")

    def id_columns(self):
        return (self.dialogue_column,)

    def text_columns(self):
        return (self.speaker_column, self.utterance_column)

    def format_rows(self, rows, indices, split, id_indices=None):
        del id_indices  # examples are named by dialogue id and turn
        dialogues: dict[str, list[tuple[Any, str, str]]] = {}
        for row, index in zip(rows, indices):
            try:
                dialogue_id = self._dialogue_id(row)
                speaker = _text(row, self.speaker_column)
                utterance = _text(row, self.utterance_column)
            except _BadField as bad:
                yield Problem(index, bad.column, bad.reason)
                continue
            dialogues.setdefault(dialogue_id, []).append(
                (turn_place(row.get(self.order_column)), speaker, utterance))
        for dialogue_id, rows_of_dialogue in dialogues.items():
            order = [place for place, _, _ in rows_of_dialogue]
            if all(place is not None for place in order):
                # stable: rows of one place keep their file order
                rows_of_dialogue = sorted(rows_of_dialogue, key=lambda turn: turn[0])
            turns = [(speaker, utterance) for _, speaker, utterance in rows_of_dialogue]
            yield from self._examples(dialogue_id, _merge_same_speaker(turns))

    def _dialogue_id(self, row: Mapping[str, Any]) -> str:
        value = row.get(self.dialogue_column)
        return _check_text(id_text(value), self.dialogue_column)

    def _examples(self, dialogue_id: str, turns: list[tuple[str, str]]) -> Iterator[Example]:
        for position in range(1, len(turns)):
            first = 0
            if self.max_history_turns is not None:
                first = max(0, position - self.max_history_turns)
            history = self.separator.join(f"{speaker}: {utterance}"
                                          for speaker, utterance in turns[first:position])
            target = turns[position][1]
            yield Example(history, target, (target,), f"{dialogue_id}-{position}")


def _merge_same_speaker(turns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    merged: list[tuple[str, str]] = []
    for speaker, utterance in turns:
        if merged and merged[-1][0] == speaker:
            merged[-1] = (speaker, f"{merged[-1][1]} {utterance}")
        else:
            merged.append((speaker, utterance))
    return merged
