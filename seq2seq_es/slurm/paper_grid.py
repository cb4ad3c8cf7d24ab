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

# The grid's train.batch_size axis is the EFFECTIVE batch, examples per optimizer step: the paper
# ran everything on one 24 GiB RTX 3090, so its batches were what one such GPU held, with
# accumulation where they did not fit. The planner (sweep.plan_sweep) turns a value B into
# train.batch_size = the largest divisor of B's share per rank that is at most the pair's default
# micro-batch, and train.grad_accum = the rest, so that no grid point asks for more memory than
# the pair's default (tests/test_memory.py).
# Values stay strings so that folder names and overrides keep the user's spelling.

# The paper's grid for every task but translation: batch {4,8,16} x lr {3e-5,5e-5} x epochs {3,6}.
PAPER_GRID: dict[str, tuple[str, ...]] = {
    "train.batch_size": ("4", "8", "16"),
    "optim.lr": ("3e-5", "5e-5"),
    "train.epochs": ("3", "6"),
}

# Translation with BARTO and T5S did not use that grid: the shell files trained at an effective
# batch of 384 for a fixed number of steps (5000 BARTO, 10000 T5S) with a learning rate that
# climbed to 6.25e-4 / 1.25e-3 (the registry holds the steps, the micro-batch x accumulation,
# 96 x 4 and 32 x 12, and each model's peak). So the grid is that recipe, one point. The summary
# grid's lr 3e-5/5e-5 is far below the recipe, and its epochs axis would not apply
# (train.max_steps wins), so half its points would be duplicates.
TRANSLATION_RECIPE: dict[str, tuple[str, ...]] = {
    "train.batch_size": ("384",),
}

# The mBERT pairs (translation's multilingual baseline) were trained like the other BERT2BERT
# runs: 16 per device, 5e-5, by epochs (the registry's overrides); they get the same grid as those.
_BERT_PAIR_FAMILY = "bert2bert"


def grid_for(model: str, task: str) -> dict[str, tuple[str, ...]]:
    """The paper's grid for one pair: the translation recipe, or the grid of the other tasks
    (also a user's own task's: the paper's search over batch, lr and epochs)."""
    from ..models import get_model_spec  # imported here: status/collect need no registry
    from ..tasks import TASKS

    spec = TASKS.get(task)
    if spec is not None and spec.kind == "translation" \
            and get_model_spec(model).family != _BERT_PAIR_FAMILY:
        return TRANSLATION_RECIPE
    return PAPER_GRID


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
