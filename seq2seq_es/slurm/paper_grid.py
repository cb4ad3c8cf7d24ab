"""The paper's fine-tuning runs as data: which model was trained on which task, and its grid.

Names follow the package registries (`seq2seq_es.models.MODELS`, `seq2seq_es.tasks.TASKS`).
The model x task pairs come from the paper: translation with the multilingual baseline, the other
tasks with the Spanish BERT2BERT baselines, and LEDO only on the two long-document tasks.
"""

from __future__ import annotations

TRANSLATION_TASKS: tuple[str, ...] = ("wmt13-es-en", "wmt13-en-es", "fapesp-es-pt", "fapesp-pt-es")
TRANSLATION_MODELS: tuple[str, ...] = ("barto", "t5s", "mbert2mbert", "mbertshare")

MONOLINGUAL_TASKS: tuple[str, ...] = ("mlsum", "wikilingua", "xlsum", "eurlexsum", "sqac", "mlqa",
                                      "bisect", "miam")
MONOLINGUAL_MODELS: tuple[str, ...] = ("barto", "t5s", "beto2beto", "betoshare", "roberta2roberta",
                                       "robertashare")

LONG_DOCUMENT_TASKS: tuple[str, ...] = ("xlsum", "eurlexsum")
LONG_DOCUMENT_MODELS: tuple[str, ...] = ("ledo",)

# Hyper-parameter grid of the paper, as dotted train overrides: batch {4,8,16} x lr {3e-5,5e-5} x
# epochs {3,6}. Values stay strings so that folder names and overrides keep the user's spelling.
PAPER_GRID: dict[str, tuple[str, ...]] = {
    "train.batch_size": ("4", "8", "16"),
    "optim.lr": ("3e-5", "5e-5"),
    "train.epochs": ("3", "6"),
}


def _model_order() -> list[str]:
    order: list[str] = []
    for group in (MONOLINGUAL_MODELS, TRANSLATION_MODELS, LONG_DOCUMENT_MODELS):
        order.extend(name for name in group if name not in order)
    return order


def _task_order() -> list[str]:
    order: list[str] = []
    for group in (MONOLINGUAL_TASKS, TRANSLATION_TASKS):
        order.extend(name for name in group if name not in order)
    return order


PAPER_MODELS: tuple[str, ...] = tuple(_model_order())
PAPER_TASKS: tuple[str, ...] = tuple(_task_order())


def paper_pairs() -> list[tuple[str, str]]:
    """Every (model, task) the paper fine-tuned, ordered model by model as in its tables."""
    groups = ((MONOLINGUAL_MODELS, MONOLINGUAL_TASKS), (TRANSLATION_MODELS, TRANSLATION_TASKS),
              (LONG_DOCUMENT_MODELS, LONG_DOCUMENT_TASKS))
    pairs = {(model, task) for models, tasks in groups for model in models for task in tasks}
    model_rank = {name: i for i, name in enumerate(PAPER_MODELS)}
    task_rank = {name: i for i, name in enumerate(PAPER_TASKS)}
    return sorted(pairs, key=lambda pair: (model_rank[pair[0]], task_rank[pair[1]]))
