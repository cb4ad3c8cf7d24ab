"""The SLURM options that `slurm submit`, `sweep` and `bench` share: the flags, the SlurmConfig
they make (a `--slurm-config` file, then the flags, which win), and the train overrides after `--`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import os
import re
import shlex
import sys
from typing import Any

from ..config import in_file
from ..errors import ConfigError
from .config import (SBATCH_FLAG_OPTIONS, SlurmConfig, load_slurm_yaml, owned_sbatch_message,
                     one_spelling_each, sbatch_key_message, sbatch_spelling)
from .job import DEFAULT_ENTRY

# flag -> SlurmConfig field, for the flags that map one to one
SLURM_FLAGS: dict[str, tuple[str, Any]] = {
    "nodes": ("nodes", int),
    "gpus_per_node": ("gpus_per_node", int),
    "tasks_per_node": ("tasks_per_node", int),
    "partition": ("partition", str),
    "account": ("account", str),
    "qos": ("qos", str),
    "constraint": ("constraint", str),
    "time": ("time_min", int),
    "mem_gb": ("mem_gb", float),
    "cpus_per_task": ("cpus_per_task", int),
    "max_requeues": ("max_requeues", int),
    "signal_delay_s": ("signal_delay_s", int),
    "job_name": ("job_name", str),
    "python": ("python", str),
}


def _default(field_name: str) -> Any:
    """SlurmConfig's default for a field (what a job gets without the flag or a --slurm-config
    file setting it)."""
    return {f.name: f.default for f in dataclasses.fields(SlurmConfig)}[field_name]


def add_slurm_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("SLURM options (override --slurm-config)")
    group.add_argument("--slurm-config", metavar="FILE", help="YAML with a slurm: section")
    group.add_argument("--nodes", type=int, help=f"(default {_default('nodes')})")
    group.add_argument("--gpus-per-node", type=int,
                       help=f"0: CPU; else one task per GPU (default {_default('gpus_per_node')})")
    group.add_argument("--tasks-per-node", type=int, help="CPU runs only (default 1)")
    group.add_argument("--partition", help="(default: SLURM's)")
    group.add_argument("--account", help="(default: SLURM's)")
    group.add_argument("--qos", help="(default: SLURM's)")
    group.add_argument("--constraint",
                       help="node features, as sbatch --constraint (default: any node)")
    group.add_argument("--time", type=int, metavar="MINUTES",
                       help=f"time limit per start (default {_default('time_min')})")
    group.add_argument("--mem-gb", type=float,
                       help="memory per node in GB (default: SLURM's)")
    group.add_argument("--cpus-per-task", type=int, help="(default: SLURM's)")
    group.add_argument("--max-requeues", type=int,
                       help=f"requeues a job may have in all (default {_default('max_requeues')}): "
                            "SLURM_RESTART_COUNT, which counts every requeue of the job id: its "
                            "own after a pre-emption or the time limit, the cluster's, and "
                            "`scontrol requeue`s by hand")
    group.add_argument("--signal-delay-s", type=int,
                       help="seconds before the time limit at which the job is told to save "
                            f"(default {_default('signal_delay_s')}); delay + 60 s must be shorter "
                            "than --time")
    group.add_argument("--job-name", help=f"(default {_default('job_name')})")
    group.add_argument("--python", help="python command on the nodes (default: this interpreter)")
    group.add_argument("--setup", action="append", default=[], metavar="LINE",
                       help="shell line run before the job starts (repeatable)")
    group.add_argument("--sbatch", action="append", default=[], metavar="OPTION=VALUE",
                       help="any other sbatch option, e.g. --sbatch mail-type=END (repeatable); "
                            "not one the options above set (time, nodes, signal, ...); "
                            "OPTION= (no value) drops one, e.g. the dependency a resume "
                            "carries over from the first submission")
    group.add_argument("--entry", default=DEFAULT_ENTRY, metavar="MODULE:FUNCTION", type=entry_spec,
                       help="training entry called with ['train', ...]; "
                            "seq2seq_es.slurm.probe:main checks a cluster without training "
                            f"(default {DEFAULT_ENTRY})")


# Keys whose refusal also depends on others: signal_delay_s is refused against time_min, which
# may be the file's while the delay is a flag's or the default.
_CHECKED_WITH = {"signal_delay_s": ("time_min",)}


# What job.resolve_entry imports on the nodes: a dotted module path, ':', a function name in it.
_ENTRY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")


def entry_spec(value: str) -> str:
    """--entry's argparse type: MODULE:FUNCTION, refused here in any other shape (`--entry
    nomodule` was accepted, and every job failed on the nodes after its wait in the queue).
    Raises ConfigError (not argparse's ArgumentTypeError): the CLI prints it as one line."""
    if not _ENTRY.fullmatch(value.strip()):
        raise ConfigError("--entry", f"'{value}' must look like MODULE:FUNCTION, a module the "
                          "jobs import and the function in it they call with ['train', ...], "
                          f"e.g. {DEFAULT_ENTRY}")
    return value.strip()


def check_entry(entry: str, python: str | None) -> None:
    """Refuses an --entry whose module this interpreter cannot find, where the jobs run this
    interpreter (no --python): they import it as `python -m` does, from the folder sbatch is
    called from (this one) and the interpreter's own path. With --python the nodes run
    another interpreter, which may well have modules this one lacks, so nothing is said.
    The function itself is looked up where importing the module is known to be harmless (this
    package's modules, or one imported already); other modules are only found, not run."""
    if python is not None or entry == DEFAULT_ENTRY:
        return
    module_name, _, function = entry.partition(":")
    where = f"{sys.executable}, the interpreter the jobs run"
    sys.path.insert(0, os.getcwd())
    try:
        try:
            found = importlib.util.find_spec(module_name)
        except ImportError as exc:  # a parent package that is not there
            found, reason = None, str(exc)
        except Exception:  # a parent package that fails to import here: left to the nodes
            return
        else:
            reason = ""
        if found is None:
            raise ConfigError("--entry", f"module '{module_name}' of {entry} cannot be imported "
                              f"by {where}" + (f" ({reason})" if reason else "") + "; give "
                              "another module, or --python for the nodes' interpreter if it is "
                              "installed only there")
        if module_name.split(".")[0] != __name__.split(".")[0] and module_name not in sys.modules:
            return
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise ConfigError("--entry", f"module '{module_name}' of {entry} fails to import: "
                              f"{exc}") from None
        if not callable(getattr(module, function, None)):
            raise ConfigError("--entry", f"module '{module_name}' has no function '{function}' "
                              f"({entry})")
    finally:
        sys.path.remove(os.getcwd())


def slurm_config_from_args(args: argparse.Namespace) -> SlurmConfig:
    if getattr(args, "entry", None):
        check_entry(args.entry, args.python)
    from_file: dict[str, Any] = load_slurm_yaml(args.slurm_config) if args.slurm_config else {}
    if isinstance(from_file.get("extra_sbatch"), dict):  # another type: from_mapping refuses it
        try:
            one_spelling_each(from_file["extra_sbatch"])
        except ConfigError as error:
            raise ConfigError(error.key, f"{error.reason} "
                              f"{in_file(args.slurm_config, 'slurm.extra_sbatch')}") from None
    values = dict(from_file)
    flagged: set[str] = set()
    for flag, (key, _) in SLURM_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            values[key] = value
            flagged.add(key)
    # A file's setup that is no list is left for from_mapping to refuse (naming the file):
    # list("module load") made one shell line per character.
    if args.setup and isinstance(values.get("setup") or [], list):
        values["setup"] = list(values.get("setup") or []) + args.setup
    if args.sbatch:
        values["extra_sbatch"] = with_sbatch_options(values.get("extra_sbatch"), args.sbatch)
    try:
        config = SlurmConfig.from_mapping(values)
        # Here, before anything is written (and for --dry-run too); rendering checks again.
        config.check_for_submission()
    except ConfigError as error:
        # A value of the file's (no flag replaced it): name the file, as `train` names its
        # --config file. setup and extra_sbatch add the flags' entries to the file's; those
        # of --setup are plain lines and --sbatch checks its own, so an error there is the file's.
        name = error.key.split(".")[1] if error.key.startswith("slurm.") else None
        if name in from_file and name not in flagged:
            raise ConfigError(error.key, f"{error.reason} {in_file(args.slurm_config, error.key)}") \
                from None
        # A check of two keys is reported under one; the file is named when it set the other.
        partners = [key for key in _CHECKED_WITH.get(name, ())
                    if key in from_file and key not in flagged]
        if partners:
            raise ConfigError(error.key, f"{error.reason} ({', '.join(partners)} in "
                                         f"{args.slurm_config})") from None
        # A flag's value: named as the user typed it (`--nodes 0` was refused as "config key
        # 'slurm.nodes'", a key they never wrote).
        if name in flagged:
            flag = flag_of(name)
            raise ConfigError(flag, error.reason.replace(f" ({flag})", "")) from None
        raise
    return config


def flag_of(field_name: str) -> str:
    """The flag that sets a SlurmConfig field (`time_min` -> `--time`)."""
    flag = next(f for f, (key, _) in SLURM_FLAGS.items() if key == field_name)
    return "--" + flag.replace("_", "-")


def origin(args: argparse.Namespace, field_name: str) -> tuple[str, str]:
    """(the name a refusal of this SlurmConfig field gives, a note where it was set): the flag
    when the user gave it, else the config key and the --slurm-config file if it holds it."""
    flag = flag_of(field_name)
    if getattr(args, flag[2:].replace("-", "_"), None) is not None:
        return flag, ""
    key = f"slurm.{field_name}"
    config_file = getattr(args, "slurm_config", None)
    if config_file and field_name in load_slurm_yaml(config_file):
        return key, " " + in_file(config_file, key)
    return key, ""


def with_sbatch_options(extra: dict[str, Any] | None, specs: list[str]) -> dict[str, Any]:
    """`extra` (SlurmConfig.extra_sbatch) with the --sbatch OPTION=VALUE | FLAG options added.
    A bare word must be one of sbatch's flags (SBATCH_FLAG_OPTIONS): `--sbatch foo` rendered
    `#SBATCH --foo`, and `--sbatch mail-type` an option without its value."""
    merged = dict(extra or {})
    for spec in specs:
        key, sep, value = spec.partition("=")
        # sbatch's spelling: mail_type, Mail-Type and mail-type are one option, which two
        # spellings wrote twice (and `--Mail-Type` is no sbatch option)
        typed = key.strip().lstrip("-")
        if not typed:
            raise ConfigError("--sbatch", f"'{spec}' must look like OPTION=VALUE or FLAG")
        # named as the flag: the same check of the config would name extra_sbatch
        refusal = owned_sbatch_message(typed) or sbatch_key_message(typed)
        if refusal:
            raise ConfigError("--sbatch", refusal)
        key = sbatch_spelling(typed)
        for spelt in [name for name in merged if sbatch_spelling(name) == key]:
            del merged[spelt]
        if sep and not value.strip():  # OPTION= drops it (a resume's carried dependency)
            continue
        if not sep and key not in SBATCH_FLAG_OPTIONS:
            raise ConfigError("--sbatch", f"'{spec}' has no value: give OPTION=VALUE (e.g. "
                              "--sbatch mail-type=END); only sbatch's flags are given bare: "
                              f"{', '.join(sorted(SBATCH_FLAG_OPTIONS))} (another flag, e.g. a "
                              "site plugin's, as `KEY: true` under extra_sbatch in a "
                              "--slurm-config file)")
        merged[key] = value if sep else True
    return merged


# A train option (`--section.key`, or `--config FILE`), which goes after `--`.
_TRAIN_OPTION = re.compile(r"--[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+|--config")


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the command's own arguments, the train options after `--`). Train options before `--`
    are refused with the command line they belong in: argparse said only `unrecognized
    arguments: --train.max_steps 3`. No option of the slurm commands is dotted or --config,
    nor takes a value beginning with `--`, so such an argument before `--` is always one."""
    cut = argv.index("--") if "--" in argv else len(argv)
    own, overrides = argv[:cut], argv[cut + 1:]
    misplaced: list[str] = []
    i = 0
    while i < len(own):
        arg = own[i]
        if not _TRAIN_OPTION.fullmatch(arg.split("=", 1)[0]):
            i += 1
            continue
        takes = "=" not in arg and i + 1 < len(own) and not own[i + 1].startswith("--")
        misplaced += own[i:i + 2] if takes else [arg]
        i += 2 if takes else 1
    if misplaced:
        first = misplaced[0].split("=", 1)[0]
        raise ConfigError(first, "train options go after `--`, behind the command's own options: "
                          f"... -- {shlex.join(misplaced + overrides)}")
    return own, overrides
