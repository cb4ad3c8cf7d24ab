"""The metric registry and `compute_metrics`, which checks its inputs and merges the scores.

`compute_metrics` calls each metric module's plain ``compute`` function (`METRIC_FUNCTIONS`):
nothing here imports ``evaluate``, transformers, torch or datasets, and a metric's own heavy
dependency (sacreBLEU, rouge_score) is imported only when that metric runs. ``METRICS``, the
`evaluate.Metric` classes under the same names, is loaded from `evaluate_metrics` on first
access.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from seq2seq_es.errors import ConfigError, DataError, Seq2SeqEsError, UnknownNameError
from seq2seq_es.metrics import bleu, chrf, exact_match, meteor, rouge, sari, token_f1
from seq2seq_es.metrics._base import EVALUATE_METRICS_MODULE, as_reference_lists
from seq2seq_es.metrics.rouge import ROUGE_MODES

# Name -> compute(predictions, references, [sources,] **options) -> {score name: 0-100}.
METRIC_FUNCTIONS: dict[str, Callable[..., dict[str, float]]] = {
    "rouge": rouge.compute,
    "bleu": bleu.compute,
    "chrf": chrf.compute,
    "sari": sari.compute,
    "exact_match": exact_match.compute,
    "meteor": meteor.compute,
    "token_f1": token_f1.compute,
}
METRICS_NEEDING_SOURCES = frozenset({"sari"})
# Metrics whose tokenization has a "paper" mode (how the paper's scripts scored); the others
# have one behaviour.
METRICS_WITH_MODES = frozenset({"rouge", "sari"})
# Arguments compute_metrics fills in itself; anything else a metric's compute takes is an option.
_INPUT_ARGUMENTS = frozenset({"self", "predictions", "references", "sources", "mode"})


def check_metric_names(names: Sequence[str]) -> list[str]:
    """The names without repeats, in order; raises UnknownNameError for an unknown one."""
    if not names:
        raise Seq2SeqEsError("no metric given; choose from: " + ", ".join(METRIC_FUNCTIONS))
    for name in names:
        if name not in METRIC_FUNCTIONS:
            raise UnknownNameError("metric", name, METRIC_FUNCTIONS)
    return list(dict.fromkeys(names))


def _check_texts(texts: Sequence[Any], what: str) -> None:
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(f"example {index}: {what} must be a string, got {type(text).__name__}")


def _metric_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    allowed = set(inspect.signature(METRIC_FUNCTIONS[name]).parameters) - _INPUT_ARGUMENTS
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
        if name not in METRIC_FUNCTIONS:
            raise UnknownNameError("metric", name, METRIC_FUNCTIONS)
    if mode not in ROUGE_MODES:
        raise UnknownNameError("ROUGE mode", mode, ROUGE_MODES)
    if len(predictions) != len(references):
        raise DataError(f"got {len(predictions)} predictions but {len(references)} references; "
                        "each prediction needs its references")
    if not predictions:
        raise DataError("no predictions to score")
    _check_texts(predictions, "a prediction")
    reference_lists = as_reference_lists(references)
    needing_sources = [name for name in unique_names if name in METRICS_NEEDING_SOURCES]
    if needing_sources and sources is None:
        raise DataError(f"metric '{needing_sources[0]}' needs the source texts (sources=, or "
                        "--sources FILE), one per prediction")
    if sources is not None:
        if len(sources) != len(predictions):
            raise DataError(f"got {len(predictions)} predictions but {len(sources)} sources")
        _check_texts(sources, "a source")

    # One Unicode form for every metric (NFC): each metric's compute does it itself
    # (_base.nfc_inputs), so this function, the evaluate classes and a direct call agree.
    scores: dict[str, float] = {}
    for name in unique_names:
        arguments = _metric_options(name, options.get(name, {}))
        if name in METRICS_NEEDING_SOURCES:
            arguments["sources"] = list(sources)
        if name in METRICS_WITH_MODES:
            arguments["mode"] = mode
        scores.update(METRIC_FUNCTIONS[name](list(predictions), reference_lists, **arguments))
    return scores


def __getattr__(name: str) -> Any:
    # METRICS: name -> `evaluate.Metric` class; importing them imports `evaluate` (seconds).
    if name == "METRICS":
        return importlib.import_module(EVALUATE_METRICS_MODULE).METRICS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
