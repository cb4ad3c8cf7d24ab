"""Planning and submitting runs: model/task validation, the hyper-parameter grid, run folders, manifests.

A sweep folder holds `sweep.json` (the manifest: grid, runs, job ids, SLURM settings), one folder
per run `<model>__<task>__<grid point>/` (the engine's output dir), and `slurm/` (submitit's
pickles and every rank's logs; each run folder links its ranks' logs under `logs/`). A single run
submitted with `slurm submit` gets the same manifest, as `<run_dir>/slurm_job.json`.
Everything is checked before anything is submitted.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .. import run_files
from ..engine.run_lock import describe_holder, locked_now, training_now
from ..config import (BOOKKEEPING_KEYS, LABEL_KEYS, SEED_MAX, check_folder, not_applying,
                      with_keys_added_since)
from ..errors import ConfigError, DataError, Seq2SeqEsError, UnknownNameError
from . import paper_grid, queries
from .config import SlurmConfig, make_executor, render_sbatch
from .job import DEFAULT_ENTRY, TrainJob

# The manifests' names (run_files: the job reads them too); here for the planner's readers.
SWEEP_MANIFEST, RUN_MANIFEST = run_files.SWEEP_MANIFEST, run_files.RUN_MANIFEST
SUBMITIT_DIR = "slurm"
MANIFEST_KIND = "seq2seq-es slurm"
MANIFEST_VERSION = 1

_AXIS_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9.+-]")


class SlurmUnavailableError(Seq2SeqEsError):
    """A SLURM client command is missing or does not answer."""


@dataclass
class RunPlan:
    """One training run: where it writes and the train arguments it gets."""

    name: str
    model: str
    task: str
    grid_point: dict[str, str]
    run_dir: str
    argv: list[str]
    job_id: str | None = None
    # A sweep's run collected among other run folders (`load_runs`): its grid point there is
    # read from its config.yaml, and this is what its sweep planned, which its config is still
    # checked against (results_table.check_run_config). None in a sweep's own manifest.
    planned_point: dict[str, str] | None = None


@dataclass
class Manifest:
    """What `status` and `collect` read back: the runs, their job ids and the SLURM settings."""

    kind: str                                # MANIFEST_KIND: marks the file as ours
    mode: str                                # "run" (slurm submit), "sweep", or "runs" (run
                                             # folders given to collect; never written)
    runs: list[RunPlan]
    grid: dict[str, list[str]]
    slurm: dict[str, Any]
    submitit_folder: str
    entry: str = DEFAULT_ENTRY
    overrides: list[str] = field(default_factory=list)
    max_parallel: int | None = None
    created: float = 0.0
    submitted: bool = False
    path: str = ""
    # `sweep --seeds`: the train.seed values every grid point was run with (each run's grid
    # point holds its own as SEED_AXIS); empty: no seed axis was added. collect averages a grid
    # point's seeds. Older manifests have no such field and load with none.
    seeds: list[int] = field(default_factory=list)

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("path")
        for run in data["runs"]:
            if run["planned_point"] is None:
                run.pop("planned_point")  # only run folders given to collect have one
        if not data["seeds"]:
            # A sweep without seeds writes the file as before, so older versions still read it.
            data.pop("seeds")
        data["version"] = MANIFEST_VERSION
        return json.dumps(data, indent=1) + "\n"

    def write(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        tmp.replace(path)
        self.path = str(path)

    @property
    def tasks_per_job(self) -> int:
        config = SlurmConfig.from_mapping(self.slurm)
        return config.world_size


def load_manifest(path: str | Path) -> Manifest:
    """Reads sweep.json / slurm_job.json, or finds one in the folder given."""
    path = Path(path).absolute()
    if path.is_dir():
        for name in (SWEEP_MANIFEST, RUN_MANIFEST):
            if (path / name).is_file():
                path = path / name
                break
        else:
            if (path.parent / SWEEP_MANIFEST).is_file():
                raise ConfigError("SWEEP", f"{path} is a run of the sweep {path.parent}: give "
                                  "the sweep folder (status and resume cover each of its runs)")
            raise ConfigError("SWEEP", f"{path} holds neither {SWEEP_MANIFEST} nor {RUN_MANIFEST}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("SWEEP", f"{path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ConfigError("SWEEP", f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("kind") != MANIFEST_KIND:
        raise ConfigError("SWEEP", f"{path} is not a seq2seq-es sweep manifest")
    data.pop("version", None)
    try:
        runs = [RunPlan(**run) for run in data.pop("runs")]
        manifest = Manifest(runs=runs, **data)
    except (TypeError, KeyError) as exc:
        raise ConfigError("SWEEP", f"{path} does not match this version's manifest: {exc}") from None
    manifest.path = str(path)
    return manifest


RUN_FOLDERS_MODE = "runs"  # a Manifest made from run folders (`collect RUN ...`), not submitted


def load_runs(paths: list[str]) -> Manifest:
    """What `collect` reads: one sweep (a folder holding sweep.json or slurm_job.json, or the
    file), or run folders trained anywhere (`seq2seq-es train`, torchrun, `slurm submit`, ...):
    each path a run folder (it holds config.yaml), a folder of them, or, among several paths, a
    sweep (its runs that have started). Run folders become an unsaved Manifest
    (mode "runs", path: the folder the results go to) whose runs' model and task come from their
    config.yaml and whose grid point is the run folder plus the config keys that differ between
    the runs of one (model, task). A sweep's (or `slurm submit` folder's) run keeps what was
    planned for it (planned_point), which collect checks its config against as it does for one
    sweep, and a sweep's runs that have not started are listed too, with no scores yet."""
    if len(paths) == 1:
        path = Path(paths[0])
        if path.is_file() and not _names_a_manifest(path):
            raise ConfigError("RUN", f"{path.absolute()} is a file, neither a run folder, a "
                              "folder of run folders, nor a sweep folder or its manifest "
                              f"({SWEEP_MANIFEST} or {RUN_MANIFEST})")
        if path.is_file() or any((path / name).is_file() for name in (SWEEP_MANIFEST,
                                                                        RUN_MANIFEST)):
            return load_manifest(path)
    folders: list[Path] = []
    planned: dict[Path, RunPlan] = {}  # a started run of a sweep or `slurm submit` folder
    not_started: list[RunPlan] = []     # a sweep's runs with no config.yaml yet
    entries: list[tuple[Path, bool]] = []  # (folder, named on the command line)
    for given in paths:
        path = Path(given).absolute()
        if not path.is_dir():
            raise ConfigError("RUN", f"{path} does not exist" if not path.exists()
                              else f"{path} is a file; expected a run folder, a folder of run "
                                   f"folders, or a sweep folder")
        if _is_collectable(path):
            entries.append((path, True))
            continue
        # A folder of them: its runs, and its sweeps and `slurm submit` folders too (they were
        # passed over without a word, and the table showed a fraction of what was there).
        children = sorted(child for child in path.iterdir()
                          if child.is_dir() and _is_collectable(child))
        # A train that failed before writing config.yaml (a model or data that did not load)
        # leaves its folder with train.lock alone: said, as it was passed over without a word.
        failed_starts = sorted(child for child in path.iterdir() if child.is_dir()
                               and not _is_collectable(child)
                               and (child / run_files.RUN_LOCK).is_file())
        for child in failed_starts:
            print(f"note: {child} is left out: it holds {run_files.RUN_LOCK} but no "
                  f"{run_files.CONFIG} (a train that failed before its config was written)",
                  file=sys.stderr)
        if not children and (path / run_files.RUN_LOCK).is_file():
            raise ConfigError("RUN", f"{path} holds {run_files.RUN_LOCK} but no "
                                     f"{run_files.CONFIG}: a train that failed before its config "
                                     "was written (its model or data did not load), with no "
                                     "results to collect")
        if not children:
            raise ConfigError("RUN", f"{path} holds neither {SWEEP_MANIFEST}, {RUN_MANIFEST}, "
                                     f"a run ({run_files.CONFIG}) nor run folders")
        entries += [(child, False) for child in children]
    for path, named in entries:
        # With other paths, a sweep is its runs and a `slurm submit` folder is a run folder:
        # separately submitted runs, or a second sweep adding grid points, make one table.
        if (path / SWEEP_MANIFEST).is_file():
            sweep_runs = load_manifest(path).runs
            found = [Path(run.run_dir) for run in sweep_runs
                     if (Path(run.run_dir) / run_files.CONFIG).is_file()]
            if not found and named:
                raise ConfigError("RUN", f"no run of the sweep {path} has started training "
                                         f"(none holds {run_files.CONFIG}) yet")
            for run in sweep_runs:
                if Path(run.run_dir) in found:
                    planned[Path(run.run_dir)] = run
                else:
                    not_started.append(run)
        elif (path / RUN_MANIFEST).is_file() and not (path / run_files.CONFIG).is_file():
            if named:
                raise ConfigError("RUN", f"the job of {path} has not started training (no "
                                         f"{run_files.CONFIG}) yet")
            found = []
            not_started += load_manifest(path).runs
        else:
            found = [path]
            if (path / RUN_MANIFEST).is_file():
                planned.update({Path(run.run_dir): run for run in load_manifest(path).runs})
        folders += [folder for folder in found if folder not in folders]
    if not folders:
        raise ConfigError("RUN", f"no run in {', '.join(str(Path(p).absolute()) for p in paths)} "
                                 f"has started training (none holds {run_files.CONFIG}) yet")
    configs = {folder: _flat_config(folder) for folder in folders}
    pairs: dict[tuple[str, str], list[Path]] = {}
    for folder, config in configs.items():
        model, task = config.get("model.name"), config.get("data.task")
        if not model or not task:
            raise DataError("names no model.name or data.task", file=str(folder / run_files.CONFIG))
        pairs.setdefault((str(model), str(task)), []).append(folder)
    # A run is named by its folder; folders of one name in different places (two `t5s-sqac`
    # under two parents) are named by their path below the folder holding them all, or the
    # table's labels and warnings could not tell them apart.
    parent = Path(os.path.commonpath([str(Path(p).absolute()) for p in paths]))
    basenames = [folder.name for folder in folders]
    name_of = {folder: (folder.name if basenames.count(folder.name) == 1 or
                        not folder.is_relative_to(parent) else str(folder.relative_to(parent)))
               for folder in folders}
    runs = []
    for (model, task), members in pairs.items():
        keys = sorted({key for folder in members for key in configs[folder]} - BOOKKEEPING_KEYS)
        varying = [key for key in keys
                   if len({repr(configs[folder].get(key)) for folder in members}) > 1]
        if set(varying) & BATCH_SPLIT_KEYS:
            # A step's examples are the setting (a sweep's train.batch_size axis); their split
            # into micro-batch x accumulation x ranks is not: 1 rank x 4 and 2 ranks x 2 read as
            # two settings. Shown as the examples per step, where those differ.
            for folder in members:
                configs[folder][EXAMPLES_PER_STEP] = examples_per_step(folder)
            varying = [key for key in varying if key not in BATCH_SPLIT_KEYS]
            if len({configs[folder][EXAMPLES_PER_STEP] for folder in members}) > 1:
                varying.append(EXAMPLES_PER_STEP)
        for folder in members:
            point = {"run": name_of[folder], **{key: str(configs[folder].get(key))
                                               for key in varying}}
            plan = planned.get(folder)
            runs.append(RunPlan(name=name_of[folder], model=model, task=task, grid_point=point,
                                run_dir=str(folder), argv=[],
                                planned_point=plan.grid_point if plan else None))
    # Listed (among the runs with no scores yet) so that the table says how much of a sweep
    # it holds.
    runs += [RunPlan(name=Path(run.run_dir).name, model=run.model, task=run.task,
                     grid_point={"run": Path(run.run_dir).name}, run_dir=run.run_dir, argv=[],
                     planned_point=run.grid_point) for run in not_started]
    return Manifest(kind=MANIFEST_KIND, mode=RUN_FOLDERS_MODE, runs=runs, grid={}, slurm={},
                    submitit_folder="", path=str(parent))


