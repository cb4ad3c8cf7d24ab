"""`seq2seq-es train`'s arguments and run, below the command line: `cli.cmd_train` and the demo
both call `train_main`, so neither imports the other.

Imports stay inside the functions: `seq2seq_es.cli` imports this module at start-up, and commands
such as `score` must not pay for torch or the config registry.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

from .. import run_files


def parse_train_args(argv: list[str], prog: str = "seq2seq-es train"
                     ) -> tuple[argparse.Namespace, dict[str, str]]:
    """`train`'s arguments (and `config`'s, whose `prog` names it in argparse's usage line)."""
    from ..config import command_flags, parse_overrides

    # The help is generated from the config dataclasses (config_help.train_help), not argparse's.
    # allow_abbrev=False: "--ta sqac" must not silently be a second --task
    parser = argparse.ArgumentParser(prog=prog, add_help=False, allow_abbrev=False)
    parser.add_argument("-h", "--help", action="store_true")
    parser.add_argument("--task")
    parser.add_argument("--model")
    # type=expanduser: the shell leaves `--config=~/run.yaml` alone
    parser.add_argument("--config", type=os.path.expanduser,
                        help="YAML file with sections model, data, optim, train, dist, gen")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    for flag in ("--task", "--model", "--config"):
        given = [arg for arg in argv if arg == flag or arg.startswith(flag + "=")]
        if len(given) > 1:  # argparse would keep the last one silently
            from ..errors import ConfigError
            raise ConfigError(flag, f"given {len(given)} times; give it once")
    known, rest = parser.parse_known_args(argv)
    return known, parse_overrides(rest, command_flags(parser))


def build_config(argv: list[str]):
    from ..config import compose

    known, overrides = parse_train_args(argv)
    require_pair(known, overrides)
    from_launcher = {}
    # Only accelerate's variables say anything there: without them, no torch import (a config
    # mistake is said in a fraction of a second)
    if any(name.startswith("ACCELERATE_") for name in os.environ):
        from .distributed import launcher_overrides
        from_launcher = launcher_overrides()
    note_launcher_overridden(from_launcher, overrides)
    merged = {**from_launcher, **overrides}
    if from_launcher:  # before compose, which may refuse a value accelerate's file brought
        note_launcher_replaces(known, overrides, from_launcher, merged)
    cfg = compose(task=known.task, model=known.model, config_file=known.config, overrides=merged)
    note_settings(cfg, known, overrides)
    note_another_runs_folder(cfg, known, overrides)
    return cfg


def note_another_runs_folder(cfg, known: argparse.Namespace, overrides: dict[str, str]) -> None:
    """`--config COPY/config.yaml` of a run folder copied or moved: its train.output_dir still
    names the original folder, where the run goes on (it resumed and finished the original,
    while the user meant the copy). Said once; --train.output_dir chooses."""
    from ..config import first_launched_process

    if not known.config or "train.output_dir" in overrides or not first_launched_process():
        return
    here = Path(known.config).resolve().parent
    if Path(known.config).name != run_files.CONFIG or not (here / run_files.METRICS).exists():
        return  # not a run's own config.yaml
    if Path(cfg.train.output_dir).resolve() != here:
        print(f"note: {known.config} is the config of the run folder {here}, but its "
              f"train.output_dir is {cfg.train.output_dir}: this run goes there "
              f"(--train.output_dir {here} trains in the folder of the file)", file=sys.stderr)


def note_launcher_replaces(known: argparse.Namespace, overrides: dict[str, str],
                           from_launcher: dict[str, str], merged: dict[str, str]) -> None:
    """accelerate's config file sits above the --config run file and the pair's defaults: say
    where it replaces one of theirs (a run file's dist.zero_stage 2 trained at the zero3.yaml's
    3, and the `gradient_accumulation_steps: 1` that `accelerate config` writes dropped WMT13's
    accumulation of 4, the paper's step, without a word). Its values over the dataclass
    defaults are what the file is for, and go unsaid."""
    from ..config import apply_mapping, first_launched_process
    from ..config_help import resolve
    from ..errors import Seq2SeqEsError

    if not first_launched_process():
        return
    try:
        without = resolve(known.task, known.model, known.config, overrides)
        with_launcher = copy.deepcopy(without.cfg)
        apply_mapping(with_launcher, {key: merged[key] for key in from_launcher})
    except Seq2SeqEsError:
        return  # the composition proper says what is wrong
    for key in from_launcher:
        layer = without.sources.get(key)
        old, new = _value(without.cfg, key), _value(with_launcher, key)
        if key in overrides or layer is None or old == new:
            continue
        where = known.config if layer == "--config" else f"the defaults of {layer}"
        print(f"note: {key} {new} from accelerate's config file replaces the {old} of {where} "
              f"(--{key} VALUE on the command line wins over both)", file=sys.stderr)


