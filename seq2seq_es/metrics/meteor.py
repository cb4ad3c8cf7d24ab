"""METEOR (Banerjee & Lavie 2005; parameters of Lavie & Agarwal 2007) for Spanish, no WordNet.

nltk's METEOR needs WordNet (an English resource, and a download) for its synonym stage. This
implementation aligns unigrams in two stages instead:

1. exact: identical lowercased Unicode word tokens;
2. stem: tokens still unaligned whose Snowball Spanish stems are equal ("canciones" and
   "canción", "ganó" and "ganar").

There is no synonym stage, so scores are lower than a METEOR with Spanish synonyms would give,
and comparable only with other runs of this implementation.

Each stage links as many tokens as it can (each token once) and, where a word repeats on one
side so that several alignments link that many, takes the one with the fewest crossings, as the
original METEOR does (ties: fewer chunks, then links closer in relative position). Every
alignment is tried where there are at most EXHAUSTIVE_LIMIT of them (short texts, as dialogue
replies); beyond that a local search from the closest-in-relative-position links moves one link
at a time while that lowers the crossings or chunks, which is not guaranteed to find the
fewest. nltk links the repeated word's occurrences right to left, whatever the crossings.

With m aligned unigrams, a prediction of length t and a reference of length r:
P = m/t, R = m/r, Fmean = P*R / (alpha*P + (1-alpha)*R) with alpha = 0.9 (recall-weighted);
the alignment, read in prediction order, falls into ``chunks`` runs that are adjacent on both
sides, and Penalty = gamma * (chunks/m)^beta with gamma = 0.5, beta = 3;
METEOR = Fmean * (1 - Penalty). An identical prediction of t words is one chunk, so it scores
1 - 0.5/t^3: 0.5 for one word (50 on the 0-100 scale: short replies are penalised hard, as
in every METEOR), 0.9375 for two, 0.981 for three, 0.996 for five. Several references: the
best one counts. Corpus score: the mean over examples, 0-100. No tokens on either side, or no match, scores 0.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations, product
from math import comb, prod

from seq2seq_es.metrics._base import lazy_metric_class, mean_best_reference, nfc_inputs
from seq2seq_es.metrics.text import spanish_stem

ALPHA = 0.9
BETA = 3.0
GAMMA = 0.5

Alignment = list[tuple[int, int]]


def _closest_monotone_pairs(prediction_positions: list[int], reference_positions: list[int],
                            prediction_length: int, reference_length: int) -> Alignment:
    """In-order pairs of as many positions as the shorter list, closest in relative position:
    the starting point of the search for larger cases (see _align_stage)."""
    if len(prediction_positions) == len(reference_positions):
        return list(zip(prediction_positions, reference_positions))
    swapped = len(prediction_positions) > len(reference_positions)
    few, many = ((reference_positions, prediction_positions) if swapped
                 else (prediction_positions, reference_positions))
    few_length, many_length = ((reference_length, prediction_length) if swapped
                               else (prediction_length, reference_length))

    def distance(i: int, j: int) -> float:
        return abs(few[i] / few_length - many[j] / many_length)

    # cost[i][j]: best total distance pairing few[:i] with a subsequence of many[:j].
    infinity = float("inf")
    cost = [[0.0] * (len(many) + 1)] + [[infinity] * (len(many) + 1) for _ in few]
    for i in range(1, len(few) + 1):
        for j in range(i, len(many) + 1):
            cost[i][j] = min(cost[i][j - 1], cost[i - 1][j - 1] + distance(i - 1, j - 1))
    pairs, j = [], len(many)
    for i in range(len(few), 0, -1):
        while cost[i][j] == cost[i][j - 1]:
            j -= 1
        pairs.append((few[i - 1], many[j - 1]))
        j -= 1
    pairs.reverse()
    return [(b, a) for a, b in pairs] if swapped else pairs


def count_crossings(alignment: Alignment) -> int:
    """Pairs of links that cross: (i, j) and (k, l) with i < k and j > l (alignment sorted)."""
    seen: list[int] = []
    crossings = 0
    for _, j in alignment:
        crossings += len(seen) - bisect_right(seen, j)
        insort(seen, j)
    return crossings


@dataclass
class _Group:
    """The unaligned occurrences of one key on both sides: every occurrence on the `few` side is
    linked, to an equal number of the `many` side's, chosen by the search."""
    few: list[int]
    many: list[int]
    few_is_prediction: bool

    def links(self, chosen: Sequence[int]) -> Alignment:
        # In order: for any fixed choice this has no crossing within the key and the fewest
        # with every other link (pairing the i-th with the i-th maximises the pairs on one
        # side of any other link), so only the choice needs searching.
        pairs = zip(self.few, chosen)
        return list(pairs) if self.few_is_prediction else [(i, j) for j, i in pairs]

    def choices(self) -> int:
        return comb(len(self.many), len(self.few))


# How many alignments a stage may try one by one; beyond it, a local search (see _align_stage).
EXHAUSTIVE_LIMIT = 512
LOCAL_SEARCH_PASSES = 50