def _is_collectable(folder: Path) -> bool:
    """A run folder, a sweep folder or a `slurm submit` folder (what collect reads as one)."""
    return any((folder / name).is_file()
               for name in (run_files.CONFIG, SWEEP_MANIFEST, RUN_MANIFEST))


def _names_a_manifest(path: Path) -> bool:
    """Whether a file given to collect is meant as a manifest: named sweep.json or
    slurm_job.json (a broken one then gets its JSON error), or, under another name (a copy), a
    JSON object of our kind. Any other file (notes, a results table) is no manifest at all, and
    "not valid JSON" would point at the wrong problem."""
    if path.name in (SWEEP_MANIFEST, RUN_MANIFEST):
        return True
    try:
        with path.open("rb") as stream:  # a large file given by mistake is not read whole
            if not stream.read(4096).lstrip().startswith(b"{"):
                return False
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("kind") == MANIFEST_KIND


# The keys that split a step's examples into micro-batch x accumulation (x ranks): no setting
# of their own (the planner splits a sweep's effective batch per run, `slurm resume` on other
# ranks changes the split), and the label collect shows instead where they differ between run
# folders.
BATCH_SPLIT_KEYS = frozenset({"train.batch_size", "train.grad_accum"})
EXAMPLES_PER_STEP = "examples_per_step"


def examples_per_step(run_dir: Path) -> str:
    """The examples of one optimizer step over all ranks, from the DeepSpeed config the engine
    wrote (train_batch_size = micro-batch x accumulation x ranks); '?' where it cannot be read."""
    try:
        value = json.loads((run_dir / run_files.DEEPSPEED_CONFIG).read_text(encoding="utf-8"))
        return str(int(value["train_batch_size"]))
    except (OSError, ValueError, KeyError, TypeError):
        return "?"


def _flat_config(run_dir: Path) -> dict[str, Any]:
    """A run's config.yaml as {'section.key': value}, with the keys an older version did not
    write at their defaults (config.with_keys_added_since)."""
    try:
        return with_keys_added_since(
            run_files.flat_run_config(run_files.read_run_config(run_dir) or {}))
    except ValueError as exc:
        raise DataError(str(exc), file=str(run_dir / run_files.CONFIG)) from None


# ---- names -----------------------------------------------------------------------------------

def known_models() -> list[str]:
    from ..models import MODELS  # imported here: `seq2seq_es.slurm` stays light for status/collect

    return list(MODELS)


def known_tasks() -> list[str]:
    from ..tasks import TASKS

    return list(TASKS)


def check_names(models: Iterable[str], tasks: Iterable[str], task_hint: str = "") -> None:
    model_names, task_names = known_models(), known_tasks()
    for model in models:
        if model not in model_names:
            raise UnknownNameError("model", model, model_names)
    for task in tasks:
        if task not in task_names:
            raise UnknownNameError("task", task, task_names, hint=task_hint)


def select_pairs(models: list[str] | None = None, tasks: list[str] | None = None,
                 pairs: list[str] | None = None, own_tasks: bool = False) -> list[tuple[str, str]]:
    """The paper's model x task pairs filtered by models/tasks, or explicit MODEL:TASK pairs.
    With own_tasks, a pair's task may be outside the registry: the user's own, defined by the
    overrides (data.source_column, ...), which composing each run checks."""
    check_names(models or [], tasks or [], task_hint=(
        "--tasks filters the paper's pairs; a task of your own runs as --pair MODEL:TASK with "
        "its data.source_column and data.target_column after --" if own_tasks else ""))
    if pairs:
        if models or tasks:
            raise ConfigError("--pair", "give either --pair or --models/--tasks filters, not both")
        chosen = []
        for spec in pairs:
            model, sep, task = spec.partition(":")
            if not sep or not model or not task:
                raise ConfigError("--pair", f"'{spec}' must look like MODEL:TASK")
            check_names([model], [] if own_tasks else [task])
            if (model, task) in chosen:
                raise ConfigError("--pair", f"'{spec}' is given twice")
            chosen.append((model, task))
        return chosen
    chosen = [(model, task) for model, task in paper_grid.paper_pairs()
              if (not models or model in models) and (not tasks or task in tasks)]
    if not chosen:
        raise ConfigError("--models/--tasks",
                          f"no run of the paper pairs models {models or 'any'} with tasks "
                          f"{tasks or 'any'}; use --pair MODEL:TASK for other combinations")
    return chosen


# ---- grid ------------------------------------------------------------------------------------

# Keys the planner gives every run itself (`train_argv`): they say which run it is, where it
# writes and how it goes on after a requeue, not what it trains. A grid axis on one of them
# named runs after values they did not get (`--grid train.output_dir=a,b`: one run, named
# output_dir-a, trained in the folder b, the other dropped as its duplicate), and after -- the
# job trained elsewhere than the run folder status reads, or restarted afresh when requeued.
PLANNER_KEYS: dict[str, str] = {
    "train.output_dir": "the planner sets it: each run trains in its own folder, "
                        "<sweep-dir>/<model>__<task>__<grid point> in a sweep or --run-dir for "
                        "`submit`, which the run is named for and where status, resume and "
                        "collect find it",
    "train.resume": "the planner sets it to auto: every run resumes from its latest checkpoint, "
                    "so that a job requeued after a pre-emption or its time limit goes on where "
                    "it stopped",
    "train.run_group": "the planner gives a sweep's runs one W&B group, a label (the sweep "
                       "folder's name, or -- --train.run_group NAME) that is no part of what a "
                       "run trains, so grid points differing in it alone are one run",
}
# Of those, the ones dotted overrides after -- may not set either (train.run_group may: the
# sweep's default group is the one thing it replaces).
_FIXED_OVERRIDES = ("train.output_dir", "train.resume")


def check_grid_keys(grid: dict[str, list[str]]) -> None:
    """Refuses a grid axis on a key the planner sets for every run itself (PLANNER_KEYS)."""
    for key in grid:
        if key in PLANNER_KEYS:
            raise ConfigError(f"--grid {key}", f"cannot be a grid axis: {PLANNER_KEYS[key]}")


def check_fixed_overrides(overrides: list[str]) -> None:
    """Refuses train overrides after -- that would replace what the planner sets for every run
    (`_FIXED_OVERRIDES`): they come after its own arguments and win."""
    for key in _FIXED_OVERRIDES:
        if _given_key(overrides, key):
            raise ConfigError(key, f"{PLANNER_KEYS[key]}; drop --{key} after --"
                              + (" (choose the folder with --run-dir or --sweep-dir)"
                                 if key == "train.output_dir" else ""))


def parse_grid(specs: list[str]) -> dict[str, list[str]]:
    """['optim.lr=3e-5,5e-5', 'train.epochs=3,6'] -> {'optim.lr': [...], 'train.epochs': [...]}.
    A key the planner sets itself (PLANNER_KEYS) is refused as an axis."""
    grid: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, values_text = spec.partition("=")
        key = key.strip()
        if not sep or not _AXIS_KEY.match(key):
            raise ConfigError(f"--grid {spec}", "expected a dotted key and values, "
                              "e.g. --grid optim.lr=3e-5,5e-5")
        values = [value.strip() for value in values_text.split(",")]
        if not values_text.strip() or any(not value for value in values):
            raise ConfigError(f"--grid {key}", f"empty value in axis '{spec}': every axis needs "
                              "at least one value and no empty ones")
        if len(set(values)) != len(values):
            raise ConfigError(f"--grid {key}", f"repeated value in '{spec}'")
        if key in grid:
            raise ConfigError(f"--grid {key}", "axis given twice")
        grid[key] = values
    check_grid_keys(grid)
    return grid


