"""Exact match after whitespace normalisation, optionally ignoring case.

Both sides are NFC-normalised (a composed "ó" equals "o" + combining accent), stripped, and
every run of whitespace, newlines included, becomes one space. Punctuation and accents are
kept: "canción" and "cancion" differ. With ``ignore_case`` both sides are lowercased.
A prediction matches when it equals any of its references. Score: percentage of matches, 0-100.
"""

from __future__ import annotations

from collections.abc import Sequence

from seq2seq_es.metrics._base import InMemoryMetric, as_reference_lists, mean, metric_info
from seq2seq_es.metrics.text import normalize_whitespace


def _normalized(text: str, ignore_case: bool) -> str:
    text = normalize_whitespace(text)
    return text.lower() if ignore_case else text


def corpus_exact_match(predictions: Sequence[str], references: Sequence[Sequence[str]],
                       ignore_case: bool = False) -> float:
    """Percentage of predictions equal to one of their references, 0-100."""
    matches = [float(any(_normalized(prediction, ignore_case) == _normalized(reference, ignore_case)
                         for reference in example_references))
               for prediction, example_references in zip(predictions, references)]
    return 100 * mean(matches)


_CITATION = ""
_INPUTS = """\
predictions: list of predicted texts.
references: one reference text per prediction, or a list of references per prediction.
ignore_case: compare lowercased; default False.
Returns exact_match: percentage of exact matches, 0-100.
"""


class ExactMatch(InMemoryMetric):
    """Exact match as an `evaluate.Metric`."""

    def _info(self):
        return metric_info(__doc__, _CITATION, _INPUTS)

    def _compute(self, predictions, references, ignore_case: bool = False):
        return {"exact_match": corpus_exact_match(predictions, as_reference_lists(references),
                                                  ignore_case)}
