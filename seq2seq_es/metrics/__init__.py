"""Evaluation metrics for Spanish generation: ROUGE, sacreBLEU, chrF, SARI, exact match, METEOR,
token F1.

Each metric is a plain function, its module's ``compute`` (`METRIC_FUNCTIONS` maps the names),
and `compute_metrics` checks the inputs and merges the scores of several. All scores are on a
0-100 scale. Tokenization, stemming and sentence splitting are Spanish-aware
(`seq2seq_es.metrics.text`); ROUGE and SARI can also reproduce the paper's numbers
(``mode="paper"``). Nothing is fetched from the Hugging Face hub when scoring.

The same metrics exist as `evaluate.Metric` classes (`Rouge`, `Bleu`, ..., and ``METRICS``:
name -> class) for code that wants `evaluate`-style objects. They live in
`seq2seq_es.metrics.evaluate_metrics` and are imported on first access only: importing
``evaluate`` imports transformers, torch and datasets (seconds), which `seq2seq-es score` and
`compute_metrics` never need.
"""

from __future__ import annotations

import importlib
from typing import Any

from seq2seq_es.metrics.cli import score_main
from seq2seq_es.metrics.text import split_sentences, word_tokens

_LAZY_ATTRIBUTES = {
    "compute_metrics": "seq2seq_es.metrics.scoring",
    "METRIC_FUNCTIONS": "seq2seq_es.metrics.scoring",
    # The `evaluate.Metric` classes: these import `evaluate`.
    "METRICS": "seq2seq_es.metrics.evaluate_metrics",
    "Rouge": "seq2seq_es.metrics.evaluate_metrics",
    "Bleu": "seq2seq_es.metrics.evaluate_metrics",
    "Chrf": "seq2seq_es.metrics.evaluate_metrics",
    "Sari": "seq2seq_es.metrics.evaluate_metrics",
    "ExactMatch": "seq2seq_es.metrics.evaluate_metrics",
    "Meteor": "seq2seq_es.metrics.evaluate_metrics",
    "TokenF1": "seq2seq_es.metrics.evaluate_metrics",
}

__all__ = ["METRICS", "METRIC_FUNCTIONS", "compute_metrics", "score_main", "split_sentences",
           "word_tokens", "Rouge", "Bleu", "Chrf", "Sari", "ExactMatch", "Meteor", "TokenF1"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY_ATTRIBUTES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY_ATTRIBUTES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_ATTRIBUTES))
