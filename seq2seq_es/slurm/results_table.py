"""`slurm collect`: the results table of a sweep or of run folders (markdown, CSV, plot).

`slurm collect` turns a sweep into the paper's tables. For every (model, task) it chooses ONE
run: the grid point whose validation (dev) score on the task's main metric is best. Every
number of that task in the model's row comes from that run, dev and test side by side, so a
row never mixes runs. Tables follow the paper's experiment families (TaskSpec.kind), each with
a per-model average column beside the paper's own average where the paper gives one.

Scores come from the final_results.json a finished run writes (monitor.read_final_results,
the reader `slurm status` uses too) or, for a run without one, from its metrics.jsonl
(read_metrics, which is `seq2seq_es.metrics_log.read`: a half-written last line, the run still
writing it, is skipped, so collect can run while jobs are going). Job states are `slurm
status`'s (monitor.py); this module only reads the run folders, never SLURM.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import run_files
from ..config import BOOKKEEPING_KEYS, SEED_MAX, scored_on_training_data, with_keys_added_since
from ..errors import ConfigError, DataError, close_matches
# The one metrics.jsonl reader (merges a step's records, keeping the last values).
from ..metrics_log import read as read_metrics
# The final_results.json reader `slurm status` uses too (this module imports monitor, never
# the reverse).
from .monitor import read_final_results
from .sweep import (BATCH_SPLIT_KEYS, RUN_FOLDERS_MODE, SEED_AXIS, Manifest, RunPlan,
                    describe_grid_point, grid_point_name, without_seed)


SPLITS_SHOWN = ("both", "dev", "test")
OTHER_FAMILY = "other"
_MISSING = "–"
# Metric names where lower is better; everything else in a results table is maximised.
_LOWER_IS_BETTER = ("loss", "perplexity", "ppl", "ter", "wer", "cer")
# Bookkeeping keys that are not task metrics.
_NOT_TASK_METRICS = ("loss", "runtime", "per_second", "tokens_per_s", "samples", "lr", "time",
                     "gen_len", "steps")
# The paper's experiment families (TaskSpec.kind) in its order, with their tables' titles.
FAMILY_TITLES: dict[str, str] = {
    "summarization": "Summarization",
    "long_summarization": "Long summarization",
    "qa": "Generative QA",
    "split_rephrase": "Split-and-rephrase",
    "dialogue": "Dialogue",
    "translation": "Translation",
    OTHER_FAMILY: "Other tasks",
}
# What a family's average column averages: (label, metrics). A model's average is the plain
# mean of these metrics over every task of the family in the sweep (each task's value from that
# model's chosen run), dev and test separately; it is left out ('–') unless the model has every
# one of those values. So the summarization average over MLSUM + WikiLingua is
# (R1 + R2 + RL of MLSUM + R1 + R2 + RL of WikiLingua) / 6.
FAMILY_AVERAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "summarization": ("ROUGE", ("rouge1", "rouge2", "rougeL")),
    "long_summarization": ("ROUGE", ("rouge1", "rouge2", "rougeL")),
    "qa": ("ROUGE", ("rouge1", "rouge2", "rougeL")),
    "split_rephrase": ("SARI", ("sari",)),
    "dialogue": ("F1", ("token_f1",)),
    "translation": ("BLEU", ("bleu",)),
}
# The per-model figures for a whole family reported by the paper ("Sequence-to-Sequence Spanish
# Pre-trained Language Models", taken second-hand): the average ROUGE over MLSUM + WikiLingua and
# over SQAC + MLQA, and the single-dataset families' scores (BiSECT SARI, MIAM F1). Which split
# was averaged is not stated; the paper's per-dataset tables give dev/test pairs.
# The tasks each figure averages over: ours is set beside it only when it covers the same tasks
# and every metric of FAMILY_AVERAGES (an average over MLSUM alone is not the paper's).
PAPER_AVERAGE_TASKS: dict[str, tuple[str, ...]] = {
    "summarization": ("mlsum", "wikilingua"),
    "qa": ("sqac", "mlqa"),
    "split_rephrase": ("bisect",),
    "dialogue": ("miam",),
}
PAPER_AVERAGES: dict[str, dict[str, float]] = {
    "summarization": {"t5s": 26.54, "barto": 25.49, "beto2beto": 24.39},
    "qa": {"t5s": 67.92},
    "split_rephrase": {"t5s": 56.37},
    "dialogue": {"barto": 34.30, "betoshare": 32.45, "t5s": 28.80},
}
# The per-dataset figures the paper reports (second-hand, as above): (dev, test) where it gives
# both, one value where the split is not stated; translation's are the hub model cards' WMT13
# validation BLEU. Listed under a family's table for the pairs the table holds.
PAPER_FIGURES: dict[tuple[str, str], dict[str, tuple[float, float] | float]] = {
    ("t5s", "mlsum"): {"rouge1": (30.14, 29.44), "rouge2": (12.27, 11.56),
                       "rougeL": (24.62, 23.88)},
    ("t5s", "sqac"): {"rouge1": (80.68, 78.80)},
    ("barto", "sqac"): {"rouge1": (77.92, 77.00)},
    ("t5s", "bisect"): {"sari": 56.37, "bleu": 43.27},
    ("barto", "miam"): {"token_f1": 34.30, "meteor": 26.95},
    ("betoshare", "miam"): {"token_f1": 32.45, "meteor": 27.33},
    ("t5s", "miam"): {"token_f1": 28.80, "meteor": 22.24},
    # Long summarization: one ROUGE figure per pair, which ROUGE (an average of R1/R2/RL, or
    # one of them) is not stated second-hand.
    ("t5s", "xlsum"): {"ROUGE (which not stated)": 22.06},
    ("barto", "xlsum"): {"ROUGE (which not stated)": 21.58},
    ("barto", "eurlexsum"): {"ROUGE (which not stated)": 56.82},
    ("t5s", "eurlexsum"): {"ROUGE (which not stated)": 56.42},
    ("t5s", "wmt13-es-en"): {"bleu": (29.75, float("nan"))},
    ("t5s", "wmt13-en-es"): {"bleu": (30.63, float("nan"))},
    ("barto", "wmt13-es-en"): {"bleu": (30.22, float("nan"))},
    ("barto", "wmt13-en-es"): {"bleu": (30.22, float("nan"))},
}


def paper_cells(model: str, task: str, metric: str) -> list[str]:
    """The CSV's paper, paper_dev and paper_test cells of one (model, task, metric): the pair's
    PAPER_FIGURES value, split-specific where the source gives the split."""
    value = PAPER_FIGURES.get((model, task), {}).get(metric)
    if value is None:
        return ["", "", ""]
    if isinstance(value, tuple):
        return [""] + ["" if math.isnan(figure) else repr(figure) for figure in value]
    return [repr(value), "", ""]


def paper_figures_line(model: str, task: str) -> str | None:
    """'t5s mlsum: rouge1 30.14 / 29.44, ...' for a pair the paper reports, else None."""
    figures = PAPER_FIGURES.get((model, task))
    if not figures:
        return None

    def shown(value: tuple[float, float] | float) -> str:
        if isinstance(value, tuple):
            dev, test = value
            return f"{dev:.2f} / " + ("–" if math.isnan(test) else f"{test:.2f}")
        return f"{value:.2f} (split not stated)"
    return f"{model} {task}: " + ", ".join(f"{name} {shown(value)}"
                                           for name, value in figures.items())


def is_task_metric(metric: str) -> bool:
    return not any(word in metric for word in _NOT_TASK_METRICS)


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value is better: losses, perplexity and error rates (TER, WER, CER).

    Decided on the words of the name ('eval_loss' yes, 'answer_f1' no)."""
    return any(word in _LOWER_IS_BETTER for word in re.split(r"[^a-z0-9]+", metric.lower()))


def _better(value: float, than: float, metric: str) -> bool:
    return value < than if lower_is_better(metric) else value > than


def _dev_beats(challenger: dict[str, float], held: dict[str, float], metric: str) -> bool:
    """Whether dev scores `challenger` beat `held` on `metric`; on a tie, the lower dev loss
    wins (engine.trainer.is_better's rule: a ROUGE or F1 stuck at one value, often 0 on tiny or
    hard runs, says nothing, and the first grid point or step was chosen over a better trained
    one)."""
    value, best = challenger[metric], held[metric]
    if value == best and metric != "loss":
        loss, best_loss = challenger.get("loss"), held.get("loss")
        return loss is not None and best_loss is not None and loss < best_loss
    return _better(value, best, metric)


def _numbers(values: Any) -> dict[str, float]:
    """The finite numbers of a {name: value} mapping (booleans and anything else dropped)."""
    if not isinstance(values, dict):
        return {}
    return {str(key): float(value) for key, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value)}


