"""ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum, Spanish-aware or as the paper computed it.

Two modes:

``spanish`` (default)
    Tokens are lowercased Unicode words (see `seq2seq_es.metrics.text`), so "canción" is one
    token and "¿Qué" gives "qué"; with ``use_stemmer`` (default on, as in the paper) each token
    of more than 3 characters is replaced by its Snowball Spanish stem (rouge_score's rule). ROUGE-N counts clipped n-gram overlaps,
    ROUGE-L uses the longest common subsequence (LCS) of the two token sequences, and
    ROUGE-Lsum is the summary-level union-LCS of Lin (2004) over sentences found by the
    Spanish sentence splitter, with the clipping of ROUGE 1.5.5 so that a token is never
    counted more often than it occurs on either side. All of it is implemented here.

``paper``
    Reproduces the paper's scripts: rouge_score's ``RougeScorer`` with its default tokenizer
    (lowercase, only ``[a-z0-9]`` kept, so every accented letter breaks a word: "canción"
    becomes "canci" "n") and the English Porter stemmer (``use_stemmer``). ROUGE-Lsum takes the
    text's newlines as sentence boundaries, exactly as rouge_score (and evaluate's ``rouge``)
    does on the same strings. The paper's scripts first re-joined each text's sentences,
    split by English punkt (a download), with newlines; ``split_sentences=True`` does that with
    the Spanish splitter instead, which differs from punkt only where the two disagree on a
    boundary.

Aggregation (``aggregate``): ``mean`` (default) is the plain mean of the per-example
F-measures (precision and recall averaged the same way when asked for); ``bootstrap`` is
rouge_score's ``BootstrapAggregator`` mid value (1000 resamples, the median of the resampled
means), which is what the paper's numbers are: evaluate's ``rouge`` aggregates that way by
default, from numpy's unseeded global generator, so they are not repeatable to the last digit.
Here the resampling runs under ``bootstrap_seed`` (numpy's global state is restored after), so
the same inputs always give the same numbers. Scores are on a 0-100 scale. With several
references for one prediction, each ROUGE type takes the reference with the best F-measure,
as rouge_score's ``score_multi`` does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from seq2seq_es.errors import UnknownNameError
from seq2seq_es.metrics._base import f_measure, lazy_metric_class, mean, nfc_inputs
from seq2seq_es.metrics.text import ngram_counts, spanish_stem, split_sentences, word_tokens

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
ROUGE_MODES = ("spanish", "paper")
AGGREGATIONS = ("mean", "bootstrap")


@dataclass(frozen=True)
class PRF:
    """Precision, recall and F-measure of one comparison, each in [0, 1]."""

    precision: float
    recall: float
    fmeasure: float

    @classmethod
    def from_hits(cls, hits: int, prediction_total: int, reference_total: int) -> PRF:
        if hits == 0:
            return cls(0.0, 0.0, 0.0)
        precision, recall = hits / prediction_total, hits / reference_total
        return cls(precision, recall, f_measure(precision, recall))


def lcs_length(first: Sequence[str], second: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Allison-Dix, Hyyrö).

    Long summaries (EUR-Lex references run to ~1200 tokens) make the quadratic table slow in
    Python; one big-integer bit vector over ``first`` processes a token of ``second`` in a
    few word operations instead.
    """
    if not first or not second:
        return 0
    positions: dict[str, int] = {}
    for index, token in enumerate(first):
        positions[token] = positions.get(token, 0) | (1 << index)
    all_ones = (1 << len(first)) - 1
    row = all_ones
    for token in second:
        matches = row & positions.get(token, 0)
        row = ((row + matches) | (row - matches)) & all_ones
    return len(first) - row.bit_count()


def lcs_reference_indices(reference: Sequence[str], candidate: Sequence[str]) -> list[int]:
    """Indices into ``reference`` of one longest common subsequence with ``candidate``."""
    if not set(reference).intersection(candidate):
        return []
    # Built row by row with plain comparisons: ROUGE-Lsum of long summaries runs this on
    # every pair of sentences, so the table is the hot loop.
    table = [[0] * (len(candidate) + 1)]
    for token in reference:
        above, row = table[-1], [0]
        for j, other in enumerate(candidate):
            if token == other:
                row.append(above[j] + 1)
            else:
                up, left = above[j + 1], row[j]
                row.append(up if up >= left else left)
        table.append(row)
    indices: list[int] = []
    i, j = len(reference), len(candidate)
    while i > 0 and j > 0:
        if reference[i - 1] == candidate[j - 1]:
            indices.append(i - 1)
            i, j = i - 1, j - 1
        elif table[i][j - 1] > table[i - 1][j]:
            j -= 1
        else:
            i -= 1
    indices.reverse()
    return indices


