"""Corpus chrF through sacreBLEU: character n-gram F-score for translation.

chrF (Popović, 2015) compares character 6-grams (and, as chrF++ with ``word_order=2``, word
bigrams), so it credits a Spanish or Portuguese word with the right stem and a different
ending, where BLEU's whole-word n-grams give nothing. sacreBLEU's defaults are kept (character
order 6, beta 2, whitespace ignored), so the numbers equal ``sacrebleu -m chrf``; each
prediction may have one reference or a list of them, as for BLEU.
"""

from __future__ import annotations

from collections.abc import Sequence

from seq2seq_es.metrics._base import MultiReferences, lazy_metric_class, nfc_inputs
from seq2seq_es.metrics.bleu import reference_streams


def corpus_chrf(predictions: Sequence[str], references: MultiReferences, word_order: int = 0) -> float:
    """sacreBLEU corpus chrF (chrF++ with word_order=2), 0-100."""
    from sacrebleu.metrics import CHRF

    return CHRF(word_order=word_order).corpus_score(list(predictions),
                                                    reference_streams(references)).score


CITATION = """\
@inproceedings{popovic-2015-chrf,
  title = "chr{F}: character n-gram {F}-score for automatic {MT} evaluation",
  author = "Popovi{\\'c}, Maja",
  booktitle = "Proceedings of the Tenth Workshop on Statistical Machine Translation",
  year = "2015",
  pages = "392--395",
}
"""
INPUTS = """\
predictions: list of predicted texts.
references: one reference text per prediction, or a list of references per prediction.
word_order: 0 for chrF (default), 2 for chrF++.
Returns chrf: corpus chrF, 0-100.
"""


def compute(predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]],
            word_order: int = 0) -> dict[str, float]:
    """{"chrf": corpus chrF, 0-100}; what `Chrf` computes, without `evaluate`."""
    predictions, reference_lists = nfc_inputs(predictions, references)  # NFC, for every caller
    return {"chrf": corpus_chrf(predictions, reference_lists, word_order)}


# `Chrf`, the `evaluate.Metric`, is imported (with `evaluate`) on first access.
__getattr__ = lazy_metric_class(__name__, "Chrf")