def task_family(task: str, run_dir: str | Path | None = None) -> tuple[str, str | None]:
    """(family, main metric) of a task: its TaskSpec's kind and main_metric, or ('other', None)
    for a name the registry does not know. A task of the user's own is 'other' with the main
    score of the first metric its run's config.yaml names (data.metrics: what its runs were
    validated by; not the runs' train.best_metric, which may be the loss)."""
    # Imported here: cli imports this module for `slurm status` too, which needs no registry.
    from ..tasks import TASKS

    spec = TASKS.get(task)
    if spec is not None:
        return spec.kind, spec.main_metric
    return OTHER_FAMILY, own_task_main_metric(run_dir) if run_dir is not None else None


def own_task_main_metric(run_dir: str | Path) -> str | None:
    """The main score of an own task's run (None: no readable own-task config there)."""
    from ..tasks.registry import MAIN_SCORES, OWN_TASK_METRICS

    try:
        config = run_files.read_run_config(run_dir)
    except ValueError:
        return None
    data = config.get("data") if isinstance(config, dict) else None
    if not isinstance(data, dict) or not data.get("source_column"):
        return None
    names = [name.strip() for name in str(data.get("metrics") or "").split(",") if name.strip()]
    return MAIN_SCORES.get((names or list(OWN_TASK_METRICS))[0])


@dataclass
class RunResult:
    """What one run reached: its dev (validation) and test metrics at its best step."""

    run: RunPlan
    validation: dict[str, float]          # metric name without prefix -> value; 'loss' included
    test: dict[str, float] | None         # None: the run has no test scores (yet)
    main_metric: str | None               # as the run declared it in final_results.json
    best_step: int | None
    final: bool                           # finished: final_results.json or DONE is there
    source: str                           # run_files.FINAL_RESULTS or run_files.METRICS
    code: str | None = None               # the package commit (or version) that ran it
    data: str | None = None               # local training file (config.yaml); None: the hub's
    dev_data: str | None = None           # what its dev scores were computed on
                                          # (validation_data); None: no config.yaml to say
    test_data: str | None = None          # and its test scores (validation_data(.., "test"))
    spread: SeedSpread | None = None      # a grid point's seeds (values: their means); None: a run
    kept_last: bool = False               # its scores are its last step's, not its best's
                                          # (final_results.json "kept": "last", the best
                                          # validation at another step)


@dataclass
class SeedSpread:
    """What a seed group's means are over: the runs of one grid point that differ only in
    train.seed. Each value is the mean over the seeds that have it, so counts may differ."""

    seeds: list[str]                      # every seed of the grid point, scored or not
    scored: list[str]                     # the seeds with scores, in `seeds` order
    members: list[RunResult]              # their results, in `scored` order
    dev_std: dict[str, float | None]      # sample standard deviation (n-1); None from one value
    test_std: dict[str, float | None]
    dev_n: dict[str, int]                 # how many seeds each mean is over
    test_n: dict[str, int]
    remarks: list[str] = field(default_factory=list)  # seeds without a value, or unfinished


def local_data(config: dict | None) -> str | None:
    """What a run trained on when it is not the task's whole hub dataset: the local training file
    its config.yaml names and/or the first N examples it kept (data.max_train_samples), or None.
    A subset is named too: a run on 100 MLSUM examples sat beside the paper's figures unmarked."""
    data = config.get("data") if isinstance(config, dict) else None
    if not isinstance(data, dict):
        return None
    train_file, subset = data.get("train_file"), data.get("max_train_samples")
    if subset and subset == _paper_subset(config):
        subset = None  # the paper's own selection (WMT13's first 600000 pairs), not a cut of ours
    if not train_file and not subset:
        return None
    where = str(train_file) if train_file else "the task's hub dataset"
    return where + (f", its first {subset} examples (data.max_train_samples)" if subset else "")


def _paper_subset(config: dict) -> int | None:
    """The data.max_train_samples the registry gives the run's task and model (the paper's
    runs trained on part of a dataset), or None."""
    from ..tasks import TASKS  # here: status needs no registry

    data, model = config.get("data") or {}, config.get("model")
    spec = TASKS.get(data.get("task")) if isinstance(data.get("task"), str) else None
    name = model.get("name") if isinstance(model, dict) else None
    if spec is None:
        return None
    return spec.defaults_for(name if isinstance(name, str) else None).get(
        "data.max_train_samples")


def validation_data(config: dict | None, split: str = "validation") -> str | None:
    """What a run's dev (or, split "test", test) scores were computed on, from its config.yaml,
    in words the table shows: its data.validation_file (data.test_file), else the task's hub
    dataset (with data.hub_dataset, hub_config and hub_revision where set), and, for validation,
    data.max_eval_samples where set (the first N examples: another subset is other data; the
    test split is always scored whole). Runs with different values have scores that do not
    compare. None without a config (an entry that writes none): nothing to compare by."""
    if not isinstance(config, dict):
        return None
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    if data.get(f"{split}_file"):
        where = f"data.{split}_file {data[f'{split}_file']}"
    else:
        where = "the hub dataset" + (f" {data['hub_dataset']}" if data.get("hub_dataset") else "")
        named = [f"{key} {data[key]}" for key in ("hub_config", "hub_revision") if data.get(key)]
        where += f" ({', '.join(named)})" if named else ""
    if split == "validation" and data.get("max_eval_samples"):
        where += f", its first {data['max_eval_samples']} examples (data.max_eval_samples)"
    return where


def _dev_data_text(value: str | None) -> str:
    return value or "data not recorded (no config.yaml)"


def same_dev_data(model: str, task: str, results: list[RunResult]
                  ) -> tuple[list[RunResult], str | None]:
    """The results of one (model, task) that may be compared, and a warning when some may not.

    Dev scores on different data (another validation file, the hub's split against a file,
    another data.max_eval_samples) do not compare, so the best of them says nothing: the choice
    is made among the grid points validated on the data most of them used (on a tie, data no
    run of which is _doubtful, then the first in the sweep's or folders' order), and the warning names the data the choice
    was made on and every run passed over with its data. Results all on the same data come back
    as they are, with no warning."""
    by_data: dict[str | None, list[RunResult]] = {}
    for result in results:
        by_data.setdefault(result.dev_data, []).append(result)
    if len(by_data) < 2:
        return results, None
    # the first of the largest; on a tie, data no run of which was validated on its own
    # training file (folder order chose such a run over a clean one)
    kept = max(by_data, key=lambda data: (len(by_data[data]),
                                          not any(map(_doubtful, by_data[data]))))
    pool = by_data[kept]
    passed = "; ".join(f"{', '.join(result.run.name for result in others)} on "
                       f"{_dev_data_text(data)}"
                       for data, others in by_data.items() if data != kept)
    return pool, (f"{model} / {task}: its runs were validated on different data, whose dev "
                  f"scores do not compare: the run shown was chosen among the {len(pool)} "
                  f"validated on {_dev_data_text(kept)} "
                  f"({', '.join(result.run.name for result in pool)}); left out of the "
                  f"choice: {passed}. For the best on each, collect the runs of each validation "
                  "set on their own")