def rouge_n(prediction: Sequence[str], reference: Sequence[str], n: int) -> PRF:
    """ROUGE-N from clipped n-gram overlap counts."""
    prediction_ngrams, reference_ngrams = ngram_counts(prediction, n), ngram_counts(reference, n)
    hits = sum((prediction_ngrams & reference_ngrams).values())
    return PRF.from_hits(hits, sum(prediction_ngrams.values()), sum(reference_ngrams.values()))


def rouge_l(prediction: Sequence[str], reference: Sequence[str]) -> PRF:
    """ROUGE-L: LCS of the whole token sequences."""
    return PRF.from_hits(lcs_length(prediction, reference), len(prediction), len(reference))


def rouge_lsum(prediction_sentences: Sequence[Sequence[str]],
               reference_sentences: Sequence[Sequence[str]]) -> PRF:
    """Summary-level ROUGE-L (Lin 2004, section 3.2) with ROUGE 1.5.5's clipping.

    For each reference sentence, the union of its LCS token positions with every predicted
    sentence counts as hits, but a token only while it still has unused occurrences on both
    sides, so a word matched from several reference sentences is not counted twice.
    """
    prediction_total = sum(map(len, prediction_sentences))
    reference_total = sum(map(len, reference_sentences))
    if prediction_total == 0 or reference_total == 0:
        return PRF(0.0, 0.0, 0.0)
    unused_prediction = Counter(token for sentence in prediction_sentences for token in sentence)
    unused_reference = Counter(token for sentence in reference_sentences for token in sentence)
    hits = 0
    for reference_sentence in reference_sentences:
        union: set[int] = set()
        for prediction_sentence in prediction_sentences:
            union.update(lcs_reference_indices(reference_sentence, prediction_sentence))
        for index in sorted(union):
            token = reference_sentence[index]
            if unused_prediction[token] > 0 and unused_reference[token] > 0:
                hits += 1
                unused_prediction[token] -= 1
                unused_reference[token] -= 1
    return PRF.from_hits(hits, prediction_total, reference_total)


def spanish_tokenizer(use_stemmer: bool) -> Callable[[str], list[str]]:
    """The token function of spanish mode: Unicode words, optionally Snowball-stemmed. As
    rouge_score stems, only words of more than 3 characters are: Snowball strips acute accents,
    and the short words it would fold are those the accent tells apart (él/el, sí/si, más/mas,
    qué/que, tú/tu, dé/de)."""
    if not use_stemmer:
        return word_tokens
    return lambda text: [spanish_stem(token) if len(token) > 3 else token
                         for token in word_tokens(text)]


def score_spanish(prediction: str, reference: str, use_stemmer: bool = True) -> dict[str, PRF]:
    """The four ROUGE types of one prediction against one reference, spanish mode."""
    tokenize = spanish_tokenizer(use_stemmer)
    prediction_tokens, reference_tokens = tokenize(prediction), tokenize(reference)
    prediction_sentences = [tokenize(sentence) for sentence in split_sentences(prediction)]
    reference_sentences = [tokenize(sentence) for sentence in split_sentences(reference)]
    return {
        "rouge1": rouge_n(prediction_tokens, reference_tokens, 1),
        "rouge2": rouge_n(prediction_tokens, reference_tokens, 2),
        "rougeL": rouge_l(prediction_tokens, reference_tokens),
        "rougeLsum": rouge_lsum(prediction_sentences, reference_sentences),
    }


def _paper_text(text: str, resplit: bool) -> str:
    return "\n".join(split_sentences(text)) if resplit else text


def _best_per_type(candidates: Sequence[dict[str, PRF]]) -> dict[str, PRF]:
    return {rouge_type: max((scores[rouge_type] for scores in candidates), key=lambda s: s.fmeasure)
            for rouge_type in ROUGE_TYPES}


def per_example_scores(predictions: Sequence[str], references: Sequence[Sequence[str]],
                       mode: str = "spanish", use_stemmer: bool = True,
                       split_sentences: bool = False) -> list[dict[str, PRF]]:
    """Per-example ROUGE of each type, the best reference taken for each type.

    `split_sentences` applies to paper mode (spanish mode always splits for ROUGE-Lsum)."""
    if mode not in ROUGE_MODES:
        raise UnknownNameError("ROUGE mode", mode, ROUGE_MODES)
    results = []
    if mode == "paper":
        from rouge_score import rouge_scorer  # imports nltk: only paper mode pays for it

        scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
        for prediction, example_references in zip(predictions, references):
            scores = scorer.score_multi([_paper_text(r, split_sentences)
                                         for r in example_references],
                                        _paper_text(prediction, split_sentences))
            results.append({t: PRF(s.precision, s.recall, s.fmeasure) for t, s in scores.items()})
        return results
    for prediction, example_references in zip(predictions, references):
        results.append(_best_per_type([score_spanish(prediction, reference, use_stemmer)
                                       for reference in example_references]))
    return results


