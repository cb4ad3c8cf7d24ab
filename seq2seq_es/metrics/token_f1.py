"""Token F1 (SQuAD-style bag-of-tokens overlap) under a named tokenisation convention.

``convention="words"`` (default, dialogue): lowercased Unicode word tokens, no articles removed
(Spanish "el", "la", "los", "un", ... count like any word), accented words stay whole and ¿ ¡ and
other punctuation never count. ``squad`` and ``mlqa-es`` tokenise as the SQuAD v1.1 and MLQA
(lang=es) evaluation scripts do after their answer normalisation (`seq2seq_es.metrics.answers`);
QA tasks use ``mlqa-es``. Matches those scripts' F1 exactly (tests/test_metrics.py).
``whitespace-membership`` is the paper's dialogue F1: whitespace tokens, case kept, and each
token counted when the other side holds it at all instead of the clipped multiset overlap
(`sentence_membership_f1`); where the paper's script divided by zero (an empty side) it is 0.
An empty prediction or an empty reference (no tokens) scores 0, and so do both empty: there is
no overlap to reward, and no division by zero (the scripts agree). Several references: the best
one counts. Corpus score: mean over examples, 0-100.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from seq2seq_es.errors import UnknownNameError
from seq2seq_es.metrics._base import (f_measure, lazy_metric_class, mean_best_reference,
                                      nfc_inputs)
from seq2seq_es.metrics.answers import F1_CONVENTIONS, answer_tokens


def sentence_token_f1(prediction: Sequence[str], reference: Sequence[str]) -> float:
    """F1 of the multiset overlap of two token lists, in [0, 1]."""
    overlap = sum((Counter(prediction) & Counter(reference)).values())
    if overlap == 0:
        return 0.0
    return f_measure(overlap / len(prediction), overlap / len(reference))


def sentence_membership_f1(prediction: Sequence[str], reference: Sequence[str]) -> float:
    """F1 where every token of one side counts if the other side holds it at all (no clipping),
    in [0, 1]: the paper's dialogue script; 0 when either side is empty."""
    if not prediction or not reference:
        return 0.0
    in_prediction, in_reference = set(prediction), set(reference)
    precision = sum(token in in_reference for token in prediction) / len(prediction)
    recall = sum(token in in_prediction for token in reference) / len(reference)
    return f_measure(precision, recall)


def corpus_token_f1(predictions: Sequence[str], references: Sequence[Sequence[str]],
                    convention: str = "words") -> float:
    """Mean over examples of the best-reference token F1, 0-100."""
    if convention not in F1_CONVENTIONS:
        raise UnknownNameError("token_f1 convention", convention, F1_CONVENTIONS)
    sentence_score = (sentence_membership_f1 if convention == "whitespace-membership"
                      else sentence_token_f1)
    return mean_best_reference(predictions, references, sentence_score,
                               tokenize=lambda text: answer_tokens(text, convention))


CITATION = """\
@inproceedings{rajpurkar-etal-2016-squad,
  title = "{SQ}u{AD}: 100,000+ Questions for Machine Comprehension of Text",
  author = "Rajpurkar, Pranav and Zhang, Jian and Lopyrev, Konstantin and Liang, Percy",
  booktitle = "Proceedings of EMNLP",
  year = "2016",
  pages = "2383--2392",
}
"""
INPUTS = """\
predictions: list of predicted texts.
references: one reference text per prediction, or a list of references per prediction.
convention: words (default) | squad | mlqa-es | whitespace-membership: how answers are
normalised, tokenised and counted.
Returns token_f1: mean token F1, 0-100.
"""


def compute(predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]],
            convention: str = "words") -> dict[str, float]:
    """{"token_f1": mean token F1, 0-100}; what `TokenF1` computes, without `evaluate`."""
    predictions, reference_lists = nfc_inputs(predictions, references)  # NFC, for every caller
    return {"token_f1": corpus_token_f1(predictions, reference_lists,
                                        convention)}


# `TokenF1`, the `evaluate.Metric`, is imported (with `evaluate`) on first access.
__getattr__ = lazy_metric_class(__name__, "TokenF1")