def grid_points(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    if not grid:
        return [{}]
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def grid_point_name(point: dict[str, str]) -> str:
    """{'train.batch_size': '8', 'optim.lr': '5e-5'} -> 'batch_size-8_lr-5e-5' ('default' if empty)."""
    if not point:
        return "default"
    short = [key.rsplit(".", 1)[-1] for key in point]
    labels = short if len(set(short)) == len(short) else list(point)
    return "_".join(f"{label}-{_UNSAFE_NAME_CHARS.sub('+', value)}"
                    for label, value in zip(labels, point.values()))


def describe_grid_point(point: dict[str, str]) -> str:
    # Empty: a `slurm submit` run or a sweep without a grid, whose settings may well be its
    # own (a --config, overrides), so not "(defaults)".
    return " ".join(f"{key}={value}" for key, value in point.items()) or "(no grid point)"


# ---- seeds -----------------------------------------------------------------------------------

SEED_AXIS = "train.seed"
SEEDS_FLAG = "--seeds"
_INTEGER = re.compile(r"[+-]?[0-9]+")


def parse_seeds(text: str) -> list[str]:
    """'1,2,3' -> ['1', '2', '3']: the values of the train.seed axis that `sweep --seeds` adds to
    every pair's grid. Integers in the range TrainConfig.validate accepts, each once (the same
    seed twice is the same run); kept as strings, like every grid value, spelled as Python
    prints the integer so that '01' and '1' are one seed and folder names read plainly."""
    values = [value.strip() for value in text.split(",")]
    if not text.strip() or any(not value for value in values):
        raise ConfigError(SEEDS_FLAG, f"empty value in '{text}': give integers such as "
                          f"{SEEDS_FLAG} 1,2,3")
    seeds: list[str] = []
    for value in values:
        if not _INTEGER.fullmatch(value):
            raise ConfigError(SEEDS_FLAG, f"'{value}' is not an integer; give integers such as "
                              f"{SEEDS_FLAG} 1,2,3")
        seed = int(value)
        if not 0 <= seed <= SEED_MAX:
            raise ConfigError(SEEDS_FLAG, f"{value} is outside [0, {SEED_MAX}], the values "
                              f"{SEED_AXIS} takes (2**32 - 1, what numpy seeds with)")
        if str(seed) in seeds:
            raise ConfigError(SEEDS_FLAG, f"seed {seed} is given twice in '{text}' (the same "
                              "seed trains the same run again)")
        seeds.append(str(seed))
    return seeds


def _given_key(argv: list[str], key: str) -> bool:
    """Whether dotted train arguments set `key` (`--key VALUE` or `--key=VALUE`)."""
    return any(arg == f"--{key}" or arg.startswith(f"--{key}=") for arg in argv)


def check_seeds(seeds: list[str], grid: dict[str, list[str]] | None,
                overrides: list[str]) -> None:
    """Refuses what would give `--seeds` a second source of seeds: a train.seed axis of --grid
    (two axes of one key), or a train.seed after -- (the overrides come after the grid point in
    each run's arguments, so every run would train with that one seed under a folder named
    for another). A --config file's train.seed is allowed: the grid point's dotted key wins
    over the file, as in `train`, and files written by `seq2seq-es config` name every key."""
    if not seeds:
        return
    if grid and SEED_AXIS in grid:
        raise ConfigError(SEEDS_FLAG, f"--grid {SEED_AXIS}={','.join(grid[SEED_AXIS])} and "
                          f"{SEEDS_FLAG} both give the seeds; give one ({SEEDS_FLAG} adds the "
                          f"{SEED_AXIS} axis to the pair's grid, the paper's or --grid's)")
    if _given_key(overrides, SEED_AXIS):
        raise ConfigError(SEEDS_FLAG, f"--{SEED_AXIS} after -- would train every run with one "
                          f"seed, not the {SEEDS_FLAG} values its folder is named for; drop "
                          f"--{SEED_AXIS} after --, or {SEEDS_FLAG}")


def without_seed(point: dict[str, str]) -> dict[str, str]:
    """A grid point without its seed: what the seeds of one grid point share."""
    return {key: value for key, value in point.items() if key != SEED_AXIS}


# ---- plans -----------------------------------------------------------------------------------

def train_argv(model: str, task: str, run_dir: str | Path, grid_point: dict[str, str],
               overrides: list[str], run_group: str | None = None) -> list[str]:
    """The `train` arguments of one run: it writes to run_dir and resumes from its checkpoints.
    run_group (a sweep's): its train.run_group, before the grid point and the overrides, so a
    user's own --train.run_group after -- wins (the last value of a key is the one kept)."""
    argv = ["--task", task, "--model", model, "--train.output_dir", str(run_dir),
            "--train.resume", "auto"]
    if run_group:
        argv += ["--train.run_group", run_group]
    for key, value in grid_point.items():
        argv += [f"--{key}", value]
    return argv + list(overrides)


CONFIG_OPTION = "--config"


def split_config(argv: list[str]) -> tuple[str | None, list[str]]:
    """`--config FILE` (or `--config=FILE`) out of train arguments: (FILE or None, the rest)."""
    config_file: str | None = None
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg != CONFIG_OPTION and not arg.startswith(CONFIG_OPTION + "="):
            rest.append(arg)
            i += 1
            continue
        if arg == CONFIG_OPTION:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise ConfigError(CONFIG_OPTION, "missing value: a YAML file with sections model, "
                                  "data, optim, train, dist, gen")
            value, i = argv[i + 1], i + 2
        else:
            value, i = arg.split("=", 1)[1], i + 1
        if config_file is not None:
            raise ConfigError(CONFIG_OPTION, f"given twice ({config_file}, {value}); give one file")
        config_file = value
    return config_file, rest


def absolute_config(argv: list[str]) -> list[str]:
    """The same train arguments with a `--config` file's path made absolute (jobs may start
    elsewhere)."""
    config_file, _ = split_config(argv)
    if config_file is None:
        return list(argv)
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == CONFIG_OPTION:
            out += [CONFIG_OPTION, str(Path(argv[i + 1]).absolute())]
            i += 2
        elif argv[i].startswith(CONFIG_OPTION + "="):
            out += [CONFIG_OPTION, str(Path(argv[i].split("=", 1)[1]).absolute())]
            i += 1
        else:
            out.append(argv[i])
            i += 1
    return out


# Keys naming a local file or folder, read by the job wherever SLURM starts it (sbatch starts
# in the folder it is called from, so `slurm resume` from elsewhere would read other files).
PATH_KEYS = ("data.train_file", "data.validation_file", "data.test_file", "data.cache_dir",
             "dist.deepspeed_config", "model.path")
DATA_FILE_KEYS = ("data.train_file", "data.validation_file", "data.test_file")


def _without_key(argv: list[str], key: str) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        if argv[i] == f"--{key}":
            i += 2
        elif argv[i].startswith(f"--{key}="):
            i += 1
        else:
            out.append(argv[i])
            i += 1
    return out


def pinned_paths(argv: list[str], cfg) -> list[str]:
    """The train arguments with every local path of the composed config (`PATH_KEYS`, from a
    dotted option or the --config file) given as an absolute dotted option, and the data files
    checked to exist, at submission: a relative path was read against wherever the job started
    (`slurm resume` from another folder trained on other files without a word), and a missing
    file failed on the nodes after the job had waited in the queue. A model.path that is no
    local folder is a hub id and stays as given."""
    from ..tasks.loading import check_data_file

    pinned = list(argv)
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if key in DATA_FILE_KEYS and value:
            check_data_file(key, value)
        if value and os.path.isabs(value):
            pinned = _without_key(pinned, key) + [f"--{key}", value]
    return pinned


def relative_paths(argv: list[str]) -> list[tuple[str, str]]:
    """(key, value) of the `PATH_KEYS` given with a relative path in train arguments."""
    found = []
    for i, arg in enumerate(argv):
        for key in PATH_KEYS:
            value = argv[i + 1] if arg == f"--{key}" and i + 1 < len(argv) else \
                arg.split("=", 1)[1] if arg.startswith(f"--{key}=") else None
            if value and key != "model.path" and not os.path.isabs(os.path.expanduser(value)):
                found.append((key, value))
    return found


def compose_run(task: str, model: str, argv: list[str], task_option: str = ""):
    """The config `seq2seq-es train --task T --model M ARGV` composes (a `--config` file, then the
    dotted options), refused when it would train another task or model than the run's name says.
    `task_option`: the flag that named the task (--task, --pair), for an unknown task's error."""
    from ..config import compose, parse_overrides
    from ..errors import UnknownNameError
    from ..tasks.registry import OWN_TASK_HINT

    config_file, rest = split_config(argv)
    try:
        cfg = compose(task, model, config_file=config_file, overrides=parse_overrides(rest))
    except UnknownNameError as exc:
        if not task_option or exc.kind != "task" or not str(exc).endswith(OWN_TASK_HINT):
            raise
        # Say where a task of one's own gets its columns here: after -- (train's own hint
        # names config keys, as if the user had typed `seq2seq-es train`).
        named = f"{model}:{task}: " if task_option == "--pair" else ""
        raise ConfigError(task_option, f"{named}{str(exc)[:-len(OWN_TASK_HINT)]}for a task of "
                          "your own, give its data.source_column and data.target_column (and "
                          "data.train_file, data.validation_file) after --") from None
    for key, planned, got in (("data.task", task, cfg.data.task),
                              ("model.name", model, cfg.model.name)):
        if got != planned:
            where = "the options after --" + (f" ({config_file})" if config_file else "")
            raise ConfigError(key, f"{where} set {key} to '{got}', but this run is {model} on "
                              f"{task}; choose the {key.split('.')[0]} with --task/--model, "
                              "--pair or --models/--tasks")
    return cfg


DATA_SPLITS = ("train", "validation", "test")


def data_root_overrides(data_root: str | Path, task: str) -> list[str]:
    """`--data.train_file DATA_ROOT/<task>/train.jsonl` (and validation, test where present).

    Compute nodes often have no internet: a sweep can read each task's local copy, in the hub
    dataset's columns, from one folder per task instead of the hub.
    """
    from ..tasks.loading import LOCAL_FILE_BUILDERS

    folder = Path(data_root).absolute() / task
    files: dict[str, Path] = {}
    for split in DATA_SPLITS:
        candidates = (folder / f"{split}{suffix}" for suffix in LOCAL_FILE_BUILDERS)
        found = [path for path in candidates if path.is_file()]
        if len(found) > 1:
            raise ConfigError("--data-root", f"{folder} holds {len(found)} {split} files "
                              f"({', '.join(path.name for path in found)}); keep one")
        if found:
            files[split] = found[0]
    if "train" not in files:
        raise ConfigError("--data-root", f"no train file for task '{task}': expected "
                          f"{folder}/train{{{','.join(LOCAL_FILE_BUILDERS)}}}")
    return [arg for split, path in files.items() for arg in (f"--data.{split}_file", str(path))]


BATCH_AXIS = "train.batch_size"
ACCUM_KEY = "train.grad_accum"


@dataclass
class DroppedRun:
    """A planned run left out because its resolved config equals an earlier run's."""

    model: str
    task: str
    name: str                # the run left out
    kept: str                # the run with the same config, which stays
    point: int               # 1-based number of its grid point in the pair's grid: g<point>
    kept_point: int
    reasons: list[str]       # why the grid points differing on paper resolve to one config
    seed: str | None = None  # with --seeds: the seed both runs have (points count without it)

    def describe(self) -> str:
        seed = f", seed {self.seed}" if self.seed is not None else ""
        return (f"{self.model} {self.task} g{self.point} = g{self.kept_point}{seed} "
                f"({'; '.join(self.reasons)})")


@dataclass
class SweepPlan:
    runs: list[RunPlan]
    dropped: list[DroppedRun]
    grid: dict[str, list[str]]   # every axis and value of the pairs' grids, for the manifest
    configs: dict[str, Any] = field(default_factory=dict)  # run name -> its composed RunConfig
    seeds: list[str] = field(default_factory=list)  # --seeds: the train.seed axis added

    def dropped_summary(self, limit: int = 20) -> list[str]:
        """'dropped N duplicate runs:' and one line per dropped run (at most `limit`)."""
        if not self.dropped:
            return []
        lines = [f"dropped {len(self.dropped)} duplicate run{'s' if len(self.dropped) > 1 else ''}"
                 " (same resolved config as a run that stays):"]
        lines += [f"  {drop.describe()}" for drop in self.dropped[:limit]]
        if len(self.dropped) > limit:
            lines.append(f"  ... and {len(self.dropped) - limit} more")
        return lines

    def summary(self) -> list[str]:
        """'N runs: M pairs x grid points' and one line per distinct grid point with its runs
        (with --seeds: 'x S seeds', and a grid point's line counts the runs of all its seeds)."""
        counts: dict[str, int] = {}
        for run in self.runs:
            point = describe_grid_point(without_seed(run.grid_point) if self.seeds
                                        else run.grid_point)
            counts[point] = counts.get(point, 0) + 1
        pairs = len({(run.model, run.task) for run in self.runs})
        seeds = f" x {_count(len(self.seeds), 'seed')}" if self.seeds else ""
        lines = [f"{_count(len(self.runs), 'run')}: {_count(pairs, 'pair')} x grid points{seeds} "
                 f"({_count(len(counts), 'distinct grid point')}"
                 + (f", {len(self.dropped)} duplicates dropped" if self.dropped else "")
                 + (f"; {SEED_AXIS} {', '.join(self.seeds)}" if self.seeds else "") + "):"]
        width = max(len(point) for point in counts) if counts else 0
        lines += [f"  {point:<{width}}  {_count(n, 'run')}" for point, n in counts.items()]
        return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def split_effective_batch(value: str, default_micro: int, world_size: int = 1,
                          where: str = "", paper_values: tuple[str, ...] | None = None
                          ) -> tuple[int, int]:
    """A grid's effective batch -> (train.batch_size, train.grad_accum) per rank.

    The micro-batch is the largest divisor of the batch each rank gets that is at most
    `default_micro`, the pair's default micro-batch (one that fits its GPU), so a grid point
    never needs more memory than the pair's default; accumulation makes up the rest, exactly
    (the translation recipe's 384 on 8 ranks: 48 a rank, 24 x 2 under t5s's 32, where
    min(48, 32) = 32 divided nothing and the paper's own recipe was refused). `paper_values`:
    the paper's values of the axis where the grid is the paper's (the user gave no --grid), so
    that an effective batch the ranks cannot split names the ranks, not a --grid never given.
    """
    key = f"--grid {BATCH_AXIS}"
    try:
        batch = int(value)
    except ValueError:
        raise ConfigError(key, f"expected a positive integer (the effective batch per optimizer "
                          f"step), got '{value}'") from None
    if batch < 1:
        raise ConfigError(key, f"expected a positive integer, got '{value}'")
    if batch % world_size:
        if paper_values is not None:
            raise ConfigError("--nodes/--gpus-per-node", (
                f"the paper's grid for{where} has the effective batch {batch} ({BATCH_AXIS} "
                f"{', '.join(paper_values)}: what one GPU of the paper took per step), which the "
                f"{world_size} ranks of a job cannot split; sweep it on fewer ranks a job, whose "
                f"number divides {batch}, or give --grid {BATCH_AXIS}=... with multiples of "
                f"{world_size}"))
        raise ConfigError(key, f"effective batch {batch} does not split evenly over the "
                          f"{world_size} ranks of a job")
    per_rank = batch // world_size
    micro = max(d for d in range(1, min(per_rank, default_micro) + 1) if per_rank % d == 0)
    return micro, per_rank // micro


def resolved_key(cfg) -> str:
    """The run's config as it acts: label keys (config.LABEL_KEYS) left out, keys it never reads
    blanked."""
    values = cfg.to_dict()
    for key in LABEL_KEYS:
        section, name = key.split(".")
        values[section].pop(name)
    values["train"]["eval_batch_size"] = cfg.train.eval_batch_size or cfg.train.batch_size
    for key in not_applying(cfg):
        section, name = key.split(".")
        values[section][name] = None
    return json.dumps(values, sort_keys=True, default=str)


def _explain_duplicate(point: dict[str, str], kept: dict[str, str], cfg) -> list[str]:
    ignored = not_applying(cfg)
    reasons = []
    for key, value in point.items():
        if kept.get(key) == value:
            continue
        if key in ignored:
            reasons.append(f"{key} does not apply: {ignored[key]}")
        else:
            section, name = key.split(".")
            reasons.append(f"{key} {kept.get(key)} and {value} resolve to the same value "
                           f"({getattr(getattr(cfg, section), name)!r})")
    return reasons or ["same grid point"]


def plan_sweep(root: str | Path, pairs: list[tuple[str, str]],
               grid: dict[str, list[str]] | None, overrides: list[str],
               data_root: str | Path | None = None, world_size: int = 1,
               compose_runs: bool = True, seeds: list[str] | None = None) -> SweepPlan:
    """One run per pair and grid point, each config composed and validated; duplicates dropped.

    grid None: each pair gets the paper's grid for it (`paper_grid.grid_for`); a dict: the same
    grid for every pair. seeds (`parse_seeds`): a last train.seed axis added to each pair's grid,
    so the seeds of a grid point are neighbours in the job array and folder names end in
    `seed-N` (`check_seeds` refuses a second source of seeds). A train.batch_size axis is the
    effective batch per optimizer step (`split_effective_batch`). Every run is given
    `train.run_group`, the sweep folder's name, so that W&B shows a sweep's runs as one group
    (a label only: no part of the resolved config a duplicate is found by). Overrides come last
    in each run's arguments, so they win over --data-root and the run group. A `--config FILE`
    among the overrides is passed on to `train` and sits below every dotted key, as in `train`
    (run group, grid point, --data-root, dotted overrides); it may not set the batch axis' keys,
    nor another task or model than the pair's. Every run's config is
    composed as `seq2seq-es train` will compose it, which
    refuses a bad file, key or value before anything is submitted, and a run whose resolved config
    equals an earlier run's (an axis the run never reads, such as epochs under max_steps) is
    dropped and reported. compose_runs False (an entry other than training, such as the probe,
    whose overrides are not config keys): runs are neither composed nor deduplicated, and the
    micro-batch comes from the registry defaults alone.
    """
    from ..config import compose, flat_keys, load_yaml

    root = Path(root).absolute()
    # resolved: the folder's own name where the path given ends in '.' or '..' or a link
    run_group = root.resolve().name
    seeds = list(seeds or [])
    check_seeds(seeds, grid, overrides)
    check_grid_keys(grid or {})
    if compose_runs:
        check_fixed_overrides(overrides)
    config_file, _ = split_config(overrides)
    file_keys = set(flat_keys(load_yaml(config_file))) if config_file and compose_runs else set()
    runs: list[RunPlan] = []
    dropped: list[DroppedRun] = []
    union: dict[str, list[str]] = {}
    seen: dict[str, tuple[RunPlan, int]] = {}
    configs: dict[str, Any] = {}
    for model, task in pairs:
        pair_grid = ({key: list(values) for key, values in paper_grid.grid_for(model, task).items()}
                     if grid is None else grid)
        if seeds:
            pair_grid = {**pair_grid, SEED_AXIS: seeds}
        for key, values in pair_grid.items():
            union.setdefault(key, [])
            union[key] += [value for value in values if value not in union[key]]
        data_args = data_root_overrides(data_root, task) if data_root is not None else []
        base_args = data_args + list(overrides)
        default = (compose_run(task, model, base_args, task_option="--pair") if compose_runs
                   else compose(task, model))
        if BATCH_AXIS in pair_grid:
            for key in (BATCH_AXIS, ACCUM_KEY):
                if f"--{key}" in overrides or any(arg.startswith(f"--{key}=") for arg in overrides):
                    raise ConfigError(key, f"the grid's {BATCH_AXIS} axis is the effective batch, "
                                      f"from which the planner sets {BATCH_AXIS} (micro-batch) and "
                                      f"{ACCUM_KEY}; drop --{key} after --, or the axis")
                if key in file_keys:
                    raise ConfigError(key, f"{config_file} sets {key}, but the grid's {BATCH_AXIS} "
                                      f"axis is the effective batch, from which the planner sets "
                                      f"{BATCH_AXIS} (micro-batch) and {ACCUM_KEY}; drop it from "
                                      "the file, or the axis")
            if ACCUM_KEY in pair_grid:
                raise ConfigError(f"--grid {ACCUM_KEY}", f"the grid's {BATCH_AXIS} axis is the "
                                  f"effective batch and sets {ACCUM_KEY}; give one of the two")
        _refuse_replaced_axes(pair_grid, grid is None, model, task, overrides, data_args,
                              data_root)
        for index, point in enumerate(grid_points(pair_grid)):
            # The seed axis is the last one: a grid point's number counts its seeds as one.
            number = index // len(seeds) + 1 if seeds else index + 1
            name = f"{model}__{task}__{grid_point_name(point)}"
            run_dir = root / name
            args: dict[str, str] = {}
            for key, value in point.items():
                if key == BATCH_AXIS:
                    micro, accum = split_effective_batch(
                        value, default.train.batch_size, world_size, f" {model} on {task}",
                        pair_grid[BATCH_AXIS] if grid is None else None)
                    args[BATCH_AXIS], args[ACCUM_KEY] = str(micro), str(accum)
                else:
                    args[key] = value
            argv = train_argv(model, task, run_dir, args, base_args, run_group=run_group)
            plan = RunPlan(name=name, model=model, task=task, grid_point=point,
                           run_dir=str(run_dir), argv=argv)
            if not compose_runs:
                runs.append(plan)
                continue
            try:
                cfg = compose_run(task, model, argv[4:])
            except ConfigError as error:
                # The pair composed without the grid point (`default` above), so a refused axis
                # key is its value's fault: say it as --grid (or --seeds) and the value given.
                if error.key == SEED_AXIS and seeds:
                    raise ConfigError(SEEDS_FLAG, f"{point[SEED_AXIS]}: {error.reason}") from None
                if error.key in point and error.key != BATCH_AXIS:
                    raise ConfigError("--grid", f"{error.key}={point[error.key]}: "
                                      f"{error.reason}") from None
                raise
            plan.argv = argv = pinned_paths(argv, cfg)
            key = resolved_key(cfg)
            if key in seen:
                kept, kept_number = seen[key]
                dropped.append(DroppedRun(model=model, task=task, name=name, kept=kept.name,
                                          point=number, kept_point=kept_number,
                                          seed=point.get(SEED_AXIS) if seeds else None,
                                          reasons=_explain_duplicate(point, kept.grid_point, cfg)))
                continue
            seen[key] = (plan, number)
            runs.append(plan)
            configs[name] = cfg
    _refuse_shared_run_dirs(runs)
    return SweepPlan(runs=runs, dropped=dropped, grid=union, configs=configs, seeds=seeds)


def _refuse_replaced_axes(pair_grid: dict[str, Any], papers: bool, model: str, task: str,
                          overrides: list[str], data_args: list[str],
                          data_root: str | Path | None) -> None:
    """Refuses a grid axis whose key a later argument of every run sets again: a dotted override
    after -- or a --data-root file (each run's arguments are the grid point, then --data-root's
    files, then the overrides; the last value of a key is the one kept). Every run then trained
    with that one value under a folder named for another, and the rest were dropped as its
    duplicates. A --config file's key is no such case: the file is below every dotted key, so
    the grid point wins over it, as in `train`. (The batch axis' keys and --seeds' train.seed
    are refused before this, with their own reasons.)"""
    axis = f"the paper's grid for {model} on {task} has" if papers else "--grid has"
    other = ("give --grid without it (or --no-grid)" if papers else "the axis")
    for key in pair_grid:
        if _given_key(overrides, key):
            raise ConfigError(key, f"{axis} the axis {key}, but --{key} after -- comes after the "
                              "grid point in each run's arguments and wins: every run would train "
                              f"with that one value under a folder named for another; drop "
                              f"--{key} after --, or {other}")
        if _given_key(data_args, key):
            raise ConfigError(key, f"{axis} the axis {key}, but --data-root {data_root} sets "
                              f"{key} of every run to {task}'s file, after the grid point: every "
                              "run would read that one file under a folder named for another; "
                              f"drop --data-root, or {other}")


def _refuse_shared_run_dirs(runs: list[RunPlan]) -> None:
    """Two different runs must not train into one folder (the second would resume the first's
    checkpoints). Folder names replace unsafe characters by '+', so distinct values can meet."""
    by_dir: dict[str, RunPlan] = {}
    for run in runs:
        other = by_dir.setdefault(run.run_dir, run)
        if other is not run:
            raise ConfigError("--grid", f"grid points {describe_grid_point(other.grid_point)} and "
                              f"{describe_grid_point(run.grid_point)} of {run.model} on "
                              f"{run.task} would share the run folder {run.run_dir} (characters "
                              "other than letters, digits, '.', '+' and '-' become '+'); make "
                              "the values differ in those characters")


def plan_runs(root: str | Path, pairs: list[tuple[str, str]], grid: dict[str, list[str]] | None,
              overrides: list[str], data_root: str | Path | None = None,
              world_size: int = 1, seeds: list[str] | None = None) -> list[RunPlan]:
    """The runs of `plan_sweep` (duplicates dropped)."""
    return plan_sweep(root, pairs, grid, overrides, data_root, world_size, seeds=seeds).runs


def check_overrides(overrides: list[str], *, allow_config: bool = False) -> None:
    """Train overrides after `--` must be dotted options (`--optim.lr 3e-5`, `--train.epochs=3`),
    and, where `allow_config` (a new training run of `submit` or `sweep`), one `--config FILE`
    and none of the keys the planner sets for every run (`check_fixed_overrides`)."""
    if allow_config:
        _, overrides = split_config(overrides)
    i = 0
    while i < len(overrides):
        arg = overrides[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise ConfigError(arg, "train overrides after -- must be dotted options such as "
                              "--optim.lr 3e-5")
        if "=" in arg:
            i += 1
            continue
        if i + 1 >= len(overrides):
            raise ConfigError(arg[2:], "missing value")
        i += 2
    if allow_config:
        check_fixed_overrides(overrides)


def check_sweep_dir(sweep_dir: Path, runs: list[RunPlan]) -> None:
    """Refuses a folder that holds a submitted sweep (an unsubmitted plan, left by a failed
    sbatch, is submitted into again), or run folders with results already in them
    (or a file where one goes), and one inside another sweep or a run folder (its runs would
    write into that run's files, as a `--run-dir` there did). cli.cmd_sweep checks the sweep
    folder itself before planning."""
    for above in sweep_dir.parents:
        held = ([SWEEP_MANIFEST] if (above / SWEEP_MANIFEST).exists() else []) + \
            _run_files_in(above)
        if held:
            raise ConfigError("--sweep-dir", f"{sweep_dir} lies inside the "
                              f"{'sweep' if SWEEP_MANIFEST in held else 'run folder'} {above} "
                              f"({', '.join(held)}); choose a folder outside it")
    manifest = sweep_dir / SWEEP_MANIFEST
    if manifest.exists():
        try:
            previous = load_manifest(manifest)
        except ConfigError:
            raise ConfigError("--sweep-dir", f"{sweep_dir} holds a {SWEEP_MANIFEST} that is not "
                              "a seq2seq-es sweep; choose another folder") from None
        if previous.submitted:
            raise ConfigError("--sweep-dir", f"{sweep_dir} already holds a submitted sweep "
                              f"({len(previous.runs)} runs): `seq2seq-es slurm status "
                              f"{sweep_dir}` shows it and `seq2seq-es slurm resume {sweep_dir}` "
                              "submits its unfinished runs again; choose another folder for a "
                              "new sweep")
    # What a submission whose sbatch failed leaves behind (the plan and each run's config copy):
    # the same command, corrected, may submit into it again.
    unsubmitted = manifest.exists()
    # Anything else in the folder is not ours: the runs, sweep.json and collect's results.*
    # would be written in among it (a results.md of the user's was replaced by collect's).
    ours = {SWEEP_MANIFEST, SUBMITIT_DIR} | {Path(run.run_dir).name for run in runs}
    if unsubmitted:
        ours |= {Path(run.run_dir).name for run in previous.runs}
    left = sorted(path.name for path in sweep_dir.iterdir()) if sweep_dir.is_dir() else []
    foreign = [name for name in left if name not in ours]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5
                                          else "")
        raise ConfigError("--sweep-dir", f"{sweep_dir} is not empty and holds no sweep of "
                          f"seq2seq-es ({shown}); give a new or empty folder for the sweep")
    for run in runs:
        run_dir = Path(run.run_dir)
        # A file where a run's folder goes: the emptiness check below reads it as no folder.
        check_folder("--sweep-dir", str(run_dir))
        left = {path.name for path in run_dir.iterdir()} if run_dir.is_dir() else set()
        if left and not (unsubmitted and left <= {run_files.SUBMITTED_CONFIG}):
            raise ConfigError("--sweep-dir", f"run folder {run_dir} is not empty; choose another "
                              "sweep folder")


def check_run_dir(run_dir: Path) -> None:
    """Refuses a folder where a new job would train over something else: a sweep or one of its
    runs (a job trained a finished sweep run on under other arguments, and collect then left it
    out), another job's run, or a run's files (train goes on from them under the new
    arguments); a folder inside any of those (a run's exported `final/` got the job's files and
    checkpoints); a folder holding files of the user's (the run's files would go in among
    them); and a path that is a file or lies under one (the dry run printed a script whose job
    could never make the folder)."""
    check_folder("--run-dir", str(run_dir))
    if (run_dir / SWEEP_MANIFEST).exists():
        raise ConfigError("--run-dir", f"{run_dir} is a sweep folder ({SWEEP_MANIFEST}); choose "
                          "a new folder for the run")
    for above in run_dir.parents:  # a sweep first: its runs go on through it
        if (above / SWEEP_MANIFEST).exists():
            where = "is in" if above == run_dir.parent else "lies inside"
            raise ConfigError("--run-dir", f"{run_dir} {where} the sweep {above}, whose runs "
                              f"go on only through `seq2seq-es slurm resume {above}`; "
                              "choose a folder outside it")
    for above in run_dir.parents:
        held = _run_files_in(above)
        if held:
            raise ConfigError("--run-dir", f"{run_dir} lies inside the run folder {above} "
                              f"({', '.join(held)}); choose a folder outside it")
    if (run_dir / RUN_MANIFEST).exists():
        previous = load_manifest(run_dir / RUN_MANIFEST)
        if previous.submitted:
            raise ConfigError("--run-dir", _earlier_job_message(run_dir, previous))
    held = [name for name in (run_files.CONFIG, run_files.CHECKPOINTS, run_files.FINAL_RESULTS)
            if (run_dir / name).exists()]
    if held:
        raise ConfigError("--run-dir", f"{run_dir} holds a run already ({', '.join(held)}): a "
                          "job would train on from it under the new arguments; choose another "
                          "folder")
    # What a submission whose sbatch failed leaves (its unsubmitted manifest, the config copy,
    # submitit's folder): the same command, corrected, may submit into it again. Anything else
    # is not ours: the run would write its files in among them.
    left = sorted(path.name for path in run_dir.iterdir()) if run_dir.is_dir() else []
    ours = {RUN_MANIFEST, run_files.SUBMITTED_CONFIG, SUBMITIT_DIR}
    if left and not ((run_dir / RUN_MANIFEST).is_file() and set(left) <= ours):
        shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
        raise ConfigError("--run-dir", f"{run_dir} is not empty and holds no run of seq2seq-es "
                          f"({shown}); give a new or empty folder for the run")


def _run_files_in(folder: Path) -> list[str]:
    """The files that make `folder` a run folder (a job's manifest, a finished run's results),
    or []. A config.yaml counts only beside the engine's other files: a project folder may
    hold a config.yaml of its own, with its runs below it."""
    held = [name for name in (RUN_MANIFEST, run_files.FINAL_RESULTS, run_files.DONE)
            if (folder / name).is_file()]
    if (folder / run_files.CONFIG).is_file() and any(
            (folder / name).exists() for name in (run_files.METRICS, run_files.CHECKPOINTS,
                                                  run_files.VERSIONS)):
        held.append(run_files.CONFIG)
    return held


def _earlier_job_message(run_dir: Path, previous: Manifest) -> str:
    """Why a folder that a job was submitted to takes no new one, with the job's state where
    known (a finished job's folder read as one still running), and what goes on with it."""
    job_id = previous.runs[0].job_id if previous.runs else None
    if (run_dir / run_files.DONE).is_file():
        return (f"{run_dir} holds the run of job {job_id}, which has finished (DONE); "
                f"`seq2seq-es slurm status {run_dir}` shows it. "
                f"{finished_run_further([str(run_dir)])} Choose another folder for a new run")
    try:
        known = queries.query_slurm([job_id] if job_id else []).get(job_id)
    except (OSError, subprocess.SubprocessError):
        known = None
    state = f"job {job_id} ({known.state})" if known else f"job {job_id} (submitted earlier)"
    when = " once its job has ended" if known is None or known.state in ACTIVE_STATES else ""
    return (f"{run_dir} holds the run of {state}; `seq2seq-es slurm status {run_dir}` shows "
            f"it, and `seq2seq-es slurm resume {run_dir}` continues it{when} (with new "
            "resources or train arguments, if given); choose another folder for a new run")


def finished_run_further(run_dirs: list[str]) -> str:
    """How a finished run trains further: `slurm resume` submits unfinished runs only, and
    `train` goes on from a finished run's last checkpoint under a longer schedule (the engine
    removes its DONE and final results until it finishes again). run_dirs: the finished runs."""
    config = (f"{Path(run_dirs[0]) / run_files.CONFIG}" if len(run_dirs) == 1 else
              f"RUN/{run_files.CONFIG}")
    which = "" if len(run_dirs) == 1 else f" with RUN the run's folder (e.g. {run_dirs[0]})"
    return (f"To train a finished run further, run `seq2seq-es train --config {config} "
            f"--train.max_steps N` (or a larger --train.epochs){which}: it continues from its "
            "last checkpoint under the longer schedule, where the command is started (not as a "
            "SLURM job).")


# ---- SLURM -----------------------------------------------------------------------------------

def slurm_partitions() -> list[str]:
    """Partition names from `sinfo -h -o %P` (the default one is marked with * there)."""
    if shutil.which("sinfo") is None:
        raise SlurmUnavailableError("sinfo not found: SLURM client commands are needed to check "
                                    "the partition and to submit (or use --dry-run)")
    result = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise SlurmUnavailableError(f"sinfo failed: {result.stderr.strip() or result.returncode}")
    return [line.strip().rstrip("*") for line in result.stdout.splitlines() if line.strip()]


_GPU_GRES = re.compile(r"gpu(?::[A-Za-z0-9_.-]+)?:(\d+)")


def partition_gres() -> str | None:
    """`sinfo -h -o %P|%G` (partition|generic resources, per node group); None without sinfo."""
    if shutil.which("sinfo") is None:
        return None
    try:
        result = subprocess.run(["sinfo", "-h", "-o", "%P|%G"], capture_output=True, text=True,
                                timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def gpu_warning(gpus_per_node: int, partition: str | None, sinfo_gres: str | None) -> str | None:
    """Why a job without GPUs may not be what was meant, or None.

    sinfo_gres: partition_gres()'s text (None: SLURM could not be asked). No --gpus-per-node (0)
    means CPU training: worth a warning when the partition (given, or SLURM's default) has GPUs,
    or when a partition is given and SLURM cannot say whether it has any.
    """
    if gpus_per_node > 0:
        return None
    advice = "pass --gpus-per-node N (one task per GPU) to train on GPUs"
    if sinfo_gres is None:
        if partition is None:
            return None
        return (f"no --gpus-per-node: the job on partition '{partition}' trains on CPUs (sinfo "
                f"could not say whether the partition has GPUs); {advice}")
    gres: dict[str, list[str]] = {}
    default = None
    for line in sinfo_gres.splitlines():
        name, sep, value = line.strip().partition("|")
        if not sep:
            continue
        if name.endswith("*"):
            name = name[:-1]
            default = name
        gres.setdefault(name, []).append(value.strip())
    chosen = partition or default
    gpu_gres = [value for value in gres.get(chosen, []) if _GPU_GRES.search(value)]
    if not gpu_gres:
        return None
    most = max(sum(int(n) for n in _GPU_GRES.findall(value)) for value in gpu_gres)
    which = f"partition '{chosen}'" + ("" if partition else " (SLURM's default)")
    return (f"no --gpus-per-node: the job trains on CPUs, but {which} has nodes with {most} "
            f"GPU{'s' if most > 1 else ''} ({', '.join(sorted(set(gpu_gres)))}); {advice}")


def check_partition(partition: str | None, *, required: bool,
                    origin: tuple[str, str] = ("slurm.partition", "")) -> None:
    """Refuses a partition SLURM does not know. Without sinfo it fails only when `required`;
    a dry run (not `required`) is told in a warning: its script may be meant for another
    cluster (the README's `--partition gpu` example on a login node's test cluster).
    `origin`: the name the refusal gives (the flag, or the config key) and where it was set."""
    if partition is None:
        return
    try:
        known = slurm_partitions()
    except SlurmUnavailableError:
        if required:
            raise
        return
    if partition not in known:
        refused = ConfigError(origin[0], f"SLURM does not know partition '{partition}'; "
                              f"known partitions: {', '.join(known) or '(none)'}{origin[1]}")
        if required:
            raise refused
        print(f"warning: {refused}", file=sys.stderr)


def partition_nodes(partition: str | None) -> tuple[str, dict[str, int], dict[str, int | None]]:
    """(partition name, {node: GPUs}, {node: CPUs, None where sinfo gives no number}) from
    `sinfo`; the default partition when none is named."""
    if shutil.which("sinfo") is None:
        raise SlurmUnavailableError("sinfo not found: SLURM client commands are needed to check "
                                    "the node counts and to submit (or use --dry-run)")
    result = subprocess.run(["sinfo", "-h", "-N", "-o", "%N|%P|%G|%c"], capture_output=True,
                            text=True, timeout=60)
    if result.returncode != 0:
        raise SlurmUnavailableError(f"sinfo failed: {result.stderr.strip() or result.returncode}")
    by_partition: dict[str, dict[str, int]] = {}
    cpus_by_partition: dict[str, dict[str, int | None]] = {}
    default = None
    for line in result.stdout.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 4:
            continue
        node, name, gres, cpus = fields
        if name.endswith("*"):
            name = name[:-1]
            default = name
        gpus = sum(int(count) for count in _GPU_GRES.findall(gres))
        by_partition.setdefault(name, {})[node] = gpus
        cpus_by_partition.setdefault(name, {})[node] = int(cpus) if cpus.isdigit() else None
    chosen = partition or default
    if chosen is None:
        raise ConfigError("slurm.partition", "SLURM has no default partition: name one with "
                          "--partition")
    if chosen not in by_partition:
        raise ConfigError("slurm.partition", f"SLURM does not know partition '{chosen}'; known "
                          f"partitions: {', '.join(sorted(by_partition)) or '(none)'}")
    return chosen, by_partition[chosen], cpus_by_partition[chosen]


def check_cluster_size(node_counts: list[int], gpus_per_node: int, partition: str,
                       nodes: dict[str, int]) -> None:
    """Refuses node counts the partition cannot hold (with the GPUs asked for, when any)."""
    usable = [name for name, gpus in nodes.items() if gpus >= gpus_per_node]
    largest = max(node_counts)
    if largest > len(nodes):
        raise ConfigError("--nodes", f"{largest} nodes asked, but partition '{partition}' has "
                          f"{len(nodes)} ({', '.join(sorted(nodes))})")
    if gpus_per_node > 0 and largest > len(usable):
        raise ConfigError("--gpus-per-node", f"{largest} node(s) with {gpus_per_node} GPU(s) each "
                          f"asked, but partition '{partition}' has {len(usable)} such node(s)")


def check_node_count(config: SlurmConfig, *, required: bool) -> None:
    """Refuses a job the partition cannot hold: more nodes than it has, or than it has with the
    GPUs, tasks and CPUs asked per node. Such a job never starts, and looked like any pending
    job (`--nodes 3` on a two-node cluster, `--tasks-per-node 4` on 1-CPU nodes), or sbatch's
    "Invalid generic resource (gres) specification" named no option. Without sinfo it fails
    only when `required`; a dry run (not `required`) is refused more nodes than the partition
    has, and told (a warning) what else would keep its job from starting here: its script may
    be meant for another cluster."""
    try:
        name, gpus, cpus = partition_nodes(config.partition)
    except SlurmUnavailableError:
        if required:
            raise
        return
    except ConfigError:  # a partition sinfo does not list: check_partition has said so
        if required:
            raise
        return
    check_cluster_size([config.nodes], 0, name, gpus)
    try:
        _check_node_shape(config, name, gpus, cpus)
    except ConfigError as refused:
        if required:
            raise
        print(f"warning: {refused}", file=sys.stderr)


def _check_node_shape(config: SlurmConfig, name: str, gpus: dict[str, int],
                      cpus: dict[str, int | None]) -> None:
    check_cluster_size([config.nodes], config.gpus_per_node, name, gpus)
    per_task = config.cpus_per_task or 1
    needed = config.ntasks_per_node * per_task
    fitting = [node for node, count in cpus.items()
               if gpus[node] >= config.gpus_per_node and (count is None or count >= needed)]
    if len(fitting) < config.nodes:
        largest = max((count for count in cpus.values() if count is not None), default=0)
        flag = "--cpus-per-task" if config.cpus_per_task else (
            "--tasks-per-node" if config.tasks_per_node is not None else "--gpus-per-node")
        raise ConfigError(flag, f"{config.nodes} node(s) with {config.ntasks_per_node} task(s) x "
                          f"{per_task} CPU(s) = {needed} CPUs each asked, but partition "
                          f"'{name}' has {len(fitting)} such node(s) (its largest has "
                          f"{largest} CPUs): the job would wait for ever")


def new_manifest(mode: str, runs: list[RunPlan], grid: dict[str, list[str]], config: SlurmConfig,
                 submitit_folder: Path, entry: str, overrides: list[str],
                 max_parallel: int | None, seeds: list[str] | None = None) -> Manifest:
    return Manifest(kind=MANIFEST_KIND, mode=mode, runs=runs, grid=grid, slurm=config.to_dict(),
                    submitit_folder=str(submitit_folder), entry=entry, overrides=list(overrides),
                    max_parallel=max_parallel, created=round(time.time(), 3),
                    seeds=[int(seed) for seed in seeds or []])


def dry_run_script(config: SlurmConfig, manifest: Manifest) -> str:
    array_size = len(manifest.runs) if len(manifest.runs) > 1 else None
    return render_sbatch(config, manifest.submitit_folder, array_size=array_size,
                         array_parallelism=manifest.max_parallel)


def require_slurm_clients() -> None:
    for command in ("sbatch", "srun"):
        if shutil.which(command) is None:
            raise SlurmUnavailableError(f"{command} not found: submitting needs the SLURM client "
                                        "commands (--dry-run prints the script without them)")


def snapshot_config(argv: list[str], run_dir: Path) -> list[str]:
    """The train arguments with their `--config` file copied into the run folder and pointed at
    there: a requeued job starts `train` again, which would read the file as it is then (an edit
    made while the job waits would change the run half-way, unrecorded)."""
    config_file, rest = split_config(argv)
    if config_file is None:
        return list(argv)
    copy = run_dir / run_files.SUBMITTED_CONFIG
    if Path(config_file).absolute() != copy.absolute():  # `resume` submits the copy again
        shutil.copyfile(config_file, copy)
    return [*rest, CONFIG_OPTION, str(copy.absolute())]


def drop_unplanned_run_folders(manifest_path: Path, runs: list[RunPlan]) -> None:
    """Removes the run folders that an earlier plan in this folder made but whose sbatch failed,
    where the new plan has no such run (the same command corrected with fewer pairs or grid
    points): left, they looked like runs of the sweep to anyone listing it. Only a folder
    holding nothing but what `submit` wrote there (the config copy) goes; check_sweep_dir has
    refused a submitted plan already."""
    if not manifest_path.is_file() or manifest_path.name != SWEEP_MANIFEST:
        return
    previous = load_manifest(manifest_path)
    if previous.submitted:
        return
    planned = {Path(run.run_dir).absolute() for run in runs}
    for run in previous.runs:
        run_dir = Path(run.run_dir).absolute()
        if run_dir in planned or not run_dir.is_dir():
            continue
        held = list(run_dir.iterdir())
        if all(path.name == run_files.SUBMITTED_CONFIG and path.is_file() for path in held):
            for path in held:
                path.unlink()
            run_dir.rmdir()


def train_jobs(manifest: Manifest, config: SlurmConfig,
               runs: list[RunPlan] | None = None) -> list[TrainJob]:
    """What each task of the submitted job (or array) runs: for `runs` (default: all of them)."""
    return [TrainJob(run.argv, run_dir=run.run_dir, entry=manifest.entry,
                     max_requeues=config.max_requeues)
            for run in (manifest.runs if runs is None else runs)]


def submit(manifest: Manifest, config: SlurmConfig, manifest_path: Path) -> Manifest:
    """Submits every run (one job, or one job array with at most max_parallel running at once).

    The manifest is written before submitting (so a failed sbatch leaves the plan to inspect) and
    again with the job ids.
    """
    require_slurm_clients()
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    with submitting(manifest):
        if manifest_path.exists() and load_manifest(manifest_path).submitted:
            # checked before the plan was shown, and since submitted by another command
            option = "--sweep-dir" if manifest.mode == "sweep" else "--run-dir"
            raise ConfigError(option, f"{manifest_path.parent} was submitted meanwhile by "
                              "another command (two at once); nothing more was submitted: "
                              f"`seq2seq-es slurm status {manifest_path.parent}` shows it")
        drop_unplanned_run_folders(manifest_path, manifest.runs)
        for run in manifest.runs:
            Path(run.run_dir).mkdir(parents=True, exist_ok=True)
            run.argv = snapshot_config(run.argv, Path(run.run_dir))
        manifest.write(manifest_path)
        submit_runs(manifest, manifest.runs, config)
        manifest.submitted = True
        manifest.write(manifest_path)
    return manifest


def check_not_resubmitted(manifest: Manifest, runs: list[RunPlan]) -> None:
    """Refused (ConfigError) when the manifest on disk gives one of `runs` another job than
    `manifest` does: another `slurm resume` submitted it since they were chosen. Under
    `submitting`."""
    on_disk = {run.name: run.job_id for run in load_manifest(manifest.path).runs}
    moved = [run for run in runs if on_disk.get(run.name) != run.job_id]
    if moved:
        raise ConfigError("SWEEP", f"run {moved[0].name} got job {on_disk.get(moved[0].name)} "
                          "meanwhile from another command (two resumes at once); nothing was "
                          f"submitted: `seq2seq-es slurm status {Path(manifest.path).parent}` "
                          "shows it")


SUBMITTING_LOCK = ".submitting.lock"


@contextlib.contextmanager
def submitting(manifest: Manifest):
    """Held while a command submits jobs for `manifest` (in its submitit folder, which every
    command of that sweep or run writes to): two sweeps into one new folder both submitted,
    and two resumes both gave a run a job, as each checked before the other had written (a
    concurrency audit). Waits for the other to end; the caller then checks again. A file
    system without locks is not guarded, as before."""
    folder = Path(manifest.submitit_folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / SUBMITTING_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            if not locked_now(fd):  # said, rather than a silent wait
                print(f"waiting for another command submitting into {folder} "
                      f"({folder / SUBMITTING_LOCK})", file=sys.stderr, flush=True)
                locked_now(fd, wait=True)
        except OSError:
            pass  # a file system without locks
        yield
    finally:
        os.close(fd)  # drops the lock


def submit_runs(manifest: Manifest, runs: list[RunPlan], config: SlurmConfig) -> None:
    """sbatch `runs` (of `manifest`) as one job, or one array; sets each run's job_id."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    jobs_callables = train_jobs(manifest, config, runs)
    executor = make_executor(config, manifest.submitit_folder,
                             array_parallelism=manifest.max_parallel)
    try:
        if len(jobs_callables) == 1:
            jobs = [executor.submit(jobs_callables[0])]
        else:
            jobs = executor.submit_array(jobs_callables)
    except FailedJobError as exc:  # sbatch's non-zero exit: no job
        raise SlurmUnavailableError(f"sbatch refused the job: {str(exc).strip()}; nothing was "
                                    "submitted (correct it and run the same command again)") \
            from None
    except FailedSubmissionError as exc:  # sbatch succeeded, its answer was not understood
        raise SlurmUnavailableError(f"sbatch's answer could not be read ({str(exc).strip()}); a "
                                    "job may have been submitted: look with squeue, and scancel "
                                    "it before running the command again") from None
    for run, job in zip(runs, jobs):
        run.job_id = str(job.job_id)


# SLURM states in which a job may still train: its run must not get a second job.
ACTIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED",
                 "RESIZING", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED",
                 "SPECIAL_EXIT", "RESV_DEL_HOLD")


def runs_to_resume(manifest: Manifest,
                   states: dict[str, Any]) -> tuple[list[RunPlan], list[tuple[RunPlan, str]]]:
    """The runs of a submitted manifest to submit again: those that have not finished (no DONE)
    and have no job that may still train (two jobs would write one run folder), nor a process
    training in their folder now (its train.lock: a job of a resume the manifest no longer
    tracks); and those left as they are for such a job, with its state. A cancelled run is
    resumed while the rest of its sweep still trains; when every unfinished run has a job,
    that is refused."""
    if not manifest.submitted:
        raise ConfigError("SWEEP", f"{manifest.path} was never submitted; submit it instead")
    unfinished = [run for run in manifest.runs
                  if not (Path(run.run_dir) / run_files.DONE).exists()]
    active = [(run, states[run.job_id].state) for run in unfinished
              if run.job_id in states and states[run.job_id].state in ACTIVE_STATES]
    for run in unfinished:  # a job the manifest does not track (another resume's) trains it
        if all(run is not busy for busy, _ in active):
            holder = training_now(Path(run.run_dir))
            if holder is not None:
                active.append((run, f"{TRAINED_ELSEWHERE} ({describe_holder(holder)}), not by "
                                    f"its job {run.job_id}"))
    resumable = [run for run in unfinished if all(run is not busy for busy, _ in active)]
    if active and not resumable:
        run, state = active[0]
        more = f" (and {len(active) - 1} more run(s))" if len(active) > 1 else ""
        raise ConfigError("SWEEP", f"run {busy_text(run, state)}{more}; wait for it to end, "
                          "or scancel it, before resuming")
    return resumable, active


# A run whose folder a process the manifest does not track trains in (runs_to_resume's state).
TRAINED_ELSEWHERE = "is trained now by another process"


def busy_text(run: RunPlan, state: str, *, listed: bool = False) -> str:
    """A run left for a job that may still train it (`runs_to_resume`): 'NAME still has job J
    (RUNNING)' (a refusal), or 'NAME (job J, RUNNING)' when `listed` (resume's listing); or
    either way 'NAME is trained now by another process (...)'."""
    if state.startswith(TRAINED_ELSEWHERE):
        return f"{run.name} {state}"
    if listed:
        return f"{run.name} (job {run.job_id}, {state})"
    return f"{run.name} still has job {run.job_id} ({state})"


# Keys a resumed run keeps: they say which run it is and where it writes.
RESUME_FIXED_KEYS = ("data.task", "model.name", "train.output_dir", "train.resume")
STEP_KEYS = ("train.batch_size", "train.grad_accum")


def resumed_argv(run: RunPlan, overrides: list[str],
                 ranks: tuple[int, int]) -> tuple[list[str], list[str]]:
    """The train arguments `slurm resume` submits run `run` with, and one line per config key
    they change: the run's own arguments with `overrides` (dotted options) in place of the same
    keys, and, on another number of ranks (`ranks`: the submitted and the new), the
    train.grad_accum that keeps the examples of a step (a resume on another step size is
    refused by the checkpoint; a sweep's batch axis is the step's size). Composed and checked
    as at submission, so a bad key or value is refused before sbatch."""
    from ..config import parse_overrides

    given = parse_overrides(overrides)
    for key in given:
        if key in RESUME_FIXED_KEYS:
            raise ConfigError(key, f"run {run.name} keeps its {key} when resumed (it says which "
                              "run it is and where it writes); submit a new run for another")
        if key == SEED_AXIS and key in run.grid_point \
                and not _same_value(given[key], run.grid_point[key]):
            raise ConfigError(key, f"run {run.name} is seed {run.grid_point[key]} of its grid "
                              "point, and collect averages the seeds the runs are named for; "
                              "another seed is another run: submit a new sweep for it")
        # A grid axis names the run's point (collect leaves out a run whose config left its
        # point); the batch axis is the step's size, which the checks below keep.
        if key in run.grid_point and key not in STEP_KEYS \
                and not _same_value(given[key], run.grid_point[key]):
            raise ConfigError(key, f"is an axis of the sweep's grid: run {run.name} is the point "
                              f"{key}={run.grid_point[key]}, and another value is another "
                              "point; submit a new sweep for it")
    before = compose_run(run.task, run.model, run.argv[4:])
    argv = list(run.argv)
    for key, value in given.items():
        argv = _without_key(argv, key) + [f"--{key}", value]
    # An accumulation given is checked; a micro-batch given alone gets the accumulation that
    # keeps the step (it was refused, naming train.grad_accum, which the user had not given).
    explicit = "train.grad_accum" in given
    batch_given = "train.batch_size" in given
    saved = bool(run_files.complete_checkpoints(Path(run.run_dir) / run_files.CHECKPOINTS))
    after = compose_run(run.task, run.model, argv[4:])
    # On the same ranks a new step size matters only to a checkpoint (which would refuse it
    # once the job had waited in the queue); on other ranks the step is kept in any case.
    if ranks[0] != ranks[1] or ((explicit or batch_given) and saved):
        split = _step_keeping_accum(run, before, after, explicit, ranks, batch_given)
        if split is not None:
            batch, accum = split
            if batch is not None:
                argv = _without_key(argv, "train.batch_size") + ["--train.batch_size", str(batch)]
            argv = _without_key(argv, "train.grad_accum") + ["--train.grad_accum", str(accum)]
            after = compose_run(run.task, run.model, argv[4:])
    argv = pinned_paths(argv, after)
    old, new = (run_files.flat_run_config(asdict(cfg)) for cfg in (before, after))
    return argv, [f"{key} {old.get(key)} -> {new.get(key)}" for key in sorted(set(old) | set(new))
                  if old.get(key) != new.get(key)]


def _same_value(given: str, planned: str) -> bool:
    """3e-5 and 0.00003 are one grid value (numbers compare as numbers)."""
    try:
        return float(given) == float(planned)
    except ValueError:
        return given == planned


def _step_units(cfg) -> tuple[int, str]:
    """What one rank adds to a step, and its name (config.StepUnit, as checkpoint.data_layout
    counts a step)."""
    unit = cfg.train.step_unit()
    return unit.per_rank_value(cfg.train), unit.per_rank


def _step_keeping_accum(run: RunPlan, before, current, explicit: bool,
                        ranks: tuple[int, int], batch_given: bool = False
                        ) -> tuple[int | None, int] | None:
    """(train.batch_size or None to keep it, train.grad_accum) that keep run `run`'s step
    (`before`: as submitted) with the resumed config `current` on the new ranks; None where it
    already does. A micro-batch the user did not give is lowered to the largest that divides a
    rank's share (batch 2 on twice the ranks: 1 x 1). Refuses what cannot keep the step."""
    old_ranks, new_ranks = ranks
    old_units, per_rank = _step_units(before)
    step = old_units * old_ranks
    what = before.train.step_unit().counts
    units, _ = _step_units(current)
    if units * new_ranks == step:
        return None
    if explicit:
        raise ConfigError("train.grad_accum", f"run {run.name} takes {step} {what} a step "
                          f"({per_rank} = {old_units} on each of {old_ranks} ranks); on "
                          f"{new_ranks} ranks {per_rank} must be {step / new_ranks:g}, not "
                          f"{units} (its checkpoints resume with the same step only; a new "
                          "step size is a new run)")
    unit = current.train.batch_size if current.train.batching == "fixed" else 1
    if step % new_ranks:
        raise ConfigError("--nodes", f"run {run.name} takes {step} {what} a step, which "
                          f"{new_ranks} ranks cannot share evenly; choose nodes and tasks per "
                          f"node whose ranks divide {step}")
    share = step // new_ranks
    if share % unit:
        if batch_given:
            raise ConfigError("train.batch_size", f"run {run.name} takes {step} {what} a step, "
                              f"{share} on each of {new_ranks} ranks, which train.batch_size "
                              f"{unit} does not divide; give one that divides {share}")
        micro = max(d for d in range(1, unit + 1) if share % d == 0)
        return micro, share // micro
    return None, share // unit
