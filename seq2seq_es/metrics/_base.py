"""What every metric module shares: its `evaluate.MetricInfo` and reference handling.

The metrics are `evaluate.Metric` subclasses defined in this package and instantiated
directly, so nothing is fetched from the Hugging Face hub at run time (``evaluate.load("rouge")``
would be). They are created with ``keep_in_memory=True`` by default so that computing a score
writes no Arrow cache files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import datasets
import evaluate

from seq2seq_es.metrics.text import word_tokens

MultiReferences = list[list[str]]


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


def as_reference_lists(references: Sequence[str] | Sequence[Sequence[str]]) -> MultiReferences:
    """One list of references per prediction, whether given as strings or lists."""
    return [[reference] if isinstance(reference, str) else list(reference)
            for reference in references]


class InMemoryMetric(evaluate.Metric):
    """An `evaluate.Metric` that keeps its inputs in memory instead of an on-disk cache."""

    def __init__(self, **kwargs):
        kwargs.setdefault("keep_in_memory", True)
        super().__init__(**kwargs)


def f_measure(precision: float, recall: float) -> float:
    """Harmonic mean, 0.0 when both are 0."""
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; 0.0 for no values."""
    return sum(values) / len(values) if values else 0.0


def mean_best_reference(predictions: Sequence[str], references: Sequence[Sequence[str]],
                        sentence_score: Callable[[list[str], list[str]], float],
                        tokenize: Callable[[str], list[str]] = word_tokens) -> float:
    """Mean over examples of the best token score against any of the example's references,
    0-100; tokens are lowercased Unicode words unless `tokenize` says otherwise."""
    scores = []
    for prediction, example_references in zip(predictions, references):
        prediction_tokens = tokenize(prediction)
        scores.append(max(sentence_score(prediction_tokens, tokenize(reference))
                          for reference in example_references))
    return 100 * mean(scores)
