"""`seq2seq-es` command line: list, train, config, evaluate, export, predict, demo, score,
convert-led, bench, slurm, collect.

Every command that can fail on user input prints one `error: ...` line and exits with 2; the
library tracebacks stay out of the way (set SEQ2SEQ_ES_DEBUG=1 to see them).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import traceback
from typing import NoReturn

# build_config: what `train` composes from its arguments (tests import it from here).
from .engine.entry import build_config, parse_train_args, train_main  # noqa: F401
from .errors import (did_you_mean, lost_contact, run_command, tell_launcher,
                     waited_too_long, write_line)
from .process_exit import exit_status, leave, must_leave_without_teardown

USAGE = """usage: seq2seq-es <command> [options]

commands:
  list                         the models and tasks
  train --task T --model M [--config FILE] [--section.key VALUE ...]
                               (train --help: every config key, its type, default and meaning)
  config --task T --model M [--config FILE] [--section.key VALUE ...]
                               print the resolved config as YAML (what --config accepts)
  evaluate PATH [--split validation|test] [--output-dir DIR] [--batch-size N] [--config FILE]
           [--task T --model M] [--section.key VALUE ...]
                               score a run folder, RUN/final, RUN/checkpoints/step_N, or a
                               model folder or hub id outside any run (with --task, --model)
  export CHECKPOINT OUT [--dtype fp32|bf16|fp16]
                               a DeepSpeed checkpoint (RUN/checkpoints/step_N, or a run
                               folder's newest) as a model folder: --model.path OUT
  predict CHECKPOINT --input FILE --output FILE [--task T] [--model M] [--config FILE]
          [--batch-size N] [--max-source-length N] [--gen.key VALUE ...]
                               generate for a .jsonl or plain-text file
  demo [--output-dir DIR] [--model M] [--section.key VALUE ...]   the embedded CPU demo
  score (--metric NAME ... | --task T) --predictions FILE --references FILE [--sources FILE]
        [--mode spanish|paper]
  convert-led SRC OUT [--max-positions 16384] [--attention-window 1024]
  bench [--model M] [--impls A,B] [...]   Seq2SeqTrainer route vs this package's loop
  bench led [...]              LED attention implementations at 4K-16K tokens
  collect RUN... | SWEEP [--split both|dev|test] [--metrics A,B]
                               the paper-style results table of run folders (or a sweep):
                               one run per model and task, chosen by its dev main metric
  slurm submit|sweep|status|resume|collect|bench ...
"""


def cmd_list(argv: list[str]) -> int:
    from .models import MODELS
    from .tasks import TASKS

    # its own parser: `list --help` (or a stray argument) printed the list as if not given
    argparse.ArgumentParser(prog="seq2seq-es list", allow_abbrev=False,
                            description="The registry's models and tasks: their names, hub ids, "
                                        "metrics and the columns a local data file needs."
                            ).parse_args(argv)
    print("models:")
    for name, spec in MODELS.items():
        if not spec.tiny:
            print(f"  {name:<16} {spec.family:<10} {spec.hub_id}  (tiny: {name}-tiny)")
    print("tasks (main: the metric that chooses checkpoints; a local file's rows need the "
          "columns shown, nested keys in braces):")
    for name, task in TASKS.items():
        config = f" [{task.hub_config}]" if task.hub_config else ""
        print(f"  {name:<14} {task.kind:<20} {task.hub_id}{config}  main: {task.main_metric}  "
              "metrics: " + ", ".join(task.metrics))
        nested = task.formatter.required_keys()
        columns = [column + ("{" + ", ".join(nested[column]) + "}" if column in nested else "")
                   for column in task.columns]
        print(f"  {'':<14} columns: {', '.join(columns)}")
    print("examples of each task's rows: the repository's tests/fixtures/<task>/ (wmt13/ and "
          "fapesp/ for the translation tasks; README.md there); a dialogue "
          "file holds one turn per row, in order (or with a whole-number Idx giving it); BiSECT targets put <SPLIT> (or _SPLIT_) "
          "between sentences")
    print("your own task: --task NAME --data.source_column IN --data.target_column OUT "
          "[--data.metrics rouge,bleu] with --data.train_file/validation_file/test_file "
          "(README: Your own data)")
    return 0


def cmd_train(argv: list[str]) -> int:
    known, overrides = parse_train_args(argv)
    if known.help:
        from .config_help import resolve, train_help
        # With a task and model (or a --config naming them), the defaults that pair resolves to.
        pair = known.task or known.model or known.config or overrides
        print(train_help(resolve(known.task, known.model, known.config, overrides)
                         if pair else None), end="")
        return 0
    return train_main(argv)


def cmd_config(argv: list[str]) -> int:
    """Print the resolved config as YAML: exactly what `train --config` accepts (the launcher's
    environment, which `train` also reads, is left out)."""
    from .config_help import config_yaml, resolve
    from .engine.entry import note_settings, require_pair

    known, overrides = parse_train_args(argv, prog="seq2seq-es config")
    if known.help:
        print("usage: seq2seq-es config --task T --model M [--config FILE] "
              "[--section.key VALUE ...]\n\nPrints the resolved config as YAML, each value not "
              "a default commented with the layer that set it;\n`seq2seq-es train --config FILE` "
              "composes the same config from it. Keys: seq2seq-es train --help")
        return 0
    require_pair(known, overrides)
    resolved = resolve(known.task, known.model, known.config, overrides)
    note_settings(resolved.cfg, known, overrides)  # on stderr: the YAML on stdout stays clean
    from .engine.run_dir import check_best_metric_name
    check_best_metric_name(resolved.cfg)  # train refuses it before loading anything: so does this
    print(config_yaml(resolved, shlex.join(argv)), end="")
    return 0


def cmd_evaluate(argv: list[str]) -> int:
    from .engine.inference import evaluate_main

    return evaluate_main(argv)


def cmd_predict(argv: list[str]) -> int:
    from .engine.inference import predict_main

    return predict_main(argv)


def _deepspeed_on_cpu_quietly() -> None:
    """For commands that import DeepSpeed without a process group (export, convert-led), as
    distributed.init does for the others."""
    from .engine.distributed import name_cpu_accelerator

    name_cpu_accelerator()


def cmd_export(argv: list[str]) -> int:
    from .engine.inference import export_main

    _deepspeed_on_cpu_quietly()
    return export_main(argv)


def cmd_demo(argv: list[str]) -> int:
    from .demo.run import demo_main

    return demo_main(argv)


def cmd_score(argv: list[str]) -> int:
    from .metrics import score_main

    return score_main(argv)


def cmd_convert_led(argv: list[str]) -> int:
    from .models.convert_led import convert_led_main

    _deepspeed_on_cpu_quietly()
    return convert_led_main(argv)


def cmd_bench(argv: list[str]) -> int:
    if argv and argv[0] == "led":
        from .bench.led import main as bench_led_main
        return bench_led_main(argv[1:])
    from .bench.seq2seq import main as bench_main
    return bench_main(argv)


def cmd_slurm(argv: list[str]) -> int:
    from .slurm.cli import main as slurm_main

    return slurm_main(argv)


def cmd_collect(argv: list[str]) -> int:
    """`slurm collect` under its own name: run folders trained without SLURM need no cluster."""
    from .slurm.cli import cmd_collect as collect

    return collect(argv, prog="seq2seq-es collect")


COMMANDS = {"list": cmd_list, "train": cmd_train, "config": cmd_config, "evaluate": cmd_evaluate,
            "predict": cmd_predict, "export": cmd_export, "demo": cmd_demo, "score": cmd_score,
            "convert-led": cmd_convert_led, "bench": cmd_bench, "slurm": cmd_slurm,
            "collect": cmd_collect}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command '{command}'; {did_you_mean(command, COMMANDS)}"
              f"the commands:\n{USAGE}", file=sys.stderr)
        return 2
    return run_command(COMMANDS[command], rest)


def console(argv: list[str] | None = None) -> NoReturn:
    """The process entry (`seq2seq-es`, `python -m seq2seq_es`, launch/train.py): `main`, then
    exit; a process that started a process group leaves without interpreter teardown
    (process_exit explains the abort this avoids), with the status and traceback a normal exit
    would give (a KeyboardInterrupt that escapes: 130, where Python would end by SIGINT)."""
    try:
        status = main(argv)
        sys.stdout.flush()  # a reader that left shows here, not in the interpreter's last flush
    except BrokenPipeError:
        if must_leave_without_teardown():
            raise  # a rank's pipe (workers, trackers), not a reader of ours: the traceback
        # The reader left (`seq2seq-es list | head -1`): no traceback, and stdout goes to
        # /dev/null so that the interpreter's last flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 128 + 13  # as a process that SIGPIPE ended
    except SystemExit as exit_:
        if not must_leave_without_teardown():
            raise
        if exit_.code is not None and not isinstance(exit_.code, int):
            print(exit_.code, file=sys.stderr)  # what Python does with SystemExit("message")
        status = exit_status(exit_.code)
    except BaseException as error:
        several = must_leave_without_teardown() and os.environ.get("WORLD_SIZE", "1") != "1"
        lost = lost_contact(error) if several else None
        if lost is not None and not os.environ.get("SEQ2SEQ_ES_DEBUG"):
            # Another rank failed first: one line here, that rank's error is the cause
            write_line(lost)
            tell_launcher(lost, after_others=True)
            leave(1)
        late = waited_too_long(error) if several else None
        if late is not None:  # what the timeout means; the traceback below says where
            write_line(late)
        if not isinstance(error, KeyboardInterrupt):  # a crash: its traceback for torchrun
            tell_launcher(f"{type(error).__name__}: {error}", traceback.format_exc(),
                          after_others=lost is not None)
        if not must_leave_without_teardown():
            raise
        sys.excepthook(type(error), error, error.__traceback__)
        status = 130 if isinstance(error, KeyboardInterrupt) else 1
    if must_leave_without_teardown():
        leave(status)
    sys.exit(status)


if __name__ == "__main__":
    console()
