"""Exact match under a named answer convention (`seq2seq_es.metrics.answers`).

``convention="strict"`` (default): both sides NFC-normalised (a composed "ó" equals "o" +
combining accent), stripped, and every run of whitespace, newlines included, becomes one space;
case, punctuation and accents count: "canción" and "cancion" differ. ``squad`` and ``mlqa-es``
normalise as the SQuAD v1.1 and MLQA (lang=es) evaluation scripts (lowercase, punctuation and
articles dropped); QA tasks use ``mlqa-es``. ``loose`` is how the paper scored BiSECT (evaluate's
exact_match ignoring case, ASCII punctuation and digits); BiSECT uses it. With ``ignore_case``
both sides are also lowercased. A prediction matches when it equals any of its references.
Score: percentage of matches, 0-100.
"""

from __future__ import annotations

from collections.abc import Sequence

from seq2seq_es.errors import UnknownNameError
from seq2seq_es.metrics._base import lazy_metric_class, mean, nfc_inputs
from seq2seq_es.metrics.answers import CONVENTIONS, normalize_answer


def _normalized(text: str, ignore_case: bool, convention: str) -> str:
    text = normalize_answer(text, convention)
    return text.lower() if ignore_case else text


def corpus_exact_match(predictions: Sequence[str], references: Sequence[Sequence[str]],
                       ignore_case: bool = False, convention: str = "strict") -> float:
    """Percentage of predictions equal to one of their references, 0-100."""
    if convention not in CONVENTIONS:
        raise UnknownNameError("exact_match convention", convention, CONVENTIONS)
    matches = [float(any(_normalized(prediction, ignore_case, convention)
                         == _normalized(reference, ignore_case, convention)
                         for reference in example_references))
               for prediction, example_references in zip(predictions, references)]
    return 100 * mean(matches)


CITATION = ""
INPUTS = """\
predictions: list of predicted texts.
references: one reference text per prediction, or a list of references per prediction.
ignore_case: compare lowercased; default False.
convention: strict (default) | squad | mlqa-es | loose: how answers are normalised before
comparing.
Returns exact_match: percentage of exact matches, 0-100.
"""


def compute(predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]],
            ignore_case: bool = False, convention: str = "strict") -> dict[str, float]:
    """{"exact_match": percentage, 0-100}; what `ExactMatch` computes, without `evaluate`."""
    predictions, reference_lists = nfc_inputs(predictions, references)  # NFC, for every caller
    return {"exact_match": corpus_exact_match(predictions, reference_lists,
                                              ignore_case, convention)}


# `ExactMatch`, the `evaluate.Metric`, is imported (with `evaluate`) on first access.
__getattr__ = lazy_metric_class(__name__, "ExactMatch")