def _align_stage(prediction_keys: Sequence[str], reference_keys: Sequence[str],
                 alignment: Alignment) -> Alignment:
    """Add the links of one stage between still-unaligned tokens with equal keys: as many as
    there can be (each token linked once), and of those alignments the one with the fewest
    crossings, as Banerjee & Lavie's METEOR. Ties go to fewer chunks (a higher score, and the
    one chunk nltk's right-to-left links also give on `no no` / `no no no`), then to links closer
    in relative position, then to the earlier positions. Every alignment is tried where there
    are at most EXHAUSTIVE_LIMIT; otherwise a local search moves one link of a repeated word at a time from
    the closest-in-relative-position start while that lowers (crossings, chunks)."""
    aligned_prediction = {i for i, _ in alignment}
    aligned_reference = {j for _, j in alignment}
    prediction_by_key: dict[str, list[int]] = defaultdict(list)
    reference_by_key: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(prediction_keys):
        if i not in aligned_prediction:
            prediction_by_key[key].append(i)
    for j, key in enumerate(reference_keys):
        if j not in aligned_reference:
            reference_by_key[key].append(j)
    fixed = list(alignment)
    open_groups: list[_Group] = []
    for key, prediction_positions in prediction_by_key.items():
        reference_positions = reference_by_key.get(key)
        if not reference_positions:
            continue
        if len(prediction_positions) == len(reference_positions):
            fixed += zip(prediction_positions, reference_positions)
        elif len(prediction_positions) < len(reference_positions):
            open_groups.append(_Group(prediction_positions, reference_positions, True))
        else:
            open_groups.append(_Group(reference_positions, prediction_positions, False))
    if not open_groups:
        return sorted(fixed)
    t, r = len(prediction_keys), len(reference_keys)

    def cost(choice: Sequence[Sequence[int]]) -> tuple:
        links = sorted(fixed + [link for group, chosen in zip(open_groups, choice)
                                for link in group.links(chosen)])
        distance = sum(abs(i / t - j / r) for i, j in links)
        return count_crossings(links), count_chunks(links), round(distance, 12), links

    if prod(group.choices() for group in open_groups) <= EXHAUSTIVE_LIMIT:
        return min((cost(choice) for choice in product(
            *(combinations(group.many, len(group.few)) for group in open_groups))))[3]

    # Local search: start from each group's closest-in-relative-position choice.
    choice = []
    for group in open_groups:
        pairs = _closest_monotone_pairs(group.few, group.many,
                                        *((t, r) if group.few_is_prediction else (r, t)))
        choice.append([m for _, m in pairs])
    best = cost(choice)
    for _ in range(LOCAL_SEARCH_PASSES):
        improved = False
        for g, group in enumerate(open_groups):
            chosen = set(choice[g])
            unused = [m for m in group.many if m not in chosen]
            for slot in range(len(choice[g])):
                for m in unused:
                    trial = list(choice)
                    trial[g] = sorted(choice[g][:slot] + [m] + choice[g][slot + 1:])
                    candidate = cost(trial)
                    if candidate[:2] < best[:2]:
                        choice, best, improved = trial, candidate, True
                        break
                else:
                    continue
                break
        if not improved:
            break
    return best[3]


STAGES: tuple[Callable[[str], str], ...] = (lambda token: token, spanish_stem)


def align(prediction: Sequence[str], reference: Sequence[str]) -> Alignment:
    """(prediction index, reference index) links, exact stage first, then stems."""
    alignment: Alignment = []
    for key_of in STAGES:
        alignment = _align_stage([key_of(t) for t in prediction], [key_of(t) for t in reference],
                                 alignment)
    return alignment


def count_chunks(alignment: Alignment) -> int:
    """Runs of links adjacent in both the prediction and the reference (alignment sorted)."""
    chunks = 0
    previous = None
    for i, j in alignment:
        if previous is None or (i, j) != (previous[0] + 1, previous[1] + 1):
            chunks += 1
        previous = (i, j)
    return chunks


def sentence_meteor(prediction: Sequence[str], reference: Sequence[str]) -> float:
    """METEOR of one tokenized prediction against one tokenized reference, in [0, 1]."""
    alignment = align(prediction, reference)
    matches = len(alignment)
    if matches == 0:
        return 0.0
    precision, recall = matches / len(prediction), matches / len(reference)
    fmean = precision * recall / (ALPHA * precision + (1 - ALPHA) * recall)
    penalty = GAMMA * (count_chunks(alignment) / matches) ** BETA
    return fmean * (1 - penalty)


def corpus_meteor(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean over examples of the best-reference METEOR, 0-100."""
    return mean_best_reference(predictions, references, sentence_meteor)


CITATION = """\
@inproceedings{banerjee-lavie-2005-meteor,
  title = "{METEOR}: An Automatic Metric for {MT} Evaluation with Improved Correlation with Human Judgments",
  author = "Banerjee, Satanjeev and Lavie, Alon",
  booktitle = "Proceedings of the ACL Workshop on Intrinsic and Extrinsic Evaluation Measures for MT and/or Summarization",
  year = "2005",
  pages = "65--72",
}
"""
INPUTS = """\
predictions: list of predicted texts.
references: one reference text per prediction, or a list of references per prediction.
Returns meteor: mean METEOR (exact + Spanish stem stages, no synonyms), 0-100.
"""


def compute(predictions: Sequence[str],
            references: Sequence[str] | Sequence[Sequence[str]]) -> dict[str, float]:
    """{"meteor": mean METEOR, 0-100}; what `Meteor` computes, without `evaluate`."""
    predictions, reference_lists = nfc_inputs(predictions, references)  # NFC, for every caller
    return {"meteor": corpus_meteor(predictions, reference_lists)}


# `Meteor`, the `evaluate.Metric`, is imported (with `evaluate`) on first access.
__getattr__ = lazy_metric_class(__name__, "Meteor")
