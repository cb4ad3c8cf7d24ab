"""Evaluation metrics for Spanish generation: ROUGE, sacreBLEU, chrF, SARI, exact match, METEOR,
token F1.

Each metric is an `evaluate.Metric` subclass shipped in this package and instantiated directly,
so nothing is fetched from the Hugging Face hub when scoring. All scores are on a 0-100 scale.
Tokenization, stemming and sentence splitting are Spanish-aware (`seq2seq_es.metrics.text`);
ROUGE can also reproduce the paper's English-tokenized numbers (``mode="paper"``).

``METRICS``, ``compute_metrics`` and the metric classes are loaded on first access: importing
``evaluate`` imports transformers and torch, which takes seconds, and the CLI should not pay
for it on every command.
"""

from __future__ import annotations

import importlib
from typing import Any

from seq2seq_es.metrics.cli import score_main
from seq2seq_es.metrics.text import split_sentences, word_tokens

_LAZY_ATTRIBUTES = {
    "METRICS": "seq2seq_es.metrics.scoring",
    "compute_metrics": "seq2seq_es.metrics.scoring",
    "Rouge": "seq2seq_es.metrics.rouge",
    "Bleu": "seq2seq_es.metrics.bleu",
    "Chrf": "seq2seq_es.metrics.chrf",
    "Sari": "seq2seq_es.metrics.sari",
    "ExactMatch": "seq2seq_es.metrics.exact_match",
    "Meteor": "seq2seq_es.metrics.meteor",
    "TokenF1": "seq2seq_es.metrics.token_f1",
}

__all__ = ["METRICS", "compute_metrics", "score_main", "split_sentences", "word_tokens",
           "Rouge", "Bleu", "Chrf", "Sari", "ExactMatch", "Meteor", "TokenF1"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY_ATTRIBUTES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY_ATTRIBUTES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_ATTRIBUTES))
