"""Local data files read before sbatch, as the runs will read them.

A wrong column, a bad file or a training split smaller than one step used to stop every job of a
sweep only once it had waited its turn in the queue and loaded its model. Each distinct local data
set of the planned runs is read once here, through the training's own loader (`load_split`: the
row checks, the column names, compressed files), and a run whose step takes more examples than
the training file holds is refused. Hub data is left to the jobs (the login node may not reach
the hub, and a hub download belongs on the cluster's storage); `--no-data-check` skips the whole
check, for files too large to read twice.
"""

from __future__ import annotations

from typing import Callable, Iterable

from ..config import RunConfig
from ..errors import ConfigError

NO_DATA_CHECK_FLAG = "--no-data-check"
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
        rows_by_set: dict[tuple, dict[str, int]] = {}
        for name, cfg in configs:
            if not _local_files(cfg):
                continue
            key = _data_set(cfg)
            if key not in rows_by_set:
                rows_by_set[key] = _read(cfg, log)
            train_rows = rows_by_set[key].get("train")
            if train_rows is not None and cfg.train.batching == "fixed":
                _check_one_step(name, cfg, train_rows, world_size)
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()


def _read(cfg: RunConfig, log: Callable[[str], None]) -> dict[str, int]:
    """Examples per split of a run's local files, read by the training's loader."""
    from ..engine.builders import load_split
    from ..tasks import task_for

    task = task_for(cfg.data)
    return {split: load_split(cfg, task, split, None, lambda line: log(f"data check: {line}"))[1]
            .examples for split, _ in _local_files(cfg)}


def _check_one_step(name: str, cfg: RunConfig, train_rows: int, world_size: int) -> None:
    """The engine's own refusal (builders.get_step_plan), before the job: the rows read are at
    least the examples tokenized, so a step larger than them never fits."""
    per_step = cfg.train.batch_size * cfg.train.grad_accum * world_size
    if per_step > train_rows:
        raise ConfigError("train.batch_size", (
            f"run {name}: one step takes {per_step} examples (batch_size {cfg.train.batch_size} "
            f"x grad_accum {cfg.train.grad_accum} x {world_size} ranks) but the training file "
            f"{cfg.data.train_file} has {train_rows}"))