def note_settings(cfg, known: argparse.Namespace, overrides: dict[str, str]) -> None:
    """The notes on a composed config, said by `train` and by `config` alike: `config` is where
    a user checks a run before starting it, and said nothing of a key the run would not read
    or of a pair the paper never ran."""
    from ..config import (compose, load_yaml, note_default_accumulation, note_not_read,
                          note_scored_on_training_data, own_task_keys)

    # A setting the user gave that this run never reads (an LED option on BART, epochs under
    # max_steps): said once, not refused (a shared run file may hold settings for other models).
    # A run file counts where it changes a value: `seq2seq-es config` output fed back with
    # --config (or a shipped run file) restates every default, and is no choice of the user's.
    given = set(overrides)
    if known.config:
        defaults = compose(task=cfg.data.task, model=cfg.model.name,
                           overrides=own_task_keys(cfg))
        for section, values in load_yaml(known.config).items():
            keys = [f"{section}.{key}" for key in values] if isinstance(values, dict) else [section]
            given |= {key for key in keys if _value(cfg, key) != _value(defaults, key)}
    note_not_read(cfg, given)
    note_default_accumulation(cfg, given)
    note_scored_on_training_data(cfg)
    note_pair_not_in_paper(cfg)
    note_model_path_of_another_model(cfg)


def note_model_path_of_another_model(cfg) -> None:
    """model.path an export of this package whose card names another registry model than
    model.name: the weights are that model's, while the run, its card and collect's table name
    model.name (barto-tiny's weights trained under --model barto sat in the table as BARTO)."""
    import sys

    from ..config import first_launched_process
    from .inference import read_export_card

    path = Path(os.path.expanduser(cfg.model.path)) if cfg.model.path else None
    if path is None or not path.is_dir() or not first_launched_process():
        return
    card = read_export_card(path)
    if card is None or card.model is None or card.model == cfg.model.name:
        return
    print(f"note: model.path {cfg.model.path} holds the weights of a {card.model} run (its "
          f"README.md says), trained here as model.name {cfg.model.name}, the name this run's "
          f"card and collect's table give it; --model.name {card.model} names it as it is",
          file=sys.stderr)


def note_pair_not_in_paper(cfg) -> None:
    """A paper model on a paper task it was not fine-tuned on (LEDO on MLSUM, BETO2BETO on
    WMT13): its settings are the task's defaults (and the registry's for the model), no run of
    the paper's, so a user comparing with the paper learns it here, once. Said for the registries' names only (tiny twins by
    their real model's), not for a user's own task."""
    import sys

    from ..config import first_launched_process
    from ..models import get_model_spec
    from ..slurm import paper_grid

    model, task = get_model_spec(cfg.model.name).base_name, cfg.data.task
    if (model not in paper_grid.PAPER_MODELS or task not in paper_grid.PAPER_TASKS
            or (model, task) in paper_grid.paper_pairs() or not first_launched_process()):
        return
    ran = [name for paper_model, name in paper_grid.paper_pairs() if paper_model == model]
    print(f"note: the paper did not fine-tune {model} on {task} (it ran {model} on "
          f"{', '.join(ran)}): this run's settings are this package's defaults for the pair, "
          "not the paper's (`seq2seq-es config` shows where each value comes from)", file=sys.stderr)


