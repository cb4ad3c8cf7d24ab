"""Tasks by name: hub source, columns, row formatting, metrics and the paper's run settings.

`get_task(name)` gives a registry `TaskSpec`, `task_for(cfg.data)` the one a run names (the
registry's or the user's own); `load_examples(task, split, ...)` gives a `datasets.Dataset`
with `source`, `target`, `references` and `example_id`, plus a `LoadReport` to print.
"""

from .formatting import (DIALOGUE_TURN_SEPARATOR, QA_PROMPT, SPLIT_MARKER, clean_prediction,
                         join_sentences, normalize_split_markers, split_sentences)
from .loading import PARQUET_REVISION, LoadReport, load_examples
from .registry import KINDS, OWN_KIND, SPLITS, TASKS, TaskSpec, get_task, task_for

__all__ = [
    "DIALOGUE_TURN_SEPARATOR", "KINDS", "OWN_KIND", "PARQUET_REVISION", "QA_PROMPT", "SPLITS", "SPLIT_MARKER",
    "TASKS", "LoadReport", "TaskSpec", "clean_prediction", "get_task", "join_sentences",
    "load_examples", "normalize_split_markers", "split_sentences", "task_for",
]
