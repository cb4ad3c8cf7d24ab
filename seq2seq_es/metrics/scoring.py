"""The metric registry and `compute_metrics`, which checks its inputs and merges the scores.

Importing this module imports ``evaluate`` (which imports transformers and torch: seconds),
so `seq2seq_es.metrics` loads it only on first use.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from seq2seq_es.errors import ConfigError, DataError, Seq2SeqEsError, UnknownNameError
from seq2seq_es.metrics._base import MultiReferences
from seq2seq_es.metrics.bleu import Bleu
from seq2seq_es.metrics.chrf import Chrf
from seq2seq_es.metrics.exact_match import ExactMatch
from seq2seq_es.metrics.meteor import Meteor
from seq2seq_es.metrics.rouge import ROUGE_MODES, Rouge
from seq2seq_es.metrics.sari import Sari
from seq2seq_es.metrics.token_f1 import TokenF1

METRICS: dict[str, type] = {
    "rouge": Rouge,
    "bleu": Bleu,
    "chrf": Chrf,
    "sari": Sari,
    "exact_match": ExactMatch,
    "meteor": Meteor,
    "token_f1": TokenF1,
}
METRICS_NEEDING_SOURCES = frozenset({"sari"})
# Metrics whose tokenization has a "paper" mode (how the paper's scripts scored); the others
# have one behaviour.
METRICS_WITH_MODES = frozenset({"rouge", "sari"})
# Arguments compute_metrics fills in itself; anything else a metric's _compute takes is an option.
_INPUT_ARGUMENTS = frozenset({"self", "predictions", "references", "sources", "mode"})


def check_metric_names(names: Sequence[str]) -> list[str]:
    """The names without repeats, in order; raises UnknownNameError for an unknown one."""
    if not names:
        raise Seq2SeqEsError("no metric given; choose from: " + ", ".join(METRICS))
    for name in names:
        if name not in METRICS:
            raise UnknownNameError("metric", name, METRICS)
    return list(dict.fromkeys(names))


def _reference_lists(references: Sequence[str] | Sequence[Sequence[str]]) -> MultiReferences:
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


def _check_texts(texts: Sequence[Any], what: str) -> None:
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(f"example {index}: {what} must be a string, got {type(text).__name__}")


def _metric_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    allowed = set(inspect.signature(METRICS[name]._compute).parameters) - _INPUT_ARGUMENTS
    for key in options:
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise ConfigError(f"{name}.{key}", f"not an option of metric '{name}' (its options: {known})")
    return dict(options)


def compute_metrics(names: Sequence[str], predictions: list[str],
                    references: list[str] | list[list[str]], sources: list[str] | None = None,
                    mode: str = "spanish", *,
                    options: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, float]:
    """Compute each named metric and merge their scores (0-100) into one dict.

    ``references`` holds one string per prediction or a list of references per prediction.
    ``sources`` is needed by SARI. ``mode`` ("spanish" or "paper") selects how ROUGE and SARI
    tokenize (see `seq2seq_es.metrics.rouge` and `.sari`); the other metrics have one behaviour. ``options`` gives
    extra keyword arguments per metric, e.g. ``{"rouge": {"use_stemmer": False},
    "bleu": {"tokenize": "intl"}}``.
    """
    unique_names = check_metric_names(names)
    options = dict(options or {})
    for name in options:
        if name not in METRICS:
            raise UnknownNameError("metric", name, METRICS)
    if mode not in ROUGE_MODES:
        raise UnknownNameError("ROUGE mode", mode, ROUGE_MODES)
    if len(predictions) != len(references):
        raise DataError(f"got {len(predictions)} predictions but {len(references)} references; "
                        "each prediction needs its references")
    if not predictions:
        raise DataError("no predictions to score")
    _check_texts(predictions, "a prediction")
    reference_lists = _reference_lists(references)
    needing_sources = [name for name in unique_names if name in METRICS_NEEDING_SOURCES]
    if needing_sources and sources is None:
        raise DataError(f"metric '{needing_sources[0]}' needs the source texts (sources=, or "
                        "--sources FILE), one per prediction")
    if sources is not None:
        if len(sources) != len(predictions):
            raise DataError(f"got {len(predictions)} predictions but {len(sources)} sources")
        _check_texts(sources, "a source")

    scores: dict[str, float] = {}
    for name in unique_names:
        arguments = _metric_options(name, options.get(name, {}))
        if name in METRICS_NEEDING_SOURCES:
            arguments["sources"] = list(sources)
        if name in METRICS_WITH_MODES:
            arguments["mode"] = mode
        metric = METRICS[name]()
        scores.update(metric.compute(predictions=list(predictions), references=reference_lists,
                                     **arguments))
    return scores
