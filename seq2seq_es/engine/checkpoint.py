"""Atomic, resumable checkpoints behind one interface.

A checkpoint is a folder `checkpoints/step_<N>` holding DeepSpeed's files (weights, optimizer
and scheduler, partitioned as the ZeRO stage dictates), `trainer_state.json` (step, epoch,
position inside the epoch) and one RNG file per rank. It is written under a temporary name
(`.tmp-step_<N>`) and renamed into place by rank 0 after every rank has finished writing, so a
folder named `step_<N>` is always complete: a run killed while saving resumes from the previous
one, and the half-written temporary folder is removed at the next save. Deleting works the other
way round: a folder is first renamed out of the `step_<N>` names (`.removing-step_<N>`), then
deleted, so a delete cut short leaves no partial `step_<N>` behind.

Rotation keeps the `keep_last` newest checkpoints plus the best one: the trainer passes the best
(step, metric, value) inside the trainer state, so the checkpoint that `final/` and the test
scores come from is never deleted, also not after a resume (the state is saved with every
checkpoint).

The interface (every method that touches the engine is collective: all ranks call it together):
- `resume_point(resume)`: the checkpoint folder that train.resume (none | auto | must | PATH)
  points to, or None for a fresh start;
- `save(engine, state)`: write step `state.step` atomically, rotate, and note the best in
  `best.json`; returns the folder;
- `check_resumable(path, run, storage)`: the checkpoint's TrainState, or a refusal when it is of
  another run or its files are laid out for another ZeRO stage or precision (no model needed);
- `check_layout(path, data_layout)`: a refusal when the data layout (`data_layout(...)`: the
  examples of each step) differs; asked before the engine is built;
- `load(engine, path)`: weights, optimizer, scheduler and this rank's RNG; returns the
  TrainState; the two checks above come first (the caller asks them). On another number of
  ranks, a ZeRO checkpoint is first rewritten by DeepSpeed's universal-checkpoint converter
  (`repartitioned`) and its optimizer states split anew (with two repairs of DeepSpeed's
  stage-3 load: `_restore_group_settings`);
- `load_weights(engine, path)`: only the weights (the way back to the best at the end);
- `latest()`, `path(step)`, `has(step)`: where the complete checkpoints are.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import pickle
import random
import shutil
import textwrap
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from .. import run_files
from ..config import FIXED_STEP, TOKEN_PLAN_STEP, RunConfig, compose
from ..errors import ConfigError, Seq2SeqEsError
from . import distributed as D
from . import storage
from .run_dir import write_json_atomic

SAVE_DELAY_ENV = "SEQ2SEQ_ES_SAVE_DELAY_S"
# A checkpoint's subfolder, while a resume on another number of ranks reads it (`repartitioned`).
UNIVERSAL = "universal"
# The sections of a run's config.yaml (model, data, optim, train, dist, gen).
_RUN_SECTIONS = frozenset(field.name for field in fields(RunConfig))
# The name prefix of a checkpoint folder being deleted (`Checkpointer._remove`).
_REMOVING = ".removing-"


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@dataclass
class TrainState:
    """Where training stands: `trainer_state.json` in every checkpoint, read back on resume."""
    step: int = 0              # optimizer steps done
    epoch: int = 0             # the epoch of the last step done
    step_in_epoch: int = 0     # steps done in that epoch (the next step's position in it)
    world_size: int = 1        # ranks that wrote it (one optimizer partition and RNG file each)
    # What gives step_in_epoch its meaning (see `data_layout`): a resume needs the same, or the
    # position would point at other examples and the schedule at another length. None: a state
    # written before the field existed (not checked).
    data_layout: dict | None = None
    # The best validation so far: {"step", "metric", "value", "validation": {name: value}}.
    # Saved in every checkpoint, so rotation keeps that step and a resumed run remembers it.
    best: dict | None = None
    # Validations in a row since the last new best (train.early_stopping_patience counts them).
    evals_without_best: int = 0
    # The logged values' sums since the last log over all ranks (TrainStep.loss_window_sums):
    # [cross-entropy, skipped target tokens, target tokens, gradient norm sum, steps in it,
    # gradient norm maximum, tokens, padded tokens]. None: written before the field; three
    # numbers: before the norm; six: before the token counts.
    loss_window: list | None = None
    # What was trained (`run_identity`: data.task and model.name, and a task of the user's own
    # its columns, hub data and metrics): a resume must be the same run. None: a state written
    # before the field existed (its run folder's files say it: `recorded_by_run_folder`).
    run: dict | None = None
    # How DeepSpeed laid its files out (`storage_layout`): a resume needs a compatible one.
    # None: a state written before the field existed (as `run`).
    storage: dict | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str, world_size: int) -> "TrainState":
        """`world_size` stands in for a state written before the field existed."""
        values = json.loads(text)
        values.setdefault("world_size", world_size)
        if values.get("data_layout"):
            values["data_layout"] = _per_step_layout(values["data_layout"], values["world_size"])
        return cls(**values)

    @classmethod
    def read(cls, path: Path, world_size: int) -> "TrainState":
        """Checkpoint `path`'s state; a damaged file is an error naming it."""
        state_file = path / run_files.TRAINER_STATE
        try:
            return cls.from_json(state_file.read_text(), world_size)
        except (ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
            raise Seq2SeqEsError(f"checkpoint {path} is damaged: {state_file.name} cannot be read "
                                 f"({exc})") from exc


def run_identity(cfg) -> dict:
    """What a checkpoint must have trained for a run to resume from it: the task and model, and
    for a task of the user's own its definition (the columns read and written, its data on the
    hub, the metrics that validate it): the same name over other columns or metrics is another
    task. Registry tasks keep the two keys, so their older checkpoints compare as before."""
    from ..config import own_task_keys
    from ..tasks.registry import metric_list

    identity = {"data.task": cfg.data.task, "model.name": cfg.model.name}
    own = own_task_keys(cfg)
    if own:
        own["data.metrics"] = ",".join(metric_list(cfg.data.metrics)) or "rouge"
    return {**identity, **own}


def storage_layout(cfg) -> dict:
    """The settings that decide which files a DeepSpeed checkpoint holds: the ZeRO stage, the
    precision and the dtype gradients accumulate in (which optimizer wrapper DeepSpeed builds)."""
    from .optim import grad_accum_dtype, resolve_precision

    return {"dist.zero_stage": cfg.dist.zero_stage, "train.precision": resolve_precision(cfg),
            "dist.grad_accum_dtype": grad_accum_dtype(cfg)}


def _storage_kind(layout: dict) -> tuple:
    """What must match for DeepSpeed to read a checkpoint back: ZeRO 1 and 2 share their files
    (one optimizer partition per rank; bf16 at stage 1 builds DeepSpeed's BF16_Optimizer, whose
    checkpoints stage 2 reads, and back: resumed exactly both ways, 1 and 2 ranks, DeepSpeed
    0.19.8), stage 0 holds the whole module and our optimizer (fp32 weights under bf16
    autocast, so fp32 and bf16 share it; fp16 adds a loss scaler), stage 3 its own partitions;
    under ZeRO the precision names the files (bf16_zero_pp_rank_*). Anything else (seen in a
    walkthrough: 0 -> 2 'may be damaged', fp32 -> bf16 at stage 2 the same, 2 -> 3 an
    AssertionError, 2 -> 0 an AttributeError) does not load."""
    stage, precision = layout.get("dist.zero_stage"), layout.get("train.precision")
    if stage == 0:
        return (0, precision == "fp16")
    return ("1-2" if stage in (1, 2) else stage, precision)


def _changed_keys(saved: dict, current: dict) -> list[str]:
    """'key old -> new' for each key whose value differs, by key: what a resume refusal names."""
    return [f"{key} {saved.get(key)} -> {current.get(key)}"
            for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]


def check_same_storage(path: Path, saved: dict | None, current: dict | None) -> None:
    if saved is None or current is None or _storage_kind(saved) == _storage_kind(current):
        return
    # A key the checkpoint's run did not record (an older deepspeed_config.json without its
    # data_types) is no change to set back.
    changed = _changed_keys(saved, {key: value for key, value in current.items() if key in saved})
    # Why, for what changed: the ZeRO stage's own words read oddly under a precision change.
    why = ("DeepSpeed lays its files out otherwise there (ZeRO 1 and 2 share theirs)"
           if saved.get("dist.zero_stage") != current.get("dist.zero_stage") else
           "DeepSpeed names and fills its files by precision under ZeRO, and stage 0 keeps "
           "fp16's loss scaler")
    raise ConfigError("train.resume", f"checkpoint {path} was saved with {'; '.join(changed)}: "
                      f"{why}, so it cannot be loaded{_set_by_accelerate(saved, current)}. "
                      "Set them back "
                      f"to resume, or carry its weights into a new run: `seq2seq-es export {path} "
                      "OUT`, then train with --model.path OUT in another train.output_dir "
                      "(optimizer and schedule start afresh)")


def _set_by_accelerate(saved: dict, current: dict) -> str:
    """'; dist.zero_stage 3 is also what accelerate's config file sets (...)' for each changed value
    this run took from `accelerate launch`'s config file: a user who looked for it in the run's
    YAML and command line found it in neither (a zero3.yaml launch of a stage-2 run)."""
    try:
        from_accelerate = D.launcher_overrides()
    except ConfigError:  # refused at start-up already; nothing to add here
        return ""
    keys = [key for key in sorted(current) if saved.get(key) != current[key]
            and from_accelerate.get(key) == str(current[key])]
    if not keys:
        return ""
    return ("; " + ", ".join(f"{key} {current[key]}" for key in keys) + " is also what "
            "accelerate's config file sets (launch with the one the checkpoint was trained "
            "under, or give the key on the command line, which wins over that file)")


# The data-layout keys that count a whole step over all ranks. A step's examples depend on these
# products only (data.sampler, data.token_budget), so a resume on another number of ranks keeps
# them by changing grad_accum (or batch_size): the refusal names the product and what to set.
EXAMPLES_PER_STEP = FIXED_STEP.step_key
MICRO_BATCHES_PER_STEP = TOKEN_PLAN_STEP.step_key
# The per-rank keys that layouts saved before held (multiplied by the checkpoint's ranks on read).
_PER_RANK_KEYS = {unit.per_rank: unit.step_key for unit in (FIXED_STEP, TOKEN_PLAN_STEP)}


def _per_step_layout(layout: dict, ranks: int) -> dict:
    out = {}
    for key, value in layout.items():
        if key in _PER_RANK_KEYS and _PER_RANK_KEYS[key] not in layout:
            key, value = _PER_RANK_KEYS[key], value * ranks
        out[key] = value
    return out


def data_layout(cfg, plan, train_examples: int) -> dict:
    """The settings that decide which examples make up step k of an epoch, and how many steps an
    epoch has (so the position saved in a checkpoint, and the LR schedule, mean the same thing
    after a resume). Keys are config keys where they are one, so a refusal names what to set."""
    t, d = cfg.train, cfg.data
    layout = {"train.seed": t.seed, "train.batching": t.batching,
              "training examples": train_examples, "steps per epoch": plan.steps_per_epoch}
    if t.batching == "fixed":
        # A fixed step takes the next batch_size * grad_accum * ranks examples of the epoch's
        # order however it is split, and lengths only cut them, so the out-of-memory advice
        # (lower batch_size and raise grad_accum, or cut the sources shorter) still resumes, and
        # so does a resume on fewer ranks with more accumulation.
        layout[EXAMPLES_PER_STEP] = t.batch_size * t.grad_accum * plan.world_size
    else:  # the other plans pack micro-batches by token counts, which the lengths change
        layout.update({MICRO_BATCHES_PER_STEP: t.grad_accum * plan.world_size,
                       "data.max_source_length": d.max_source_length,
                       "data.max_target_length": d.max_target_length})
    if t.batching == "packed":
        layout["train.batch_size"] = t.batch_size
    if t.batching in ("token_budget", "bucketed"):
        layout["train.max_tokens"] = t.max_tokens
    if t.batching == "bucketed":
        layout["train.length_buckets"] = t.length_buckets
    return layout


def check_same_layout(path: Path, saved: dict | None, current: dict | None,
                      ranks: tuple[int, int] = (1, 1), reading_changed: list[str] = ()) -> None:
    """`ranks`: the checkpoint's and this run's, for the advice when only they changed;
    `reading_changed`: 'name old -> new' of the code that reads the data, where it changed
    since the checkpoint's run started (`data_reading_changes`)."""
    if saved is None or current is None or saved == current:
        return
    changed = _changed_keys(saved, current)
    # Only what the data gives changed (no setting): with other versions of the code that reads
    # it, that code is the likelier cause, and there is nothing to set back.
    read_otherwise = bool(reading_changed) and all(
        saved.get(key) == current.get(key) for key in {**saved, **current}
        if key not in _READ_FROM_THE_DATA)
    if read_otherwise:
        advice = (f"The code that reads the data changed since its run started "
                  f"({'; '.join(reading_changed)}; {run_files.VERSIONS}): if the data files are "
                  "the same, these versions read them into other examples. Resume with the "
                  f"versions in its {run_files.VERSIONS}")
    else:
        advice = f"{_ranks_advice(saved, current, ranks)}Set these back to resume"
    raise ConfigError("train.resume", f"checkpoint {path} was trained with another data layout "
                      f"({'; '.join(changed)}): its position in the epoch would point at other "
                      "examples (some never trained, some twice) and the schedule at another "
                      f"length. {advice}, or carry its weights into a new run: `seq2seq-es "
                      f"export {path} OUT`, then train with --model.path OUT in another "
                      "train.output_dir (optimizer and schedule start afresh)")


# The layout's keys that the training data gives rather than a setting.
_READ_FROM_THE_DATA = ("training examples", "steps per epoch")


# What reads and tokenizes a run's data: another version of one may read the same files into
# other examples (an upgrade of this package kept SQAC rows it had left out).
_DATA_READERS = ("seq2seq-es commit", "seq2seq-es", "datasets", "tokenizers", "transformers")


def data_reading_changes(path: Path) -> list[str]:
    """'name old -> new' for each of `_DATA_READERS` whose version differs between checkpoint
    `path`'s run folder's versions.json (its last start's, not yet rewritten by this one) and
    this process; [] where it cannot be read."""
    from .run_dir import library_versions

    run_dir = run_files.checkpoint_run_dir(path)
    if run_dir is None:
        return []
    try:
        earlier = json.loads((run_dir / run_files.VERSIONS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(earlier, dict):
        return []
    now = library_versions()
    return [f"{name} {earlier[name]} -> {now.get(name, '-')}" for name in _DATA_READERS
            if name in earlier and earlier[name] != now.get(name)]


def _ranks_advice(saved: dict, current: dict, ranks: tuple[int, int]) -> str:
    """What keeps a step's size on another number of ranks (said when the ranks changed)."""
    saved_ranks, now = ranks
    unit = FIXED_STEP if FIXED_STEP.step_key in saved else TOKEN_PLAN_STEP
    key, per_rank, what = unit.step_key, unit.per_rank, unit.counts
    if saved_ranks == now or saved.get(key) == current.get(key) or key not in saved:
        return ""
    saved_on = f"{saved_ranks} rank{'s' if saved_ranks != 1 else ''}"
    if saved[key] % now:
        return (f"The checkpoint's {saved[key]} {what} per step ({saved_on}) do not "
                f"split evenly over {now} ranks. ")
    return (f"On {now} rank(s), {per_rank} = {saved[key] // now} keeps the checkpoint's "
            f"{saved[key]} {what} per step ({saved_on}). ")


def check_fresh_folder(out: Path, cfg) -> None:
    """A run that starts from no checkpoint in `out`: refused where it would overwrite a
    finished run's model and results (its checkpoints deleted to save space, say), or append to
    another task's or model's metrics. A run of the same task and model that stopped before
    its first checkpoint starts again there."""
    finished = [name for name in (run_files.DONE, run_files.FINAL_RESULTS, run_files.FINAL)
                if (out / name).exists()]
    if finished:
        raise ConfigError("train.output_dir", f"{out} holds a finished run ({', '.join(finished)}) "
                          "and no checkpoint to resume from; a new run would overwrite it: "
                          "choose another train.output_dir, or remove that one")
    saved = _folder_run(out)
    current = run_identity(cfg)
    if saved is not None and any(saved.get(key) not in (None, value)
                                 for key, value in current.items()):
        said = ", ".join(f"{key} {value}" for key, value in saved.items())
        raise ConfigError("train.output_dir", f"{out} holds another run ({said} in its "
                          f"{run_files.CONFIG}); choose another train.output_dir")


def _folder_run(run_dir: Path) -> dict | None:
    """The task and model a run folder's config.yaml names (None: no config.yaml yet). A
    config.yaml that is no run's (unreadable, or other sections: a user's own file) is refused:
    the run would replace it with its own."""
    try:
        config = run_files.read_run_config(run_dir)
        if config is not None and not set(config) <= _RUN_SECTIONS:
            others = sorted(str(key) for key in set(config) - _RUN_SECTIONS)
            raise ValueError(f"its sections {', '.join(others)} are not a run's")
    except ValueError as exc:
        raise ConfigError("train.output_dir", (
            f"{run_dir / run_files.CONFIG} is not a run's config ({exc}); a new run would "
            "replace it with its own: choose another train.output_dir, or move that file"))
    if config is None:
        return None
    flat = run_files.flat_run_config(config)
    return {"data.task": flat.get("data.task"), "model.name": flat.get("model.name")}


def recorded_by_run_folder(path: Path) -> tuple[dict | None, dict | None]:
    """(run_identity, storage_layout) of checkpoint `path` as its run folder's files record
    them, for a checkpoint of a version that did not write them into its state (before
    2026-12-02): config.yaml names the run, deepspeed_config.json the files' layout (the
    precision as it resolved on the machine that trained, which `auto` may not resolve to
    here). Neither can change over a run's resumes. None where a file is absent or unreadable
    (not checked, as before). Such a checkpoint of another model or ZeRO stage was reported
    'may be damaged', naming an earlier checkpoint that failed the same way (upgrade audit)."""
    run_dir = run_files.checkpoint_run_dir(path)
    if run_dir is None:
        return None, None
    identity = layout = None
    try:
        if (run_dir / run_files.CONFIG).is_file():
            identity = run_identity(compose(config_file=str(run_dir / run_files.CONFIG)))
    except (Seq2SeqEsError, ValueError, OSError):  # a model or task this version does not know
        pass
    try:
        written = json.loads((run_dir / run_files.DEEPSPEED_CONFIG).read_text(encoding="utf-8"))
        stage = written["zero_optimization"]["stage"]
        autocast = written.get("torch_autocast") or {}  # ZeRO 0: autocast over fp32 weights
        half = ("fp16" if written.get("fp16", {}).get("enabled") else
                "bf16" if written.get("bf16", {}).get("enabled") else
                ("fp16" if autocast.get("dtype") == "float16" else "bf16")
                if autocast.get("enabled") else "fp32")
        layout = {"dist.zero_stage": stage, "train.precision": half}
        accumulated = (written.get("data_types") or {}).get("grad_accum_dtype")
        if accumulated is not None:  # an older file has no data_types
            layout["dist.grad_accum_dtype"] = accumulated
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return identity, layout


def check_same_run(path: Path, saved: dict | None, current: dict | None) -> None:
    if saved is None or current is None or saved == current:
        return
    keys = [key for key in {**saved, **current} if saved.get(key) != current.get(key)]
    said = ", ".join(f"{key} {saved.get(key) or '(unset)'}" for key in keys)
    this = ", ".join(f"{key} {current.get(key) or '(unset)'}" for key in keys)
    raise ConfigError("train.resume", f"checkpoint {path} is of another run ({said}; this run: "
                      f"{this}); its folder belongs to that run: choose another "
                      "train.output_dir")


def _deepspeed_load(engine, path: Path, *, scheduler: bool, universal: bool = False) -> None:
    """DeepSpeed's full load of checkpoint `path` (weights and optimizer states; the
    learning-rate schedule's too with `scheduler`); `universal`: `path` is a universal
    checkpoint (`Checkpointer.repartitioned`)."""
    # DeepSpeed reads this switch from its config at load time only; it is set for this one
    # load, not in the run's config, so later saves and loads stay the ordinary ones.
    config = engine._config
    before = config.load_universal_checkpoint
    config.load_universal_checkpoint = universal
    groups = _group_settings(engine) if universal else None
    # A universal load warns "MPU is not provided, setting tp size to 1" (Megatron's tensor
    # parallelism, which these models do not use) on every rank: errors only, for this load.
    from deepspeed.utils import logger as deepspeed_logger
    level = deepspeed_logger.level
    if universal:
        deepspeed_logger.setLevel(logging.ERROR)
    try:
        load_path, _ = engine.load_checkpoint(str(path.parent), tag=path.name,
                                              load_optimizer_states=True,
                                              load_lr_scheduler_states=scheduler)
    finally:
        config.load_universal_checkpoint = before
        deepspeed_logger.setLevel(level)
    if universal:
        _restore_group_settings(engine, groups)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint {path}")


# What a parameter group holds besides its parameters and the rate the schedule sets each step.
_NOT_GROUP_SETTINGS = ("params", "lr", "initial_lr")


def _group_settings(engine) -> list[dict]:
    torch_optimizer = getattr(engine.optimizer, "optimizer", engine.optimizer)
    return [{key: value for key, value in group.items() if key not in _NOT_GROUP_SETTINGS}
            for group in torch_optimizer.param_groups]


def _restore_group_settings(engine, groups: list[dict]) -> None:
    """Undo two slips of DeepSpeed 0.19.8's stage-3 universal load. It gives every parameter
    group the first saved group's settings, so biases and norms decayed after it (the settings
    are this run's config anyway, so they are put back); and it stores one `step` tensor in the
    state of every sub-group, which Adam advances in place once per sub-group, so the bias
    correction ran two steps ahead after the first resumed step."""
    torch_optimizer = getattr(engine.optimizer, "optimizer", engine.optimizer)
    for group, settings in zip(torch_optimizer.param_groups, groups):
        group.update(settings)
    for state in torch_optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


def _saved_stage(storage: dict | None, engine) -> int:
    """The ZeRO stage a checkpoint was written at. The storage check has made it and this
    engine's compatible, so a state from before the field existed is judged by the engine."""
    stage = (storage or {}).get("dist.zero_stage")
    return engine.zero_optimization_stage() if stage is None else stage


def convert_to_universal(path: Path, out: Path) -> None:
    """DeepSpeed's converter (deepspeed.checkpoint.ds_to_universal): checkpoint `path` as one
    fp32 file per parameter and per optimizer state in `out`, readable by any number of ranks.
    Our checkpoints carry no Megatron 'universal_checkpoint_info', so the converter is told to
    add the empty one (inject_missing_state). One process, no worker pool: it runs inside a
    training rank."""
    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(input_folder=str(path), output_folder=str(out),
                              num_extract_workers=1, num_merge_workers=1,
                              keep_temp_folder=False, strict=True, inject_missing_state=True)
    said = io.StringIO()  # its progress lines and bars: shown only with a failure
    try:
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            ds_to_universal.main(args)
    except Exception as exc:
        raise Seq2SeqEsError(f"checkpoint {path} could not be converted for another number of "
                             f"ranks ({type(exc).__name__}: {exc}); DeepSpeed's converter said:\n"
                             + said.getvalue()[-2000:]) from exc


@contextlib.contextmanager
def damaged_checkpoint_named(path: Path, use_earlier: str):
    """A checkpoint whose files cannot be read (truncated, or written by another model): one
    error naming it and the complete checkpoints before it (`use_earlier` says what to do with
    them), instead of torch's reader traceback or a state_dict listing thousands of keys
    (SEQ2SEQ_ES_DEBUG=1 shows those). Training's resume and evaluate/predict/export alike."""
    try:
        yield
    except (torch.OutOfMemoryError, torch.distributed.DistError):
        raise  # the machine or the process group, not the files: a good checkpoint
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, pickle.UnpicklingError) \
            as exc:
        # torch's first line can run on for a paragraph: cut at a word, and say so
        first_line = textwrap.shorten((str(exc).strip().splitlines() or [type(exc).__name__])[0],
                                      300, placeholder=" ...")
        earlier = [str(p) for _, p in run_files.complete_checkpoints(path.parent)
                   if p.name < path.name][-2:]
        hint = f"; {use_earlier} " + " or ".join(earlier) if earlier else ""
        raise Seq2SeqEsError(f"checkpoint {path} could not be loaded ({type(exc).__name__}: "
                             f"{first_line}); it may be damaged{hint}") from exc


class Checkpointer:
    """checkpoints/step_<N> folders of one run; see the module docstring for the interface."""

    def __init__(self, root: str | Path, env: D.DistEnv, keep_last: int):
        self.root = Path(root)
        self.env = env
        self.keep_last = keep_last

    def complete(self) -> list[Path]:
        return [path for _, path in run_files.complete_checkpoints(self.root)]

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def path(self, step: int) -> Path:
        return self.root / f"step_{step:08d}"

    def has(self, step: int) -> bool:
        return (self.path(step) / run_files.TRAINER_STATE).is_file()

    def resume_point(self, resume: str) -> Path | None:
        """The checkpoint train.resume asks for: none (a fresh run; refused if this folder
        already holds checkpoints), auto (the latest, if any), must (the latest, which must
        exist) or a checkpoint folder's path."""
        latest = self.latest()
        if resume == "none":
            if latest is not None and (self.root.parent / run_files.DONE).is_file():
                # resume auto alone would only say it is finished: what each way out does
                raise ConfigError("train.resume", f"{self.root.parent} holds a finished run "
                                  f"(DONE; checkpoint {latest.name}): `seq2seq-es evaluate "
                                  f"{self.root.parent}` scores it, --train.resume auto with a "
                                  "larger train.max_steps or train.epochs trains it further; "
                                  "or choose another train.output_dir for a new run")
            if latest is not None:
                raise ConfigError("train.resume", f"{self.root.parent} already holds checkpoint "
                                  f"{latest.name}; pass --train.resume auto to continue it, or "
                                  "choose another train.output_dir")
            return None
        if resume == "auto":
            return latest
        if resume == "must":
            if latest is None:
                raise ConfigError("train.resume", f"no complete checkpoint in {self.root}")
            return latest
        path = Path(resume)
        if not (path / run_files.TRAINER_STATE).is_file():
            raise ConfigError("train.resume", f"{path} is not a complete checkpoint folder")
        return path

    def save(self, engine, state: TrainState) -> Path:
        """Collective: every rank must call it at the same step."""
        step = state.step
        final = self.path(step)
        tmp = self.root / f".tmp-{final.name}"
        if self.env.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in [*self.root.glob(".tmp-step_*"), *self.root.glob(_REMOVING + "*")]:
                shutil.rmtree(stale, ignore_errors=True)
        D.barrier()
        with self._writing(tmp):
            engine.save_checkpoint(str(self.root), tag=tmp.name, save_latest=False)
            (tmp / "rng").mkdir(parents=True, exist_ok=True)
            torch.save(_rng_state(), tmp / "rng" / f"rank_{self.env.rank}.pt")
        if SAVE_DELAY_ENV in os.environ:  # lets crash-safety tests kill a run mid-save
            time.sleep(float(os.environ[SAVE_DELAY_ENV]))
        D.barrier()
        if self.env.is_main:
            with self._writing(tmp):
                (tmp / run_files.TRAINER_STATE).write_text(state.to_json())
            if final.exists():  # e.g. the final save right after a periodic one: replaced
                self._remove(final, then=lambda: tmp.rename(final))
            else:
                tmp.rename(final)
            best = state.best
            keep = self.path(best["step"]) if best else None
            for old in self.complete()[:-self.keep_last]:
                if old != keep:
                    self._remove(old)
        D.barrier()
        if self.env.is_main and state.best is not None and state.best["step"] == step:
            self._note_best(state.best)
        return final

    def _note_best(self, best: dict) -> None:
        write_json_atomic(self.root / run_files.BEST,
                          {**best, "checkpoint": self.path(best["step"]).name})

    def repair_best_note(self, path: Path, state: TrainState) -> None:
        """best.json is written after the rename that completes a checkpoint: a run killed in
        between resumes from a checkpoint whose best (its own step) best.json never got, and
        the resumed run does not save that step again, so best.json would name an older best
        for good. Rank 0 rewrites it from the state when they differ (this folder's only)."""
        best = state.best
        if not self.env.is_main or best is None or path.parent.resolve() != self.root.resolve():
            return
        try:
            noted = json.loads((self.root / run_files.BEST).read_text())
        except (OSError, ValueError):
            noted = None
        if not noted or noted.get("step") != best["step"] or noted.get("value") != best["value"]:
            self._note_best(best)

    @contextlib.contextmanager
    def _writing(self, tmp: Path):
        """A failed write of checkpoint `tmp` (disk full, quota, rights): its partial folder is
        removed, so that its space is free again, and the run ends with one line saying where,
        why, and which complete checkpoint is kept (the run goes on from it)."""
        try:
            yield
        except Exception as exc:
            if not storage.is_write_failure(exc):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            latest = self.latest()
            size = storage.folder_bytes(latest) if latest is not None else None
            if size is not None:
                room = (f"; a save needs room for train.keep_last + 1 = {self.keep_last + 1} "
                        "checkpoints of that size (the new one is written before the oldest "
                        "goes)")
                kept = storage.checkpoint_kept(latest.name)
            else:
                room, kept = "", "no checkpoint of this run is complete yet"
            name = tmp.name.removeprefix(".tmp-")
            raise storage.StorageError(
                f"checkpoint {name} could not be written in {self.root}: "
                f"{storage.reason(exc, self.root, size)}{room}; its partial folder was removed; "
                f"{kept}") from exc

    def _remove(self, folder: Path, then=None) -> None:
        """Delete a checkpoint folder: renamed out of the step_N names first (one atomic
        step), so an interrupted delete (a second Ctrl-C, a kill) leaves a hidden folder the
        next save clears, never a half-deleted step_N/ among the checkpoints. `then` runs
        between the rename and the delete (the new checkpoint taking the old one's name)."""
        doomed = self.root / f"{_REMOVING}{folder.name}"
        shutil.rmtree(doomed, ignore_errors=True)
        folder.rename(doomed)
        if then is not None:
            then()
        shutil.rmtree(doomed, ignore_errors=True)

    def check_resumable(self, path: Path, run: dict | None, storage: dict | None) -> TrainState:
        """The checkpoint's state, refused (ConfigError) when it is of another run
        (`run_identity`) or DeepSpeed cannot read its files under this run's storage layout.
        Needs no model: the Trainer asks before loading the model and the data, so a refusal
        comes in seconds."""
        state = TrainState.read(path, self.env.world_size)
        saved_run, saved_storage = state.run, state.storage
        if saved_run is None or saved_storage is None:
            recorded_run, recorded_storage = recorded_by_run_folder(path)
            saved_run, saved_storage = saved_run or recorded_run, saved_storage or recorded_storage
        check_same_run(path, saved_run, run)
        check_same_storage(path, saved_storage, storage)
        return state

    def check_layout(self, path: Path, data_layout: dict) -> None:
        """Refused (ConfigError) when the checkpoint's examples per step differ from this run's
        (see `check_same_layout`); the Trainer asks before building the engine."""
        state = TrainState.read(path, self.env.world_size)
        if state.data_layout is not None and state.data_layout != data_layout:
            check_same_layout(path, state.data_layout, data_layout,
                              (state.world_size, self.env.world_size), data_reading_changes(path))

    def load(self, engine, path: Path) -> TrainState:
        """Collective: restore weights, optimizer, scheduler, this rank's RNG; return the state.
        The caller has had `check_resumable` and `check_layout` refuse another run's checkpoint
        first (the Trainer, on rank 0 alone, before the model and the engine are built); a file
        that cannot be read is an error naming the checkpoint. Another number of ranks resumes
        (see `repartitioned`)."""
        state = TrainState.read(path, self.env.world_size)
        self.repair_best_note(path, state)
        repartitioned = self._deepspeed_load_any_ranks(engine, path, state, scheduler=True)

        def restore_rng():
            with self.damaged_files_named(path):
                # Every rank starts from train.seed, so the saved streams differ only by what
                # each rank drew; on more ranks than saved, the extra ones continue rank r % saved.
                rng_file = path / "rng" / f"rank_{self.env.rank % state.world_size}.pt"
                _set_rng_state(torch.load(rng_file, weights_only=False))

        # a rank's own file (no collective inside): every rank stops if one cannot read it
        D.on_every_rank(self.env, restore_rng, f"checkpoint {path} could not be read on "
                                               "another rank, which says why")
        if state.world_size != self.env.world_size and self.env.is_main:
            print(f"checkpoint {path.name} of {state.world_size} rank(s) resumed on "
                  f"{self.env.world_size}: the same examples per step"
                  + (", optimizer states split anew (DeepSpeed universal checkpoint)"
                     if repartitioned else ""), flush=True)
        return state

    def _deepspeed_load_any_ranks(self, engine, path: Path, state: TrainState, *,
                                  scheduler: bool) -> bool:
        """Collective: DeepSpeed's load of checkpoint `path`; whether it went through a
        universal checkpoint. The examples of a step are the same however many ranks share them
        (data_layout counts whole steps); what another number of ranks cannot read as saved is
        ZeRO's one optimizer partition per rank (ZeRO 1-3, and bf16 at stage 1, DeepSpeed's
        BF16_Optimizer), which the universal checkpoint splits anew. Stage 0 keeps our whole
        optimizer in the module's file, which any number of ranks reads."""
        repartition = (state.world_size != self.env.world_size
                       and _saved_stage(state.storage, engine) > 0)
        source = self.repartitioned(path) if repartition else path
        with self.damaged_files_named(path):
            _deepspeed_load(engine, source, scheduler=scheduler, universal=repartition)
        D.barrier()
        if repartition and self.env.is_main:  # 12 bytes a parameter: not kept beside it
            shutil.rmtree(source, ignore_errors=True)
        return repartition

    def repartitioned(self, path: Path) -> Path:
        """Collective: checkpoint `path` as a universal checkpoint (`path/universal`), written
        by rank 0 under a temporary name; every rank gets the same error if it fails. Always
        written afresh: a run killed while removing an earlier one leaves part of it."""
        target = path / UNIVERSAL
        failure = None
        if self.env.is_main:
            tmp = path / (UNIVERSAL + ".tmp")
            for old in (target, tmp):
                shutil.rmtree(old, ignore_errors=True)
            try:
                convert_to_universal(path, tmp)
                tmp.rename(target)
            except Seq2SeqEsError as exc:
                failure = str(exc)
            finally:
                # the converter's tag file for Megatron's loader, beside its output
                (path / "latest_universal").unlink(missing_ok=True)
        failure = D.broadcast_object(failure)
        if failure:
            raise Seq2SeqEsError(failure)
        return target

    @contextlib.contextmanager
    def damaged_files_named(self, path: Path):
        """A checkpoint whose files cannot be read: see damaged_checkpoint_named."""
        with damaged_checkpoint_named(path, "resume from an earlier one with --train.resume"):
            yield

    def load_weights(self, engine, path: Path) -> None:
        """Collective: put the weights of checkpoint `path` into the engine (end of training).

        Goes through DeepSpeed's full load (weights and optimizer partitions, not the scheduler
        or the RNG): the optimizer's fp32 partitions are what ZeRO 1-3 copy back into the
        module, and this is the path the exact-resume tests cover for every stage (through a
        universal checkpoint when the best was saved by another number of ranks before a
        resume). The weights-only route (`load_module_only`) would, under ZeRO-3, consolidate
        every rank's fp32 shards on every rank and needs a `latest` tag file that these
        checkpoints do not write.
        """
        state = TrainState.read(path, self.env.world_size)
        self._deepspeed_load_any_ranks(engine, path, state, scheduler=False)
