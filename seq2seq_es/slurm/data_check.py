"""Local data files read before sbatch, as the runs will read them.

A wrong column, a bad file or a training split smaller than one step used to stop every job of a
sweep only once it had waited its turn in the queue and loaded its model. Each distinct local data
set of the planned runs is read once here, through the training's own loader (`load_split`: the
row checks, the column names, compressed files), and a run whose step takes more examples than
the training file holds is refused. So is a run whose data.max_target_length cuts most training
targets (config.check_target_coverage, the job's refusal after loading its model) where this
machine has the run's tokenizer without a download: a model folder, a tiny twin, the hub cache.
Hub data and tokenizers not cached are left to the jobs (the login node may not reach the hub,
and a hub download belongs on the cluster's storage); `--no-data-check` skips the whole check,
for files too large to read twice.
"""

from __future__ import annotations

import argparse
import os
from typing import Callable, Iterable

from ..config import RunConfig, check_target_coverage
from ..errors import ConfigError

NO_DATA_CHECK_FLAG = "--no-data-check"


def add_data_check_option(parser: argparse.ArgumentParser) -> None:
    """The flag that skips check_local_data (submit, sweep, resume, bench)."""
    parser.add_argument(NO_DATA_CHECK_FLAG, action="store_true",
                        help="do not read the local data files before submitting (each distinct "
                             "set is read once, as the runs will read it, so that a bad file or "
                             "column is refused here rather than in every job)")
SPLITS = ("train", "validation", "test")


def _local_files(cfg: RunConfig) -> tuple[tuple[str, str], ...]:
    return tuple((split, path) for split, path in zip(
        SPLITS, (cfg.data.train_file, cfg.data.validation_file, cfg.data.test_file)) if path)


def _data_set(cfg: RunConfig) -> tuple:
    """What decides how a run's local files are read: runs equal here read the same examples."""
    data = cfg.data
    return (data.task, data.source_column, data.target_column, data.columns, data.skip_bad_rows,
            _local_files(cfg))


def check_local_data(configs: Iterable[tuple[str, RunConfig]], world_size: int,
                     log: Callable[[str], None] = print) -> None:
    """Read every distinct local data set of (run name, config) once; refuse a run whose
    fixed-size step is larger than its training file. A DataError of the loader goes up as it
    is (it names the file, row and column)."""
    import datasets  # here, not at import: the other slurm commands do not need it

    # One line per file read, not datasets' progress bars for each of its passes.
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        read_by_set: dict[tuple, tuple[dict[str, int], object]] = {}
        lengths_by_set: dict[tuple, list[int] | None] = {}
        for name, cfg in configs:
            if not _local_files(cfg):
                continue
            key = _data_set(cfg)
            if key not in read_by_set:
                read_by_set[key] = _read(cfg, log)
            rows, train = read_by_set[key]
            train_rows = rows.get("train")
            if train_rows is not None and cfg.train.batching == "fixed":
                _check_one_step(name, cfg, train_rows, world_size)
            if train is None:
                continue
            tokenized_by = (key, cfg.model.name, cfg.model.path, cfg.data.max_train_samples)
            if tokenized_by not in lengths_by_set:
                lengths_by_set[tokenized_by] = _target_lengths(cfg, train, log)
            if lengths_by_set[tokenized_by] is not None:
                try:
                    check_target_coverage(cfg, lengths_by_set[tokenized_by])
                except ConfigError as refused:
                    raise ConfigError(refused.key, f"run {name}: {refused.reason} (its job "
                                      "would refuse it once its model is loaded)") from None
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()


def _read(cfg: RunConfig, log: Callable[[str], None]) -> tuple[dict[str, int], object]:
    """Examples per split of a run's local files, read by the training's loader, and the
    training split's examples (None without a local training file)."""
    from ..engine.builders import load_split
    from ..tasks import task_for

    task = task_for(cfg.data)
    rows, train = {}, None
    for split, _ in _local_files(cfg):
        examples, report = load_split(cfg, task, split, None,
                                      lambda line: log(f"data check: {line}"))
        rows[split] = report.examples
        if split == "train":
            train = examples
    return rows, train


def _tokenizer_here(cfg: RunConfig, log: Callable[[str], None]):
    """The run's tokenizer where this machine has it without downloading (a model folder, a
    tiny twin built here as the job builds it, the hub cache); None, said once, otherwise."""
    from transformers import AutoTokenizer

    from ..models import get_model_spec
    from ..models.tiny import ensure_tiny_checkpoint, quiet_transformers

    spec = get_model_spec(cfg.model.name)
    if cfg.model.path:
        source = os.path.expanduser(cfg.model.path)
    elif spec.tiny:
        source = str(ensure_tiny_checkpoint(spec))
    else:
        source = spec.hub_id
    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):
        log(f"data check: the tokenizer of {source} is not on this machine: the jobs check "
            "data.max_target_length against the training targets")
        return None


def _target_lengths(cfg: RunConfig, train, log: Callable[[str], None]) -> list[int] | None:
    """The training targets' token lengths as the job counts them (data.tokenize.label_ids),
    of the examples it trains on (data.max_train_samples: the first N); None without the
    tokenizer here."""
    from ..data.tokenize import label_ids, leading_label_to_drop
    from ..models import get_model_spec

    tokenizer = _tokenizer_here(cfg, log)
    if tokenizer is None:
        return None
    decoder_start = get_model_spec(cfg.model.name).adapter.special_tokens(tokenizer).decoder_start
    drop = leading_label_to_drop(tokenizer, decoder_start)
    if cfg.data.max_train_samples is not None and cfg.data.max_train_samples < train.num_rows:
        train = train.select(range(cfg.data.max_train_samples))
    lengths: list[int] = []
    for batch in train.select_columns(["target"]).iter(batch_size=1024):
        lengths += [len(ids) for ids in label_ids(tokenizer, batch["target"], drop)]
    return lengths


def _check_one_step(name: str, cfg: RunConfig, train_rows: int, world_size: int) -> None:
    """The engine's own refusal (builders.get_step_plan), before the job: the rows read are at
    least the examples tokenized, so a step larger than them never fits."""
    per_step = cfg.train.batch_size * cfg.train.grad_accum * world_size
    if per_step > train_rows:
        raise ConfigError("train.batch_size", (
            f"run {name}: one step takes {per_step} examples (batch_size {cfg.train.batch_size} "
            f"x grad_accum {cfg.train.grad_accum} x {world_size} ranks) but the training file "
            f"{cfg.data.train_file} has {train_rows}"))
