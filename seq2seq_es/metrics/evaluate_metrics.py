"""The metrics as `evaluate.Metric` classes, for code that wants `evaluate`-style objects.

    from seq2seq_es.metrics import Rouge        # or: from seq2seq_es.metrics.rouge import Rouge
    Rouge().compute(predictions=[...], references=[...], mode="paper")

Each class wraps its metric module's plain ``compute`` function (the one `compute_metrics` and
`seq2seq-es score` call) and adds `evaluate`'s input checks and `MetricInfo`. Importing this
module imports ``evaluate``, and with it transformers, torch and datasets (seconds), so the
metric modules and `seq2seq_es.metrics` import it only when one of these classes is asked for.

The classes are defined in this package and instantiated directly, so nothing is fetched from
the Hugging Face hub (``evaluate.load("rouge")`` would be). They keep their inputs in memory
(``keep_in_memory=True`` by default), so computing a score writes no Arrow cache files.
"""

from __future__ import annotations

import datasets
import evaluate

from seq2seq_es.metrics import bleu, chrf, exact_match, meteor, rouge, sari, token_f1


def metric_info(description: str, citation: str, inputs_description: str, *,
                with_sources: bool = False) -> evaluate.MetricInfo:
    """MetricInfo accepting one reference string per prediction or a list of them."""
    feature_sets = []
    for reference_feature in (datasets.Sequence(datasets.Value("string")), datasets.Value("string")):
        columns = {"predictions": datasets.Value("string"), "references": reference_feature}
        if with_sources:
            columns["sources"] = datasets.Value("string")
        feature_sets.append(datasets.Features(columns))
    return evaluate.MetricInfo(
        description=description,
        citation=citation,
        inputs_description=inputs_description,
        features=feature_sets,
    )


class InMemoryMetric(evaluate.Metric):
    """An `evaluate.Metric` that keeps its inputs in memory instead of an on-disk cache, and
    scores NFC text as `compute_metrics` does (a class and the function give one number for
    "canción" typed with a combining accent): subclasses define `_score`, not `_compute`."""

    def __init__(self, **kwargs):
        kwargs.setdefault("keep_in_memory", True)
        super().__init__(**kwargs)

    def _compute(self, predictions, references, **arguments):
        # NFC: the module's compute, which every _score calls, puts the texts in it
        return self._score(predictions, references, **arguments)


class Rouge(InMemoryMetric):
    """ROUGE; see `seq2seq_es.metrics.rouge` for the two modes and the options."""

    def _info(self):
        return metric_info(rouge.__doc__, rouge.CITATION, rouge.INPUTS)

    def _score(self, predictions, references, mode: str = "spanish", use_stemmer: bool = True,
                 with_precision_recall: bool = False, split_sentences: bool = False,
                 aggregate: str = "mean", bootstrap_seed: int = 0):
        return rouge.compute(predictions, references, mode=mode, use_stemmer=use_stemmer,
                             with_precision_recall=with_precision_recall,
                             split_sentences=split_sentences, aggregate=aggregate,
                             bootstrap_seed=bootstrap_seed)


class Bleu(InMemoryMetric):
    """sacreBLEU corpus BLEU."""

    def _info(self):
        return metric_info(bleu.__doc__, bleu.CITATION, bleu.INPUTS)

    def _score(self, predictions, references, tokenize: str = "13a"):
        return bleu.compute(predictions, references, tokenize=tokenize)


class Chrf(InMemoryMetric):
    """sacreBLEU corpus chrF."""

    def _info(self):
        return metric_info(chrf.__doc__, chrf.CITATION, chrf.INPUTS)

    def _score(self, predictions, references, word_order: int = 0):
        return chrf.compute(predictions, references, word_order=word_order)


class Sari(InMemoryMetric):
    """SARI; needs ``sources``."""

    def _info(self):
        return metric_info(sari.__doc__, sari.CITATION, sari.INPUTS, with_sources=True)

    def _score(self, predictions, references, sources, mode: str = "spanish"):
        return sari.compute(predictions, references, sources, mode=mode)


class ExactMatch(InMemoryMetric):
    """Exact match under a named answer convention."""

    def _info(self):
        return metric_info(exact_match.__doc__, exact_match.CITATION, exact_match.INPUTS)

    def _score(self, predictions, references, ignore_case: bool = False,
                 convention: str = "strict"):
        return exact_match.compute(predictions, references, ignore_case=ignore_case,
                                   convention=convention)


class Meteor(InMemoryMetric):
    """Spanish METEOR (no WordNet)."""

    def _info(self):
        return metric_info(meteor.__doc__, meteor.CITATION, meteor.INPUTS)

    def _score(self, predictions, references):
        return meteor.compute(predictions, references)


class TokenF1(InMemoryMetric):
    """Token F1 under a named tokenisation convention."""

    def _info(self):
        return metric_info(token_f1.__doc__, token_f1.CITATION, token_f1.INPUTS)

    def _score(self, predictions, references, convention: str = "words"):
        return token_f1.compute(predictions, references, convention=convention)


# Name -> `evaluate.Metric` class; `seq2seq_es.metrics.METRIC_FUNCTIONS` has the same names.
METRICS: dict[str, type[evaluate.Metric]] = {
    "rouge": Rouge,
    "bleu": Bleu,
    "chrf": Chrf,
    "sari": Sari,
    "exact_match": ExactMatch,
    "meteor": Meteor,
    "token_f1": TokenF1,
}