def note_launcher_overridden(from_launcher: dict[str, str], overrides: dict[str, str]) -> None:
    """The command line wins over accelerate's config file (its keys sit between YAML and the
    command line), as documented; said once, because a user who gave both meant one of them:
    `--dist.zero_stage 3` under a zero2.yaml trained at stage 3 without a word."""
    from ..config import first_launched_process

    if not first_launched_process():
        return
    for key, value in from_launcher.items():
        if key in overrides and overrides[key] != value:
            print(f"note: {key} {overrides[key]} from the command line replaces the {value} of "
                  "accelerate's config file", file=sys.stderr)


def require_pair(known: argparse.Namespace, overrides: dict[str, str]) -> None:
    """Refuse a command line that names no task or no model (by its flag, its dotted key or the
    --config file): the dataclass defaults (mlsum, barto-tiny) are no choice of the user's, and
    a run of them failed on the hub or trained the wrong pair."""
    from ..config import file_value, load_yaml
    from ..errors import ConfigError

    file_values = load_yaml(known.config) if known.config else {}
    for flag, key in (("--task", "data.task"), ("--model", "model.name")):
        in_file = file_value(file_values, key)
        # An empty name counts as given here: compose refuses it by its own key
        if all(value is None for value in (getattr(known, flag[2:]), overrides.get(key), in_file)):
            where = f"or {key} in {known.config}" if known.config else "or --config FILE"
            run_config = Path(overrides.get("train.output_dir") or "") / run_files.CONFIG
            if not known.config and overrides.get("train.output_dir") and run_config.is_file():
                # `--train.output_dir RUN --train.resume auto`: the run's own file names both
                where += f"; {run_config} holds that run's: --config {run_config}"
            raise ConfigError(flag, f"is required ({where})")


def _value(cfg, key: str):
    section, _, name = key.partition(".")
    return getattr(getattr(cfg, section, None), name, None)


def _interrupted_outside_the_steps() -> int:
    """A Ctrl-C where no stop handler is installed: the set-up (composing, imports, loading the
    model and the data, tokenizing, DeepSpeed's start), minutes on real data, or the upload after
    DONE. One line from the first process, not a traceback from every rank."""
    from ..config import first_launched_process
    from ..run_files import INTERRUPTED_EXIT_CODE

    if first_launched_process():
        print("\ninterrupted (Ctrl-C) outside the training steps (during the set-up, or the "
              "upload after DONE): no checkpoint was taken for it; --train.resume auto "
              "continues from the last one, if there is one", file=sys.stderr)
    return INTERRUPTED_EXIT_CODE


def train_main(argv: list[str]) -> int:
    """Compose the config of `seq2seq-es train ARGV` and train; the exit status (0, or the stop
    signal's: run_files.PREEMPTED_EXIT_CODE or INTERRUPTED_EXIT_CODE)."""
    from ..run_files import INTERRUPTED_EXIT_CODE

    try:
        cfg = build_config(argv)
        # After the config: a mistake in it is said in a fraction of a second, not after the
        # seconds that importing torch, transformers and DeepSpeed take.
        from .signals import InterruptedNow
        from .trainer import Stopped, train
    except KeyboardInterrupt:
        # A Ctrl-C in the first seconds (composing, importing transformers) was a traceback
        return _interrupted_outside_the_steps()
    try:
        train(cfg)
    except Stopped as stop:
        if stop.reports:
            print(str(stop), file=sys.stderr)
        return stop.exit_code
    except InterruptedNow as interrupted:  # a second Ctrl-C: said once, no traceback
        if interrupted.reports:
            print(f"\n{interrupted}", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    except KeyboardInterrupt:
        return _interrupted_outside_the_steps()
    except OSError as exc:
        from .storage import NO_ROOM, StorageError, checkpoint_kept, reason
        if exc.errno not in NO_ROOM:
            raise
        # Out of room in any other file of the run (metrics.jsonl, TensorBoard, the results):
        # one line naming it; checkpoints are written whole or not at all, so the newest stays.
        from ..run_files import CHECKPOINTS, complete_checkpoints
        where = exc.filename or cfg.train.output_dir
        saved = complete_checkpoints(Path(cfg.train.output_dir) / CHECKPOINTS)
        kept = checkpoint_kept(saved[-1][1].name) if saved else \
            "no checkpoint of this run was written"
        raise StorageError(f"{where} could not be written: {reason(exc, where)}; {kept}") from exc
    return 0