def run_code(run_dir: Path) -> str | None:
    """Which code a run ran, from its versions.json: the package's git commit where it was a
    checkout, else its version; None without the file (an entry that writes none)."""
    try:
        versions = json.loads((run_dir / run_files.VERSIONS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(versions, dict):
        return None
    commit = versions.get("seq2seq-es commit")
    if isinstance(commit, str):
        return commit
    version = versions.get("seq2seq-es")
    return f"version {version}" if isinstance(version, str) else None


def check_run_config(run: RunPlan, run_dir: Path) -> dict | None:
    """The run's config.yaml (written by the engine at start) against what the sweep planned for
    it: its task, model and grid point (the effective-batch axis aside, which the planner splits
    into micro-batch x accumulation). A folder reused by another run, or a config edited by hand,
    is a DataError naming the file and the key."""
    path = run_dir / run_files.CONFIG
    try:
        config = run_files.read_run_config(run_dir)
    except ValueError as exc:
        raise DataError(str(exc), file=str(path)) from None
    if config is None:
        return None  # an entry that writes none (the probe), or a run that has not started
    planned = {"data.task": run.task, "model.name": run.model,
               **{key: value for key, value in {**run.grid_point,
                                                **(run.planned_point or {})}.items()
                  if key != "train.batch_size"}}
    for key, want in planned.items():
        section, _, name = key.partition(".")
        have = config.get(section, {}).get(name) if isinstance(config.get(section), dict) \
            else None
        if have is None:
            continue
        try:
            same = float(have) == float(want)
        except (TypeError, ValueError):
            same = str(have) == str(want)
        if not same:
            raise DataError(f"its {key} is {have!r}, but the sweep planned {want!r} for this run",
                            file=str(path))
    return config


def run_result(run: RunPlan, main_metric: str | None = None) -> RunResult | None:
    """The run's result, or None while it has no validation scores.

    A finished run's final_results.json is taken as it is: {"main_metric", "best_step",
    "validation": {metric: value}, "test": {metric: value} or null}. Without it (a run still
    going, or an entry that writes only metrics.jsonl) the run's `eval/<metric>` records stand in:
    the record with the best `main_metric` (the latest record when that metric is not logged), and
    the `test/<metric>` values logged at that record's step. Such a run counts as final only if
    it wrote DONE. Raises DataError for a broken file or one of another task or model, naming it.
    """
    run_dir = Path(run.run_dir)
    config = check_run_config(run, run_dir)
    trained_on, dev_data = local_data(config), validation_data(config)
    test_data = validation_data(config, "test")
    path = run_dir / run_files.FINAL_RESULTS
    data = read_final_results(path)
    if data is not None:
        for key, planned in (("task", run.task), ("model", run.model)):
            # Another run's file (copied, or a folder reused) must not fill this run's cell.
            if data.get(key) is not None and data[key] != planned:
                # a run folder collected as such has its task and model from its config.yaml
                source = ("its config.yaml names" if "run" in run.grid_point
                          and run.planned_point is None else "the sweep planned")
                raise DataError(f"its {key} is {data[key]!r}, but {source} {planned!r} for this "
                                "run", file=str(path))
        validation = _numbers(data["validation"])
        if not validation:
            raise DataError("no finite number among its validation scores", file=str(path))
        test = _numbers(data.get("test")) or None
        declared = data.get("main_metric")
        best_step = data.get("best_step")
        return RunResult(run=run, validation=validation, test=test,
                         main_metric=declared if isinstance(declared, str) else None,
                         best_step=best_step if isinstance(best_step, int) else None,
                         final=True, source=run_files.FINAL_RESULTS, code=run_code(run_dir),
                         data=trained_on, dev_data=dev_data, test_data=test_data,
                         # the last step kept, unless it was the best validation's too
                         kept_last=data.get("kept") == "last"
                         and data.get("best_validation_step") != data.get("best_step"))
    evals: list[tuple[int | None, dict[str, float]]] = []
    tests: dict[int | None, dict[str, float]] = {}  # step -> test/ values logged at it
    for record in read_metrics(run_dir / run_files.METRICS):
        step = record.get("step") if isinstance(record.get("step"), int) else None
        values = _numbers({key[len("eval/"):]: value for key, value in record.items()
                           if key.startswith("eval/")})
        if values:
            evals.append((step, values))
        tests.setdefault(step, {}).update(_numbers({key[len("test/"):]: value
                                                    for key, value in record.items()
                                                    if key.startswith("test/")}))
    if not evals:
        return None
    best = evals[-1]
    scored = [item for item in evals if main_metric and main_metric in item[1]]
    if scored:
        best = scored[0]
        for item in scored[1:]:
            # the engine's own rule, so that the row shows the step its best checkpoint holds
            if _dev_beats(item[1], best[1], main_metric):
                best = item
    # A run with train.load_best_at_end false ends on its last step's weights, so its latest
    # evaluation stands in, as its final_results.json will ("kept": "last"); its best so far
    # was shown, a step the run will not keep.
    keeps_last = _keeps_last_step(config)
    chosen = evals[-1] if keeps_last else best
    # The engine scores test at the step it chose (logged at that step): test values of another
    # step would pair this step's dev scores with another model's test scores.
    return RunResult(run=run, validation=chosen[1], test=tests.get(chosen[0]) or None,
                     main_metric=None, best_step=chosen[0],
                     final=(run_dir / run_files.DONE).exists(), source=run_files.METRICS,
                     code=run_code(run_dir), data=trained_on, dev_data=dev_data,
                     test_data=test_data, kept_last=keeps_last and chosen[0] != best[0])


def _keeps_last_step(config: dict | None) -> bool:
    """Whether the run's config.yaml sets train.load_best_at_end false."""
    train = config.get("train") if isinstance(config, dict) else None
    return isinstance(train, dict) and train.get("load_best_at_end") is False


def unfinished_state(run_dir: str | Path) -> str:
    """What a run that has not finished is doing, from its folder alone (collect asks no
    scheduler): training now when a process holds its train.lock, else stopped, and how when a
    marker says (a stop signal's PREEMPTED, a job's OUT_OF_REQUEUES)."""
    from ..engine.run_lock import describe_holder, training_now

    run_dir = Path(run_dir)
    holder = training_now(run_dir)
    if holder is not None:
        return "training now" + (f" ({describe_holder(holder)})" if holder else "")
    if (run_dir / run_files.OUT_OF_REQUEUES).exists():
        return "stopped: pre-empted with its requeues used up (OUT_OF_REQUEUES)"
    try:
        stop = json.loads((run_dir / run_files.PREEMPTED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stop = None
    if isinstance(stop, dict):
        return (f"stopped: {stop.get('signal', 'a stop signal')} at step {stop.get('step', '?')}, "
                "checkpoint saved (PREEMPTED)")
    return ("stopped without finishing: crashed, cancelled or killed (no process holds its "
            "train.lock; its log says why)")


def _trained_settings(run_dir: Path, name: str = run_files.CONFIG) -> dict[str, Any]:
    """A run's config (config.yaml, or an earlier one it keeps) as {'section.key': value},
    without the keys that only say how it was watched or stored, and with those an older
    version did not write at their defaults (config.with_keys_added_since); {} when
    unreadable."""
    try:
        config = run_files.read_run_config(run_dir, name)
    except ValueError:
        return {}
    flat = with_keys_added_since(run_files.flat_run_config(config or {}))
    return {key: value for key, value in flat.items() if key not in BOOKKEEPING_KEYS}


def changed_during_training(run_dir: Path) -> list[str]:
    """'key old -> new at step N' for each setting a resume changed (the engine keeps the
    config a run trained with until then as config.until_step_N.yaml)."""
    versions = [(step, _trained_settings(run_dir, name))
                for step, name in run_files.earlier_configs(run_dir)]
    if not versions:
        return []
    versions.append((None, _trained_settings(run_dir)))
    changes = []
    for (step, before), (_, after) in zip(versions, versions[1:]):
        # The split of a step into micro-batch x accumulation is no setting of its own: a run
        # with a checkpoint resumes with the same examples per step only (`slurm resume` on
        # other ranks sets the accumulation that keeps them), so such a change is the same run.
        before, after = ({key: value for key, value in version.items()
                          if key not in BATCH_SPLIT_KEYS} for version in (before, after))
        changes += [f"{change} at step {step}"
                    for change in run_files.setting_changes(before, after)]
    return changes




def settings_warnings(manifest: Manifest, groups: dict[tuple[str, str], list[RunResult]]
                      ) -> list[str]:
    """What the grid labels do not say about the runs compared: a run whose settings a resume
    changed part-way (its scores are of neither setting alone), and, in a sweep, runs of one
    (model, task) that differ outside the grid's axes (a `slurm resume -- --key value` applies
    to the unfinished runs only). Run folders collected as such show every differing key in
    their labels already."""
    warnings = []
    for (model, task), results in groups.items():
        runs = [member.run for result in results for member in _members(result)]
        for run in runs:
            changes = changed_during_training(Path(run.run_dir))
            if changes:
                warnings.append(
                    f"{model} / {task}: {run.name} was resumed with other settings, so its "
                    f"scores are of neither setting alone: {'; '.join(changes)} (the earlier "
                    f"settings are kept in its config.until_step_N.yaml)")
            on_training = scored_on_training_data(_trained_settings(Path(run.run_dir)))
            if on_training:
                warnings.append(f"{model} / {task}: {run.name}'s {' and '.join(on_training)} "
                                "is its training file: those scores are on data it trained on")
        if manifest.mode == RUN_FOLDERS_MODE or len(runs) < 2:
            continue
        axes = set(manifest.grid) | {SEED_AXIS} | BATCH_SPLIT_KEYS
        settings = {run.name: _trained_settings(Path(run.run_dir)) for run in runs}
        keys = sorted({key for values in settings.values() for key in values} - axes)
        differing = [key for key in keys
                     if len({repr(values.get(key)) for values in settings.values()}) > 1]
        if differing:
            warnings.append(
                f"{model} / {task}: its runs differ outside the sweep's grid, which their labels "
                "do not show: " + "; ".join(
                    f"{key} (" + ", ".join(f"{name} {values.get(key)!r}"
                                           for name, values in settings.items()) + ")"
                    for key in differing))
    return warnings


def _seed_statistics(splits: list[dict[str, float]]) -> tuple[dict[str, float],
                                                                 dict[str, float | None],
                                                                 dict[str, int]]:
    """(mean, sample standard deviation, count) per metric over the seeds that have it."""
    names: list[str] = []
    for values in splits:
        names += [name for name in values if name not in names]
    means, stds, counts = {}, {}, {}
    for name in names:
        values = [split[name] for split in splits if name in split]
        means[name] = sum(values) / len(values)
        # n-1: the seeds are a sample of the seeds one could have drawn
        stds[name] = statistics.stdev(values) if len(values) > 1 else None
        counts[name] = len(values)
    return means, stds, counts


def seed_group_result(group: RunPlan, members: list[tuple[RunPlan, RunResult | None, str]]
                      ) -> RunResult | None:
    """One result for the seeds of a grid point: `group` is the grid point (its seeds' names,
    folders and the point without train.seed), `members` each seed's run, result (None: no
    scores) and why it has none. Every value is the mean over the seeds that have it; the
    group is final when every seed has finished. None when no seed has scores."""
    scored = [(run, result) for run, result, _ in members if result is not None]
    if not scored:
        return None
    results = [result for _, result in scored]
    validation, dev_std, dev_n = _seed_statistics([result.validation for result in results])
    tests = [result.test for result in results if result.test]
    test, test_std, test_n = _seed_statistics(tests) if tests else ({}, {}, {})
    seeds = [run.grid_point[SEED_AXIS] for run, _, _ in members]
    scored_seeds = [run.grid_point[SEED_AXIS] for run, _ in scored]
    remarks = []
    absent = [f"seed {run.grid_point[SEED_AXIS]} {why} ({run.name})"
              for run, result, why in members if result is None]
    if absent:
        remarks.append(f"{group.name}: the means are over seeds {', '.join(scored_seeds)}; "
                       + "; ".join(absent))
    unfinished = [run.grid_point[SEED_AXIS] for run, result in scored if not result.final]
    if unfinished:
        several = len(unfinished) > 1
        remarks.append(f"{group.name}: seed{'s' if several else ''} {', '.join(unfinished)} "
                       f"not finished: {'their' if several else 'its'} best evaluation so far "
                       "counts in the means")
    for split, names in (("dev", list(validation)), ("test", list(test))):
        lacking = []
        for run, result in scored:
            values = result.validation if split == "dev" else result.test or {}
            missing = [name for name in names if name not in values]
            if missing and not values:
                lacking.append(f"seed {run.grid_point[SEED_AXIS]} has no {split} scores")
            elif missing:
                lacking.append(f"seed {run.grid_point[SEED_AXIS]} has no {split} "
                               f"{', '.join(missing)}")
        if lacking:
            remarks.append(f"{group.name}: {'; '.join(lacking)}: those {split} means are over "
                           "the other seeds")
    codes = {result.code for result in results}
    # One value for seeds that agree; seeds on other data (a config edited by hand) show all,
    # so the group compares with no other grid point's data.
    dev_data = list(dict.fromkeys(result.dev_data for result in results))
    test_data = list(dict.fromkeys(result.test_data for result in results if result.test))
    sources = list(dict.fromkeys(result.source for result in results))
    declared = next((result.main_metric for result in results if result.main_metric), None)
    run = RunPlan(name=group.name, model=group.model, task=group.task,
                  grid_point=group.grid_point, argv=[],
                  run_dir=";".join(run.run_dir for run, _ in scored))
    return RunResult(run=run, validation=validation, test=test or None, main_metric=declared,
                     best_step=None, final=len(scored) == len(members) and all(
                         result.final for result in results),
                     source=";".join(sources), code=codes.pop() if len(codes) == 1 else None,
                     data=next((result.data for result in results if result.data), None),
                     dev_data=dev_data[0] if len(dev_data) == 1 else " + ".join(
                         _dev_data_text(data) for data in dev_data),
                     test_data=test_data[0] if len(test_data) == 1 else " + ".join(
                         _dev_data_text(data) for data in test_data) or None,
                     spread=SeedSpread(seeds=seeds, scored=scored_seeds, members=results,
                                       dev_std=dev_std, test_std=test_std, dev_n=dev_n,
                                       test_n=test_n, remarks=remarks))


# load_runs' grid points name the run folder: the seeds of one setting are in several folders.
_RUN_KEY = "run"


def seed_groups(manifest: Manifest) -> list[tuple[RunPlan, list[int]]]:
    """The runs of a sweep that are the seeds of one grid point: (the grid point as a RunPlan,
    the indices of its runs in manifest.runs), in the order of their first run. Runs of one
    (model, task) whose grid points differ only in train.seed form a group (for run folders
    given to collect, also in the folder name their point carries), when their seeds differ;
    a run without a train.seed in its point is in no group, so a sweep without seeds is read
    run by run as before."""
    by_point: dict[tuple[str, str, str], list[int]] = {}
    for index, run in enumerate(manifest.runs):
        if SEED_AXIS not in run.grid_point:
            continue
        base = without_seed(run.grid_point)
        base.pop(_RUN_KEY, None)
        by_point.setdefault((run.model, run.task, describe_grid_point(base)), []).append(index)
    groups = []
    for (model, task, _), indices in by_point.items():
        runs = [manifest.runs[index] for index in indices]
        if len({run.grid_point[SEED_AXIS] for run in runs}) < len(runs):
            continue  # two runs of one seed and settings (run folders): nothing to average
        first = runs[0]
        point = without_seed(first.grid_point)
        if _RUN_KEY in point:
            point[_RUN_KEY] = ",".join(run.name for run in runs)
            name = point[_RUN_KEY]
        else:
            seeds = ", ".join(run.grid_point[SEED_AXIS] for run in runs)
            name = f"{model}__{task}__{grid_point_name(point)} (seeds {seeds})"
        groups.append((RunPlan(name=name, model=model, task=task, grid_point=point, run_dir="",
                               argv=[]), indices))
    return groups


@dataclass
class Choice:
    """The run chosen for one (model, task), and what chose it."""

    result: RunResult
    selected_by: str          # the dev metric that chose the run
    main_metric: str | None   # the task's main metric (a run's declared one for an unknown task)
    compared: int             # runs the choice was made among
    remarks: list[str] = field(default_factory=list)  # runs not compared, other declared metrics

    @property
    def note(self) -> str:
        """Why the choice was not made by the main metric, or ''."""
        if self.main_metric is None or self.selected_by == self.main_metric:
            return ""
        return f"the main metric {self.main_metric} was not logged"


def _doubtful(result: RunResult) -> bool:
    """Whether a run of the result has scores in doubt, as settings_warnings says: validated or
    tested on its own training file, or resumed with other settings part-way."""
    return any(scored_on_training_data(_trained_settings(Path(member.run.run_dir)))
               or changed_during_training(Path(member.run.run_dir))
               for member in _members(result))


def _wins(challenger: RunResult, held: RunResult, metric: str) -> bool:
    """Whether `challenger` beats `held` on dev `metric` (_dev_beats)."""
    return _dev_beats(challenger.validation, held.validation, metric)


def choose_run(results: list[RunResult], main_metric: str | None) -> Choice:
    """The result with the best dev value of the task's main metric (lower is better for losses
    and error rates; a tie goes to the lower dev loss, as a run's own best checkpoint does, then
    to a run whose scores are not in doubt (_doubtful), then to the earlier grid point), among
    the finished runs when any has it. Runs choose their own checkpoints by train.best_metric,
    which a user may have set to another metric; across runs the task's main metric decides (a run's declared metric only for
    a task the registry does not know). When no run logged it, the first task metric the runs
    logged chooses instead (then 'loss'). Every run left out of the comparison is remarked."""
    declared = sorted({r.main_metric for r in results if r.main_metric})
    wanted = main_metric or (declared[0] if declared else None)
    if wanted and any(wanted in r.validation for r in results):
        metric = wanted
    else:
        names = [name for r in results for name in r.validation]
        metric = next((name for name in names if is_task_metric(name)),
                      "loss" if "loss" in names else names[0])
    candidates = [r for r in results if metric in r.validation]
    finished = [r for r in candidates if r.final]
    pool = finished or candidates
    best = pool[0]
    for result in pool[1:]:
        # On a full tie (dev value and loss), a run whose scores are in doubt (validated on its
        # training file, resumed with other settings) gives way to one that is not.
        if _wins(result, best, metric) or (not _wins(best, result, metric)
                                           and _doubtful(best) and not _doubtful(result)):
            best = result
    remarks = []
    missing = [r.run.name for r in results if metric not in r.validation]
    if missing:
        remarks.append(f"chosen among {len(pool)} of {len(results)} runs; no dev {metric} in "
                       + ", ".join(missing))
    better_unfinished = [r.run.name for r in candidates if not r.final and r is not best
                         and _wins(r, best, metric)]
    if finished and better_unfinished:
        remarks.append(f"finished runs preferred: {', '.join(better_unfinished)} (not finished) "
                       f"had a better dev {metric} so far")
    other = [name for name in declared if name != metric]
    if other:
        remarks.append(f"runs chose their checkpoints by train.best_metric {', '.join(other)}; "
                       f"runs are compared on {metric}")
    return Choice(result=best, selected_by=metric, main_metric=wanted, compared=len(pool),
                  remarks=remarks)


@dataclass
class Average:
    """One family's average column: `label` over `metrics` x `tasks`, per model."""

    family: str
    label: str
    metrics: tuple[str, ...]
    tasks: list[str]
    dev: dict[str, float | None]
    test: dict[str, float | None]
    final: dict[str, bool]
    paper: dict[str, float]
    # Over the paper's tasks and metrics: the paper's figure sits beside it, for the models it
    # gives one for.
    comparable: bool = False


@dataclass
class ResultsTable:
    """Everything collect shows: one chosen run per (model, task), grouped into families."""

    source: str                               # the manifest's path
    runs: int                                 # runs in the manifest
    models: list[str]                         # the paper's models first, in its order
    families: list[tuple[str, list[str]]]     # (family, its tasks), in the paper's order
    columns: dict[str, list[str]]             # task -> metric columns of its table
    chosen: dict[tuple[str, str], Choice]     # (model, task) -> the chosen run
    averages: dict[str, Average]              # family -> its average column
    grid_labels: dict[str, str]               # describe_grid_point(point) -> 'g1', 'g2', ...
    notes: list[str] = field(default_factory=list)  # runs left out, and why
    scored: int = 0                           # runs with scores (the rest: none yet, or left out)
    warnings: list[str] = field(default_factory=list)  # what may make cells not comparable
    unscored: list[str] = field(default_factory=list)  # runs with no scores: not started, failed
    from_run_folders: bool = False            # run folders given to collect, not a sweep
    grid_seeds: dict[str, list[str]] = field(default_factory=dict)  # seed group's point -> seeds
    seeds: list[str] = field(default_factory=list)  # the sweep's --seeds (manifest), if any

    @property
    def seeded(self) -> bool:
        """Whether a chosen cell is the mean of a grid point's seeds."""
        return any(choice.result.spread is not None for choice in self.chosen.values())

    def label(self, choice: Choice) -> str:
        return self.grid_labels[describe_grid_point(choice.result.run.grid_point)]

    def is_empty(self, split: str = "both") -> bool:
        """No chosen run, or (split 'test') no chosen run with test scores."""
        if split == "test":
            return not any(choice.result.test for choice in self.chosen.values())
        return not self.chosen


def _mean(values: list[float | None]) -> float | None:
    if not values or any(value is None for value in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]


def _average(family: str, tasks: list[str], models: list[str],
             chosen: dict[tuple[str, str], Choice]) -> Average | None:
    label, wanted = FAMILY_AVERAGES.get(family, ("", ()))
    logged = {name for task in tasks for model in models if (model, task) in chosen
              for name in chosen[(model, task)].result.validation}
    metrics = tuple(name for name in wanted if name in logged)
    if not metrics:  # nothing of ours to compare with the paper's figure
        return None
    comparable = (metrics == wanted
                  and sorted(tasks) == sorted(PAPER_AVERAGE_TASKS.get(family, ())))
    paper = {model: value for model, value in PAPER_AVERAGES.get(family, {}).items()
             if comparable and model in models and any((model, task) in chosen for task in tasks)}
    average = Average(family=family, label=label, metrics=metrics, tasks=tasks, dev={}, test={},
                      final={}, paper=paper, comparable=comparable)
    for model in models:
        results = [chosen[(model, task)].result if (model, task) in chosen else None
                   for task in tasks]
        average.dev[model] = _mean([r.validation.get(name) if r else None
                                    for r in results for name in metrics])
        average.test[model] = _mean([(r.test or {}).get(name) if r else None
                                     for r in results for name in metrics])
        average.final[model] = all(r is not None and r.final for r in results)
    return average


# The order of metric columns, as the paper's tables read (R1, R2, RL, ...); others after, by name.
_COLUMN_ORDER = ("rouge1", "rouge2", "rougeL", "rougeLsum", "sari", "bleu", "chrf", "exact_match",
                 "token_f1", "meteor", "loss")


def _column_rank(name: str) -> tuple[int, str]:
    return (_COLUMN_ORDER.index(name) if name in _COLUMN_ORDER else len(_COLUMN_ORDER), name)


def _metric_hint(unknown: list[str], logged) -> str:
    """'; did you mean 'rougeL'?' for near misses of the --metrics names (names are
    case-sensitive: rougel is no metric; a name that differs only in case is the one meant)."""
    hints = []
    for name in unknown:
        same = [known for known in sorted(logged) if known.lower() == name.lower()]
        matches = same or close_matches(name, logged)
        if matches:
            meant = " or ".join(f"'{match}'" for match in matches)
            hints.append(meant if len(unknown) == 1 else f"{meant} for {name}")
    return f"; did you mean {', '.join(hints)}?" if hints else ""


_CODE_NOT_RECORDED = "code not recorded (no versions.json)"


def _members(result: RunResult) -> list[RunResult]:
    """The runs behind a result: its seeds' runs, or the run itself."""
    return result.spread.members if result.spread is not None else [result]


def _codes(results: list[RunResult]) -> dict[str, list[str]]:
    """{code: run names} of `results`; runs without a record count as their own code only where
    another run has one (hand-made folders without any stay silent, as before)."""
    codes: dict[str, list[str]] = {}
    for result in results:
        codes.setdefault(result.code or _CODE_NOT_RECORDED, []).append(result.run.name)
    if set(codes) == {_CODE_NOT_RECORDED}:
        return {}
    return codes


def _task_infos(runs: list[RunPlan]) -> tuple[dict[str, tuple[str, str | None]], list[str]]:
    """{task: (family, main metric)} of the runs' tasks, and a warning for each task of the
    user's own whose runs name other main scores (their data.metrics differ): it is compared on
    the score most of its runs report (a tie: the first by name), whatever order the runs were
    read in, where the first run read decided before (the table changed with the order)."""
    info: dict[str, tuple[str, str | None]] = {}
    own: dict[str, dict[str | None, list[str]]] = {}
    for run in runs:
        if run.task in info:
            continue
        if run.task in own:
            own[run.task].setdefault(own_task_main_metric(run.run_dir), []).append(run.name)
            continue
        family, main = task_family(run.task, run.run_dir)
        if family == "other":
            own[run.task] = {main: [run.name]}
        else:
            info[run.task] = (family, main)
    warnings = []
    for task, by_metric in own.items():
        named = {metric: names for metric, names in by_metric.items() if metric}
        main = (min(named, key=lambda metric: (-len(named[metric]), metric)) if named
                else None)
        info[task] = ("other", main)
        if len(named) > 1:
            warnings.append(f"the runs of your own task {task} report other main scores (their "
                            "data.metrics differ): " + "; ".join(
                                f"{metric}: {', '.join(names)}"
                                for metric, names in sorted(named.items()))
                            + f"; compared on {main} (the score most of them report; on a "
                            "tie, the first by name); collect each definition's runs on their "
                            "own for theirs")
    return info, warnings


def build_table(manifest: Manifest, metrics: list[str] | None = None) -> ResultsTable:
    """Reads every run of the sweep, chooses one run per (model, task) (see choose_run), and
    lays the chosen runs out by family. `metrics` limits the columns shown, not the choice."""
    labels: dict[str, str] = {}
    groups: dict[tuple[str, str], list[RunResult]] = {}
    models: list[str] = []
    tasks: list[str] = []
    notes: list[str] = []
    unscored: list[str] = []
    run_results: list[RunResult | None] = []
    why_none: list[str] = []  # per run without a result: what a seed group's remark says
    info, own_task_warnings = _task_infos(manifest.runs)
    for run in manifest.runs:
        try:
            result = run_result(run, info[run.task][1])
        except DataError as exc:
            notes.append(f"{run.name} left out: {exc}")
            run_results.append(None)
            why_none.append("is left out (see Left out)")
            continue
        run_results.append(result)
        why_none.append("has no scores yet")
        if result is None:
            unscored.append(run.name)
    # The seeds of a grid point are read as one result, at the place of its first run.
    group_at = {indices[0]: (point, indices) for point, indices in seed_groups(manifest)}
    in_group = {index for _, indices in group_at.values() for index in indices}
    grid_seeds: dict[str, list[str]] = {}
    for index, run in enumerate(manifest.runs):
        if index in group_at:
            point, indices = group_at[index]
            members = [(manifest.runs[i], run_results[i], why_none[i]) for i in indices]
            result = seed_group_result(point, members)
            description = describe_grid_point(point.grid_point)
            grid_seeds[description] = [member.grid_point[SEED_AXIS] for member, _, _ in members]
        elif index in in_group:
            continue
        else:
            result, description = run_results[index], describe_grid_point(run.grid_point)
        labels.setdefault(description, f"g{len(labels) + 1}")
        if result is None:
            continue
        groups.setdefault((run.model, run.task), []).append(result)
        if run.model not in models:
            models.append(run.model)
        if run.task not in tasks:
            tasks.append(run.task)
    # The paper's order (the registry's tasks, the paper's models), whatever order the runs came
    # in: run folders come sorted by name, and a QA table read "mlqa, sqac". Others follow, as
    # they came (stable sort).
    from ..tasks import TASKS
    from .paper_grid import PAPER_MODELS

    tasks.sort(key=lambda task: list(TASKS).index(task) if task in TASKS else len(TASKS))
    models.sort(key=lambda model: PAPER_MODELS.index(model) if model in PAPER_MODELS
                else len(PAPER_MODELS))
    warnings = own_task_warnings + settings_warnings(manifest, groups)
    chosen: dict[tuple[str, str], Choice] = {}
    for key, results in groups.items():
        groups[key], warning = same_dev_data(*key, results)
        if warning:
            warnings.append(warning)
        chosen[key] = choose_run(groups[key], info[key[1]][1])
    # The models of one task column compare only on the same data, dev and test alike (the
    # test scores shown are those of runs that have them).
    for task in tasks:
        for split, verb, read in (("dev", "validated", lambda result: result.dev_data),
                                  ("test", "tested", lambda result: result.test_data)):
            on: dict[str | None, list[str]] = {}
            for (model, chosen_task), choice in chosen.items():
                if chosen_task == task and (split == "dev" or choice.result.test):
                    on.setdefault(read(choice.result), []).append(
                        f"{model} ({choice.result.run.name})")
            if len(on) > 1:
                warnings.append(f"the chosen {task} runs were {verb} on different data, so the "
                                f"models' {task} {split} scores do not compare: " + "; ".join(
                                    f"{', '.join(runs)} on {_dev_data_text(data)}"
                                    for data, runs in on.items()))
    for key, choice in chosen.items():
        if choice.result.spread is not None:
            choice.remarks += choice.result.spread.remarks
        # Means over fewer seeds are noisier: say so when the grid points compared differ.
        counts = {labels[describe_grid_point(result.run.grid_point)]:
                  result.spread.dev_n.get(choice.selected_by, 0) if result.spread else 1
                  for result in groups[key] if choice.selected_by in result.validation}
        if any(result.spread for result in groups[key]) and len(set(counts.values())) > 1:
            choice.remarks.append(f"the grid points' dev {choice.selected_by} means are over "
                                  "different numbers of seeds: "
                                  + ", ".join(f"{label} {n}" for label, n in counts.items()))
    # Runs of other code may score differently (a metric convention, a bug fixed): say so when
    # the table's cells come from more than one, and when one (model, task)'s runs did, since
    # its choice then compared dev scores that may not compare (only the chosen runs were
    # checked: a grid point of older code could win unnoticed). A run without versions.json
    # beside runs with one ran unknown code, which is named as such.
    for (model, task), results in groups.items():
        members = [member for result in results for member in _members(result)]
        pair_codes = _codes(members)
        if len(pair_codes) > 1 and len(members) > 1:
            warnings.append(f"{model} / {task}: its runs ran different code (versions.json), so "
                            "the dev scores its run was chosen by may not compare: "
                            + "; ".join(f"{code}: {', '.join(names)}"
                                        for code, names in sorted(pair_codes.items())))
    # A run that kept its last step (train.load_best_at_end false) is scored there, beside
    # runs scored at their best validation: nothing in the cell says so. (A run in which
    # nothing validated has no dev scores, so it is never chosen.)
    for (model, task), choice in chosen.items():
        last = [member.run.name for member in _members(choice.result) if member.kept_last]
        if last:
            warnings.append(f"{model} / {task}: the scores of {', '.join(last)} are of the last "
                            "step, not of the best validation's (train.load_best_at_end false; "
                            "final_results.json \"kept\": \"last\", CSV scored_at)")
    codes = _codes([member for choice in chosen.values() for member in _members(choice.result)])
    if len(codes) > 1:
        warnings.append("the chosen runs ran different code (versions.json), so their scores may "
                     "not compare: " + "; ".join(f"{code}: {', '.join(names)}"
                                                 for code, names in sorted(codes.items())))
    columns: dict[str, list[str]] = {}
    for task in tasks:
        names: list[str] = []
        for model in models:
            choice = chosen.get((model, task))
            if choice is not None:
                for split_values in (choice.result.validation, choice.result.test or {}):
                    names += [name for name in split_values if name not in names]
        shown = [name for name in names if is_task_metric(name)] or [
            name for name in names if name == "loss"]
        if metrics:
            shown = [name for name in names if name in metrics]
        columns[task] = sorted(shown, key=_column_rank)
    if metrics:
        logged = {name for (_, _), choice in chosen.items()
                  for split_values in (choice.result.validation, choice.result.test or {})
                  for name in split_values}
        unknown = [name for name in metrics if name not in logged]
        if unknown and chosen:
            raise ConfigError("--metrics", f"{', '.join(unknown)} logged by no chosen run; "
                              f"the runs logged: {', '.join(sorted(logged))}"
                              + _metric_hint(unknown, logged))
    order = list(FAMILY_TITLES)
    families = sorted({info[task][0] for task in tasks}, key=order.index)
    grouped = [(family, [task for task in tasks if info[task][0] == family]) for family in families]
    averages = {}
    for family, family_tasks in grouped:
        average = _average(family, family_tasks, models, chosen)
        if average is not None:
            averages[family] = average
    return ResultsTable(source=manifest.path, runs=len(manifest.runs), models=models,
                        families=grouped, columns=columns, chosen=chosen, averages=averages,
                        grid_labels=labels, notes=notes,
                        scored=sum(result is not None for result in run_results),
                        warnings=warnings, unscored=unscored,
                        from_run_folders=manifest.mode == RUN_FOLDERS_MODE,
                        grid_seeds=grid_seeds, seeds=[str(seed) for seed in manifest.seeds])


def _number(value: float | None) -> str:
    if value is None:
        return _MISSING
    # Two decimals, as the paper's tables; more only where two would show a nonzero score as 0.
    return f"{value:.2f}" if value == 0 or abs(value) >= 0.005 else f"{value:.2g}"


def _cell(dev: float | None, test: float | None, split: str) -> str:
    if split == "dev":
        return _number(dev)
    if split == "test":
        return _number(test)
    if dev is None and test is None:
        return _MISSING
    return f"{_number(dev)} / {_number(test)}"


def _mean_and_spread(mean: float | None, std: float | None) -> str:
    """'45.12 ± 0.31'; the mean alone where one seed had the value (no spread to show)."""
    if mean is None:
        return _MISSING
    return _number(mean) + ("" if std is None else f" ± {_number(std)}")


def _result_cell(result: RunResult, name: str, split: str) -> str:
    """A metric's cell: the run's values, or a seed group's means ± their spread."""
    dev, test = result.validation.get(name), (result.test or {}).get(name)
    spread = result.spread
    if spread is None:
        return _cell(dev, test, split)
    dev_text = _mean_and_spread(dev, spread.dev_std.get(name))
    test_text = _mean_and_spread(test, spread.test_std.get(name))
    if split == "dev":
        return dev_text
    if split == "test":
        return test_text
    if dev is None and test is None:
        return _MISSING
    return f"{dev_text} / {test_text}"


def _seed_order(seed: str) -> tuple[int, str]:
    """Seeds in numeric order (a hand-written config.yaml may hold anything)."""
    try:
        return int(seed), ""
    except ValueError:
        return SEED_MAX + 1, seed


def seeds_line(table: ResultsTable) -> str:
    """The line under a table whose cells are means over seeds: how many, which, and what the
    ± is."""
    sizes = sorted({len(choice.result.spread.seeds) for choice in table.chosen.values()
                    if choice.result.spread is not None})
    count = (f"{sizes[0]} seed{'s' if sizes[0] != 1 else ''}" if len(sizes) == 1
             else f"{sizes[0]} to {sizes[-1]} seeds")
    seeds = table.seeds or sorted({seed for choice in table.chosen.values()
                                   if choice.result.spread is not None
                                   for seed in choice.result.spread.seeds}, key=_seed_order)
    where = "; sweep --seeds" if table.seeds else ""
    return (f"Seeds: each cell of a grid point run with several seeds is the mean of {count} "
            f"({SEED_AXIS} {', '.join(seeds)}{where}) ± their sample standard deviation (n-1; "
            "no ± where only one seed has the value). A mean is over the seeds that have the "
            "value; grid points are chosen by their mean dev score.")


_CELLS = {"both": "dev / test", "dev": "dev (validation) only", "test": "test only"}


def empty_message(table: ResultsTable, split: str = "both") -> str:
    left_out = "".join(f"\n- {note}" for note in table.notes)
    left_out = f"\nLeft out:{left_out}" if left_out else ""
    if not table.chosen and table.notes:
        left = len(table.notes)
        others = ", and the others have no scores yet." if left < table.runs else "."
        return (f"No results to show: {left} of the {table.runs} run(s) "
                f"{'is' if left == 1 else 'are'} left out (below){others}" + left_out)
    if not table.chosen:
        return (f"No results yet: none of the {table.runs} run(s) has written final_results.json "
                "or evaluation records (eval/...) in metrics.jsonl that could be read."
                + left_out)
    return ("No test scores yet: runs write test/... (and final_results.json) when they finish; "
            "--split dev or both shows the validation scores." + left_out)


def shown_model(model: str) -> str:
    """A model as the results table names it: the paper's name for a registry model (BARTO
    for barto), the name itself otherwise."""
    from ..models.registry import MODELS

    spec = MODELS.get(model)
    return spec.paper_name if spec is not None else model


def format_markdown(table: ResultsTable, split: str = "both") -> str:
    """One table per experiment family: a row per model, per task the chosen run's label and its
    metrics (cells as `split` says), then the family's average and the paper's; legend below."""
    if table.is_empty(split):
        return empty_message(table, split) + "\n"
    others = ("" if table.scored == table.runs else
              " (the others have no scores yet, or are left out below)")
    seeded = table.seeded
    chosen_how = ("the grid point with the best mean dev (validation) score over its seeds on "
                  "the task's main metric; every number of that task in a row comes from that "
                  "grid point's runs" if seeded else
                  "the grid point with the best dev (validation) score on the task's main metric; "
                  "every number of that task in a row comes from that one run")
    lines = [f"Results of {table.scored} of the {table.runs} run(s) in {table.source}{others}. "
             f"Per model and task, {chosen_how}. Cells: {_CELLS[split]}."]
    any_partial = False
    for family, tasks in table.families:
        average = table.averages.get(family)
        header = ["model"]
        for task in tasks:
            header += [f"{task} run"] + [f"{task} {name}" for name in table.columns[task]]
        if average is not None:
            header.append(f"avg {average.label}")
        if average is not None and average.paper:
            header.append(f"paper avg {average.label}")
        lines += ["", f"### {FAMILY_TITLES[family]}: {', '.join(tasks)}", "",
                  "| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
        for model in table.models:
            if not any((model, task) in table.chosen for task in tasks):
                continue
            cells = [shown_model(model)]
            for task in tasks:
                choice = table.chosen.get((model, task))
                if choice is None:
                    cells += [_MISSING] * (1 + len(table.columns[task]))
                    continue
                result = choice.result
                any_partial = any_partial or not result.final
                cells.append(table.label(choice) + ("" if result.final else "*"))
                cells += [_result_cell(result, name, split) for name in table.columns[task]]
            if average is not None:
                mark = "" if average.final[model] or (average.dev[model] is None
                                                      and average.test[model] is None) else "*"
                cells.append(_cell(average.dev[model], average.test[model], split) + mark)
            if average is not None and average.paper:
                cells.append(_number(average.paper.get(model)))
            lines.append("| " + " | ".join(cells) + " |")
    if seeded:
        lines += ["", seeds_line(table)]
    reported = [line for family, tasks in table.families for task in tasks
                for model in table.models if (model, task) in table.chosen
                for line in [paper_figures_line(model, task)] if line]
    if reported:
        where = ("the paper avg note below" if any(average.paper for average in
                                                   table.averages.values()) else "docs/metrics.md")
        lines += ["", "The paper's figures for these pairs (dev / test; second-hand; its metrics "
                  f"were scored differently, see {where}):"]
        lines += [f"- {line}" for line in reported]
    shown_models = {model for model, _ in table.chosen}
    renamed = [f"{shown_model(model)} = {model}" for model in table.models
               if model in shown_models and shown_model(model) != model]
    if renamed:
        lines += ["", "Models by the paper's names; the registry's (--models, config.yaml "
                  "model.name, the CSV): " + ", ".join(renamed) + "."]
    lines += ["", "Grid points (the run columns):"]
    lines += [f"- {label}: {description}" + (
        f" (seeds {', '.join(table.grid_seeds[description])})"
        if description in table.grid_seeds else "")
        for description, label in table.grid_labels.items()]
    lines += ["", "Chosen by the best " + ("mean " if seeded else "") + "dev value of:"]
    for family, tasks in table.families:
        for task in tasks:
            by: dict[str, list[str]] = {}
            for model in table.models:
                choice = table.chosen.get((model, task))
                if choice is not None:
                    text = choice.selected_by + (f" ({choice.note}; the first metric logged "
                                                 "instead)" if choice.note else "")
                    by.setdefault(text, []).append(model)
            for text, models in by.items():
                who = "" if len(by) == 1 else f" ({', '.join(models)})"
                lines.append(f"- {task}{who}: {text}")
    if table.averages:
        lines += ["", "Averages, per model over the family's tasks in this table, each task's "
                  "value from the model's chosen run (dev and test averaged separately; '–' "
                  "unless the model has every value" + ("; a grid point run with several seeds "
                                                        "gives its mean" if seeded else "") + "):"]
        for family, average in table.averages.items():
            lines.append(f"- {FAMILY_TITLES[family]}: avg {average.label} = mean of "
                         f"{', '.join(average.metrics)} over {', '.join(average.tasks)}")
            if PAPER_AVERAGES.get(family) and not average.paper and average.comparable:
                # the same tasks and metrics: what is missing is a figure for these models
                lines.append(f"  (the paper gives this average for "
                             f"{', '.join(PAPER_AVERAGES[family])} only, none of this table's "
                             "models)")
            elif PAPER_AVERAGES.get(family) and not average.paper:
                paper_tasks = " + ".join(PAPER_AVERAGE_TASKS[family])
                lines.append(f"  (the paper's average is over {paper_tasks} with "
                             f"{', '.join(FAMILY_AVERAGES[family][1])}: not shown beside an "
                             "average over other tasks or metrics)")
        if any(average.paper for average in table.averages.values()):
            lines.append("- paper avg: the paper's figure for the whole family (Sequence-to-"
                         "Sequence Spanish Pre-trained Language Models; ROUGE averaged over "
                         "MLSUM + WikiLingua, "
                         "over SQAC + MLQA; SARI on BiSECT; F1 on MIAM); its split is not stated. "
                         "Not the same metric as ours: our ROUGE and SARI are Spanish-aware, the "
                         "paper's were scored with English tokenisation, our dialogue F1 "
                         "lowercases and clips where the paper's kept case and did not, and our "
                         "METEOR stems Spanish with no synonyms where the paper's (nltk's) used "
                         "the English Porter stemmer and WordNet (docs/metrics.md); to compare "
                         "like with like, rescore a run's eval/ or test/ step folder: `seq2seq-es score --mode paper --aggregate bootstrap "
                         "--split-sentences --predictions predictions.jsonl --references "
                         "predictions.jsonl --sources predictions.jsonl --metric rouge` (or sari; "
                         "QA as the paper, on the first answer only: `--references "
                         "references.txt`; F1: `--metric token_f1 --f1-convention "
                         "whitespace-membership`)")
    if any_partial:
        lines += ["", "* from a run that has not finished (no final_results.json or DONE): its "
                  "best evaluation so far in metrics.jsonl (its latest where "
                  "train.load_best_at_end is false); not final"
                  + ("; for seeds, a seed of the grid point has not finished or has no scores "
                     "(How runs were compared says which)" if seeded else "") + ". Now:"]
        lines += [f"  - {model} / {task} ({result.run.run_dir}): "
                  f"{unfinished_state(result.run.run_dir)}"
                  for (model, task), choice in table.chosen.items()
                  for result in _members(choice.result) if not result.final]
        # --train.output_dir too: a config.yaml keeps the folder as it was given, and a
        # relative one read from another directory started a new run there.
        lines.append("  A stopped run continues from its last checkpoint with " + (
            "`seq2seq-es train --config RUN/config.yaml --train.output_dir RUN --train.resume "
            "auto` (RUN: its folder above)"
            if table.from_run_folders else "`seq2seq-es slurm resume` (status: `seq2seq-es "
            "slurm status`)") + ".")
    remarks = [f"{model} / {task}: {remark}" for (model, task), choice in table.chosen.items()
               for remark in choice.remarks]
    if remarks:
        lines += ["", "How runs were compared:"] + [f"- {remark}" for remark in remarks]
    if table.warnings:
        lines += ["", "Warnings:"] + [f"- {warning}" for warning in table.warnings]
    if table.notes:
        lines += ["", "Left out:"] + [f"- {note}" for note in table.notes]
    local = [(model, task, choice.result.data) for (model, task), choice in table.chosen.items()
             if choice.result.data]
    if local:
        lines += ["", "Trained on local files or part of the data, not the task's whole hub "
                  "dataset (config.yaml data.train_file, data.max_train_samples; their scores "
                  "compare with the paper's only if they hold the same data):"]
        lines += [f"- {model} / {task}: {data}" for model, task, data in local]
    if table.unscored:
        why = ("not started, no validation yet, or stopped before one"
               if table.from_run_folders else
               "pending, running before its first validation, or failed: `seq2seq-es slurm "
               f"status {Path(table.source).parent}` says which")
        lines += ["", f"No scores yet ({why}): " + ", ".join(table.unscored)]
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ("model", "family", "task", "metric", "dev", "test", "paper", "paper_dev",
               "paper_test", "grid_label",
               "grid_point", "best_step", "final", "selected_by", "source", "run_dir",
               "local_data", "validation_data", "test_data", "scored_at")
# Added where a chosen cell is a mean over seeds: the sample standard deviations (n-1), how many
# seeds each mean is over, and the grid point's seeds ('1;2;3'). dev and test hold the means,
# best_step and run_dir each seed's, joined by ';' in the seeds' order ('' for a seed without
# scores: '20;;30').
SEED_CSV_COLUMNS = ("dev_std", "test_std", "dev_n", "test_n", "seeds")


def format_csv(table: ResultsTable, metrics: list[str] | None = None) -> str:
    """One row per (model, task, metric) of every chosen run: all its metrics ('loss' too), dev and
    test in their own columns; then one row per (model, family average), whose task is
    'avg:' and the averaged tasks joined by '+' ('avg:mlsum+wikilingua'), whose metric is the
    averaged metrics ('avg(rouge1,rouge2,rougeL)') and whose paper column holds the paper's
    figure. A (model, task, metric) the paper reports (PAPER_FIGURES, second-hand) has it in
    paper_dev and paper_test, or in paper where the split is not stated. A table with means over
    seeds has SEED_CSV_COLUMNS after those."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    seeded = table.seeded
    writer.writerow(CSV_COLUMNS + (SEED_CSV_COLUMNS if seeded else ()))

    def text(value: float | None) -> str:
        return "" if value is None else repr(value)

    def seed_cells(result: RunResult | None, name: str) -> list[str]:
        if not seeded:
            return []
        spread = result.spread if result is not None else None
        if spread is None:
            return [""] * len(SEED_CSV_COLUMNS)
        return [text(spread.dev_std.get(name)), text(spread.test_std.get(name)),
                str(spread.dev_n.get(name, 0)), str(spread.test_n.get(name, 0)),
                ";".join(spread.seeds)]

    def per_seed(result: RunResult, value_of) -> str | None:
        """A seed group's values, one slot per seed in the `seeds` column's order ('' for a
        seed without scores), so that the columns line up: seeds '1;2;3' beside best_step
        '20;30' gave seed 1 the step of seed 2 (mutation audit). None for one run."""
        spread = result.spread
        if spread is None:
            return None
        by_seed = dict(zip(spread.scored, spread.members))
        return ";".join(value_of(by_seed[seed]) if seed in by_seed else ""
                        for seed in spread.seeds)

    def best_step(result: RunResult) -> str:
        def step(run: RunResult) -> str:
            return "" if run.best_step is None else str(run.best_step)

        joined = per_seed(result, step)
        return step(result) if joined is None else joined

    def run_dir(result: RunResult) -> str:
        joined = per_seed(result, lambda member: member.run.run_dir)
        return result.run.run_dir if joined is None else joined

    def scored_at(result: RunResult) -> str:
        def kept(run: RunResult) -> str:
            return "last" if run.kept_last else "best"

        joined = per_seed(result, kept)
        return kept(result) if joined is None else joined

    for family, tasks in table.families:
        for model in table.models:
            for task in tasks:
                choice = table.chosen.get((model, task))
                if choice is None:
                    continue
                result = choice.result
                names = list(result.validation) + [name for name in result.test or {}
                                                   if name not in result.validation]
                for name in names:
                    if metrics and name not in metrics:
                        continue
                    writer.writerow([model, family, task, name, text(result.validation.get(name)),
                                     text((result.test or {}).get(name)),
                                     *paper_cells(model, task, name), table.label(choice),
                                     describe_grid_point(result.run.grid_point),
                                     best_step(result),
                                     "yes" if result.final else "no", choice.selected_by,
                                     result.source, run_dir(result), result.data or "",
                                     result.dev_data or "",
                                     (result.test_data or "") if result.test else "",
                                     scored_at(result)]
                                    + seed_cells(result, name))
        average = table.averages.get(family)
        if average is None:
            continue
        for model in table.models:
            if not any((model, task) in table.chosen for task in average.tasks):
                continue
            writer.writerow([model, family, "avg:" + "+".join(average.tasks),
                             f"avg({','.join(average.metrics)})", text(average.dev[model]),
                             text(average.test[model]), text(average.paper.get(model)), "", "",
                             "", "", "", "yes" if average.final[model] else "no", "", "", "", "",
                             "", "", ""]
                            + seed_cells(None, ""))
    return buffer.getvalue()


def _plot_metric(table: ResultsTable, task: str) -> str | None:
    """The metric a task's bars show: the one that chose its runs (the main metric if it did)."""
    chosen = [table.chosen[(model, task)] for model in table.models
              if (model, task) in table.chosen]
    by = [choice.selected_by for choice in chosen]
    main = chosen[0].main_metric if chosen else None
    return main if main in by else (by[0] if by else None)


def plot_results(table: ResultsTable, png_path: str | Path, split: str = "both") -> Path:
    """results.png: per task, a bar per model for its chosen run's main metric (the metric that
    chose the run); test where the run has it (hatched bars: dev, no test score yet), dev only
    with split 'dev', test only with split 'test'."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tasks = [task for _, family_tasks in table.families for task in family_tasks]
    models = table.models
    width = 0.8 / max(len(models), 1)
    figure = Figure(figsize=(max(6.0, 1.0 + len(tasks) * (0.5 + 0.3 * len(models))), 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    metrics = {task: _plot_metric(table, task) for task in tasks}
    any_dev = False
    for i, model in enumerate(models):
        xs, heights, hatches, spreads = [], [], [], []
        for x, task in enumerate(tasks):
            choice, metric = table.chosen.get((model, task)), metrics[task]
            if choice is None or metric is None:
                continue
            dev = choice.result.validation.get(metric)
            test = (choice.result.test or {}).get(metric)
            value, is_dev = ((dev, True) if split == "dev" else (test, False) if split == "test"
                             else (test, False) if test is not None else (dev, True))
            if value is None:
                continue
            spread = choice.result.spread
            std = None if spread is None else (spread.dev_std if is_dev
                                               else spread.test_std).get(metric)
            xs.append(x - 0.4 + width * (i + 0.5))
            heights.append(value)
            spreads.append(std or 0.0)
            hatches.append("//" if is_dev and split == "both" else "")
            any_dev = any_dev or (is_dev and split == "both")
        if not xs:
            axes.bar([], [], width, label=model)
            continue
        # A mean over seeds gets its sample standard deviation as an error bar.
        bars = axes.bar(xs, heights, width, label=model,
                        **({"yerr": spreads, "capsize": 2} if any(spreads) else {}))
        for bar, hatch in zip(bars, hatches):
            bar.set_hatch(hatch)
        axes.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    axes.set_xticks(range(len(tasks)))
    axes.set_xticklabels([f"{task}\n{metrics[task] or ''}" for task in tasks], fontsize=8)
    hatched = "\n(hatched: dev, the run has no test score yet)" if any_dev else ""
    shown = {"both": "test" + hatched, "dev": "dev (validation)", "test": "test"}[split]
    axes.set_ylabel("score: mean of seeds ± sample std (n-1)" if table.seeded else "score")
    what = f"Chosen {'grid point' if table.seeded else 'run'} per model and task"
    axes.set_title(f"{what}: main metric on {shown}", fontsize=10)
    axes.grid(axis="y", alpha=0.3)
    axes.set_axisbelow(True)
    axes.margins(y=0.12)
    if models:
        axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    path = Path(png_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def _temporary(path: Path) -> Path:
    # this process's own: two collects into one folder removed each other's (an audit)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_results(table: ResultsTable, markdown_path: str | Path, csv_path: str | Path,
                  png_path: str | Path, split: str = "both",
                  metrics: list[str] | None = None) -> str:
    """Writes results.md/.csv/.png as one set and returns the markdown: all three are written to
    temporary files first and renamed only when every one was written, so a failure (a folder
    that cannot be created, a full disk) leaves the earlier three as they were. Refuses an empty
    table (ValueError): the files of an earlier collect stay as they were."""
    if table.is_empty(split):
        raise ValueError(empty_message(table, split))
    markdown = format_markdown(table, split)
    paths = [Path(markdown_path), Path(csv_path), Path(png_path)]
    temporary = [_temporary(path) for path in paths]
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
        temporary[0].write_text(markdown, encoding="utf-8")
        temporary[1].write_text(format_csv(table, metrics), encoding="utf-8")
        plot_results(table, temporary[2], split)
    except BaseException:
        for tmp in temporary:
            tmp.unlink(missing_ok=True)
        raise
    try:
        for tmp, path in zip(temporary, paths):
            tmp.replace(path)
    finally:  # a rename that failed leaves no temporary file behind
        for tmp in temporary:
            tmp.unlink(missing_ok=True)
    return markdown
