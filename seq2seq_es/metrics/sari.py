"""SARI (Xu et al. 2016): rewards n-grams correctly added, kept and deleted against the source.

For n = 1..4, with ``I`` the source, ``O`` the prediction and ``R`` the references (``r`` of
them), the operations are scored as Hugging Face ``evaluate``'s ``sari`` scores them (the
paper's split-and-rephrase scores came from it): the authors' released SARI.py with
tensor2tensor's two changes, 0/0 counted as 1 (SARI.py counts it as 0) and the keep recall
corrected (below):

- keep: n-grams in both I and O. Precision averages, over those n-grams, the share of their
  kept occurrences that the references also keep; recall is the kept occurrences the
  references support over the source occurrences the references keep. F1 of the two.
- delete: n-grams of I that O drops. Precision averages, over those n-grams, the share of
  their deleted occurrences that the references also delete. Only precision counts, as in
  the paper (recall over-rewards deleting everything).
- add: n-grams of O not in I (as a set). Precision is the share of them found in some
  reference, recall the share of the references' new n-grams that O added. F1 of the two.

Occurrences in I and O are multiplied by ``r`` instead of dividing the pooled reference
counts by ``r``: that is the paper's ``#g(R)/r`` weighting in whole numbers. An empty ratio
(0/0) counts as 1, so a prediction equal to its only reference scores 100 and copying the
source when the references keep it whole also scores 100. The keep recall uses the
correction of github.com/cocoxu/simplification issue 6, as ``evaluate``'s sari does.

SARI = (mean keep F1 + mean delete precision + mean add F1) / 3 over n = 1..4, per example;
the corpus score is the mean over examples, 0-100.

Two tokenizations (``mode``):

``spanish`` (default): the text is NFC-normalised and lowercased, then split into Unicode
words and single punctuation marks, so "¿" and "." are tokens of their own (adding a full
stop between the rephrased sentences is an edit SARI should see) and accented words stay
whole. The split marker of split-and-rephrase (``<SPLIT>``) is one ordinary token.

``paper``: as Hugging Face evaluate's ``sari`` (what the paper's BiSECT numbers came from) on
raw text: lowercased, tokenized by sacreBLEU's ``13a`` tokenizer, split at single spaces.
13a separates ASCII punctuation only, so "¿qué" stays one token and "<SPLIT>" becomes
"< split >". Equal to evaluate's sari to floating-point precision (tests/test_metrics.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache

from seq2seq_es.errors import UnknownNameError
from seq2seq_es.metrics._base import f_measure, lazy_metric_class, mean, nfc_inputs
from seq2seq_es.metrics.text import ngram_counts, normalize_unicode, word_and_punct_tokens

MAX_ORDER = 4
SARI_MODES = ("spanish", "paper")


@lru_cache(maxsize=1)
def _tokenizer_13a():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
    return Tokenizer13a()


def paper_tokens(text: str) -> list[str]:
    """evaluate's sari tokens: lowercase, sacreBLEU 13a, split at single spaces (an empty text
    is one empty token there, kept so that scores stay equal)."""
    return _tokenizer_13a()(text.lower()).split(" ")


def _tokenizer(mode: str) -> Callable[[str], list[str]]:
    if mode not in SARI_MODES:
        raise UnknownNameError("SARI mode", mode, SARI_MODES)
    return paper_tokens if mode == "paper" else word_and_punct_tokens


def _scaled(counts: Counter, factor: int) -> Counter:
    return Counter({gram: count * factor for gram, count in counts.items()})


def _mean_ratio_or_one(numerators: Counter, denominators: Counter) -> float:
    """Mean over the n-grams of ``denominators`` of numerator/denominator; 1.0 when there are none."""
    if not denominators:
        return 1.0
    return sum(numerators[gram] / count for gram, count in denominators.items()) / len(denominators)


def _ratio_or_one(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 1.0


def keep_f1(source: Counter, prediction: Counter, pooled_references: Counter, n_references: int) -> float:
    source_rep, prediction_rep = _scaled(source, n_references), _scaled(prediction, n_references)
    kept = source_rep & prediction_rep
    kept_correctly = kept & pooled_references
    kept_by_references = source_rep & pooled_references
    precision = _mean_ratio_or_one(kept_correctly, kept)
    recall = _ratio_or_one(sum(kept_correctly.values()), sum(kept_by_references.values()))
    return f_measure(precision, recall)


def delete_precision(source: Counter, prediction: Counter, pooled_references: Counter,
                     n_references: int) -> float:
    deleted = _scaled(source, n_references) - _scaled(prediction, n_references)
    deleted_correctly = deleted - pooled_references
    return _mean_ratio_or_one(deleted_correctly, deleted)


def add_f1(source: Counter, prediction: Counter, pooled_references: Counter) -> float:
    added = set(prediction) - set(source)
    added_by_references = set(pooled_references) - set(source)
    added_correctly = added & added_by_references
    precision = _ratio_or_one(len(added_correctly), len(added))
    recall = _ratio_or_one(len(added_correctly), len(added_by_references))
    return f_measure(precision, recall)


def sentence_sari(source: Sequence[str], prediction: Sequence[str],
                  references: Sequence[Sequence[str]]) -> float:
    """SARI of one tokenized example, in [0, 1]."""
    keep_scores, delete_scores, add_scores = [], [], []
    for n in range(1, MAX_ORDER + 1):
        source_grams, prediction_grams = ngram_counts(source, n), ngram_counts(prediction, n)
        pooled_references = sum((ngram_counts(reference, n) for reference in references), Counter())
        keep_scores.append(keep_f1(source_grams, prediction_grams, pooled_references, len(references)))
        delete_scores.append(delete_precision(source_grams, prediction_grams, pooled_references,
                                              len(references)))
        add_scores.append(add_f1(source_grams, prediction_grams, pooled_references))
    return (mean(keep_scores) + mean(delete_scores) + mean(add_scores)) / 3


def corpus_sari(sources: Sequence[str], predictions: Sequence[str],
                references: Sequence[Sequence[str]], mode: str = "spanish") -> float:
    """Mean sentence SARI over examples, 0-100."""
    tokens = _tokenizer(mode)
    scores = [sentence_sari(tokens(source), tokens(prediction),
                            [tokens(reference) for reference in example_references])
              for source, prediction, example_references in zip(sources, predictions, references)]
    return 100 * mean(scores)


CITATION = """\
@article{xu-etal-2016-optimizing,
  title = "Optimizing Statistical Machine Translation for Text Simplification",
  author = "Xu, Wei and Napoles, Courtney and Pavlick, Ellie and Chen, Quanze and Callison-Burch, Chris",
  journal = "Transactions of the Association for Computational Linguistics",
  volume = "4",
  year = "2016",
  pages = "401--415",
}
"""
INPUTS = """\
sources: list of source texts (required).
predictions: list of predicted texts.
references: one reference text per prediction, or a list of references per prediction.
mode: "spanish" (default) or "paper" (evaluate's sari tokenization: lowercase + 13a).
Returns sari: mean SARI, 0-100.
"""


def compute(predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]],
            sources: Sequence[str], mode: str = "spanish") -> dict[str, float]:
    """{"sari": mean SARI, 0-100}; what `Sari` computes, without `evaluate`."""
    predictions, reference_lists = nfc_inputs(predictions, references)  # NFC, for every caller
    sources = [normalize_unicode(source) for source in sources]
    return {"sari": corpus_sari(sources, predictions, reference_lists, mode)}


# `Sari`, the `evaluate.Metric`, is imported (with `evaluate`) on first access.
__getattr__ = lazy_metric_class(__name__, "Sari")
