"""Corpus BLEU through sacreBLEU, the standard for the paper's translation results.

sacreBLEU's default ``13a`` tokenizer is kept so that numbers stay comparable with published
WMT scores (and with the models' hub cards); pass ``tokenize="intl"`` to split on Unicode
punctuation too (it separates "¿" and "¡" from the word that follows). Each prediction may
have one reference or a list of them; when the lists differ in length, the missing ones are
left out of that sentence's statistics, which sacreBLEU supports.
"""

from __future__ import annotations

from collections.abc import Sequence

from seq2seq_es.metrics._base import MultiReferences, lazy_metric_class, nfc_inputs


def reference_streams(references: MultiReferences) -> list[list[str | None]]:
    """Transpose per-prediction reference lists into sacreBLEU's per-position streams."""
    width = max(len(example_references) for example_references in references)
    return [[example_references[k] if k < len(example_references) else None
             for example_references in references]
            for k in range(width)]


def corpus_bleu(predictions: Sequence[str], references: MultiReferences, tokenize: str = "13a") -> float:
    """sacreBLEU corpus score, 0-100."""
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize=tokenize).corpus_score(list(predictions), reference_streams(references)).score


CITATION = """\
@inproceedings{post-2018-call,
  title = "A Call for Clarity in Reporting {BLEU} Scores",
  author = "Post, Matt",
  booktitle = "Proceedings of the Third Conference on Machine Translation",
  year = "2018",
  pages = "186--191",
}
"""
INPUTS = """\
predictions: list of predicted texts.
references: one reference text per prediction, or a list of references per prediction.
tokenize: sacreBLEU tokenizer name, default "13a".
Returns bleu: corpus BLEU, 0-100.
"""


def compute(predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]],
            tokenize: str = "13a") -> dict[str, float]:
    """{"bleu": corpus BLEU, 0-100}; what `Bleu` computes, without `evaluate`."""
    predictions, reference_lists = nfc_inputs(predictions, references)  # NFC, for every caller
    return {"bleu": corpus_bleu(predictions, reference_lists, tokenize)}


# `Bleu`, the `evaluate.Metric`, is imported (with `evaluate`) on first access.
__getattr__ = lazy_metric_class(__name__, "Bleu")