def bootstrap_mid(scores: Sequence[dict[str, PRF]], seed: int) -> dict[str, PRF]:
    """rouge_score's BootstrapAggregator mid values, resampled under a fixed numpy seed."""
    import numpy as np
    from rouge_score.scoring import BootstrapAggregator, Score

    aggregator = BootstrapAggregator()
    for example in scores:
        aggregator.add_scores({t: Score(s.precision, s.recall, s.fmeasure)
                               for t, s in example.items()})
    saved = np.random.get_state()
    np.random.seed(seed)  # the aggregator draws from numpy's global generator
    try:
        result = aggregator.aggregate()
    finally:
        np.random.set_state(saved)
    return {t: PRF(*result[t].mid) for t in ROUGE_TYPES}


def aggregate(scores: Sequence[dict[str, PRF]], with_precision_recall: bool = False,
              method: str = "mean", bootstrap_seed: int = 0) -> dict[str, float]:
    """Scores over examples on a 0-100 scale: F-measure under the type's name, P/R suffixed;
    the plain mean, or the bootstrap mid (see the module docstring)."""
    if method not in AGGREGATIONS:
        raise UnknownNameError("ROUGE aggregation", method, AGGREGATIONS)
    if method == "bootstrap":
        mid = bootstrap_mid(scores, bootstrap_seed)
        result = {t: 100 * mid[t].fmeasure for t in ROUGE_TYPES}
        if with_precision_recall:
            for t in ROUGE_TYPES:
                result[f"{t}_precision"] = 100 * mid[t].precision
                result[f"{t}_recall"] = 100 * mid[t].recall
        return result
    result = {t: 100 * mean([s[t].fmeasure for s in scores]) for t in ROUGE_TYPES}
    if with_precision_recall:
        for rouge_type in ROUGE_TYPES:
            result[f"{rouge_type}_precision"] = 100 * mean([s[rouge_type].precision for s in scores])
            result[f"{rouge_type}_recall"] = 100 * mean([s[rouge_type].recall for s in scores])
    return result


CITATION = """\
@inproceedings{lin-2004-rouge,
  title = "{ROUGE}: A Package for Automatic Evaluation of Summaries",
  author = "Lin, Chin-Yew",
  booktitle = "Text Summarization Branches Out",
  year = "2004",
  pages = "74--81",
}
"""
INPUTS = """\
predictions: list of predicted texts.
references: one reference text per prediction, or a list of references per prediction.
mode: "spanish" (default) or "paper".
use_stemmer: stem tokens (Snowball Spanish in spanish mode, Porter in paper mode); default True.
with_precision_recall: also return `<type>_precision` and `<type>_recall`; default False.
split_sentences: paper mode only: re-split texts into sentences (Spanish splitter) for
    ROUGE-Lsum, as the paper's scripts did with punkt; default False (newlines as given).
aggregate: "mean" (default) or "bootstrap" (rouge_score's bootstrap mid, as evaluate's rouge).
bootstrap_seed: numpy seed of the bootstrap resampling; default 0.
Returns rouge1, rouge2, rougeL, rougeLsum: mean F-measure, 0-100.
"""


_aggregate = aggregate  # `compute` takes an option of the same name


def compute(predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]],
            mode: str = "spanish", use_stemmer: bool = True, with_precision_recall: bool = False,
            split_sentences: bool = False, aggregate: str = "mean",
            bootstrap_seed: int = 0) -> dict[str, float]:
    """ROUGE of the predictions, 0-100 (`INPUTS` describes the arguments); what `Rouge`
    computes, without `evaluate`."""
    predictions, reference_lists = nfc_inputs(predictions, references)  # NFC, for every caller
    scores = per_example_scores(predictions, reference_lists, mode, use_stemmer,
                                split_sentences)
    return _aggregate(scores, with_precision_recall, aggregate, bootstrap_seed)


# `Rouge`, the `evaluate.Metric`, is imported (with `evaluate`) on first access.
__getattr__ = lazy_metric_class(__name__, "Rouge")
