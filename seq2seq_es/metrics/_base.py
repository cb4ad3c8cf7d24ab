"""What every metric module shares: reference handling, means, F-measures.

The computations are plain functions (each metric module's ``compute``) that need neither
``evaluate`` nor ``datasets``: `compute_metrics` and `seq2seq-es score` call them directly, so
scoring a file starts in well under a second. The `evaluate.Metric` classes (`Rouge`, `Bleu`,
...) wrap those functions in `seq2seq_es.metrics.evaluate_metrics`, which is imported only
when a class is asked for (``from seq2seq_es.metrics.rouge import Rouge`` still works: each
metric module hands its class over on first access, see `lazy_metric_class`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from seq2seq_es.errors import DataError
from seq2seq_es.metrics.text import normalize_texts, normalize_unicode, word_tokens

MultiReferences = list[list[str]]
EVALUATE_METRICS_MODULE = "seq2seq_es.metrics.evaluate_metrics"


def lazy_metric_class(module_name: str, *class_names: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports the named `evaluate.Metric` classes (and with
    them ``evaluate``: seconds) from `evaluate_metrics` on first access."""

    def __getattr__(name: str) -> Any:
        if name not in class_names:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        return getattr(importlib.import_module(EVALUATE_METRICS_MODULE), name)

    return __getattr__


# `InMemoryMetric` and `metric_info` used to live here; they need `evaluate`.
__getattr__ = lazy_metric_class(__name__, "InMemoryMetric", "metric_info")


def as_reference_lists(references: Sequence[str] | Sequence[Sequence[str]]) -> MultiReferences:
    """One list of references per prediction, whether given as strings or lists. An empty list
    or a non-string is refused here, for every metric alike (some raised max() of an empty
    sequence and exact match scored 0)."""
    lists = []
    for index, reference in enumerate(references):
        if isinstance(reference, str):
            lists.append([reference])
            continue
        if (not isinstance(reference, Sequence) or not reference
                or not all(isinstance(item, str) for item in reference)):
            raise DataError(f"example {index}: a reference must be a string or a non-empty list of "
                            f"strings, got {reference!r}")
        lists.append(list(reference))
    return lists


def nfc_inputs(predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]
               ) -> tuple[list[str], MultiReferences]:
    """The predictions and one list of references per prediction (`as_reference_lists`), in
    Unicode NFC. Every metric's `compute` starts here, the one place that normalises:
    `compute_metrics` and the `evaluate.Metric` classes call it (docs/metrics.md: every metric
    compares NFC text): sacreBLEU, rouge_score's tokenizer and the answer conventions compare
    code points, and `bleu.compute` called directly scored "canción" typed with a combining
    accent as another word than the composed "canción" (BLEU 59.5 instead of 100; mlqa-es
    exact match 0). NFC text comes back unchanged (a quick check, no copy of the work)."""
    reference_lists = as_reference_lists(references)
    return [normalize_unicode(text) for text in predictions], normalize_texts(reference_lists)


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
