"""nltk's METEOR as the tests' reference: our Spanish stemmer, no WordNet (there is no Spanish
one), so that it scores what `seq2seq_es.metrics.meteor` is meant to match."""

from __future__ import annotations

from nltk.translate.meteor_score import single_meteor_score

from seq2seq_es.metrics.text import spanish_stem


class _NoSynonyms:
    def synsets(self, *args, **kwargs):
        return []


class _SpanishStemmer:
    def stem(self, word):
        return spanish_stem(word)


def nltk_single_meteor(reference: list[str], prediction: list[str]) -> float:
    """nltk's single_meteor_score (0-1) of two token lists."""
    return single_meteor_score(reference, prediction, stemmer=_SpanishStemmer(),
                               wordnet=_NoSynonyms())
