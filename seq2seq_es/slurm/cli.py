"""`seq2seq-es slurm submit|sweep|status|resume|collect|bench`: training runs as SLURM jobs.

  submit --task T --model M [--run-dir DIR] [SLURM options] [--dry-run] [-- train overrides]
  sweep  --sweep-dir DIR [--models A,B] [--tasks X,Y | --pair M:T ...] [--grid KEY=V1,V2 ...]
         [--no-grid] [--seeds 1,2,3] [--data-root DIR] [--max-parallel N] [SLURM options]
         [--dry-run] [--yes] [-- train overrides]
  status SWEEP [--json]            SWEEP: a sweep folder, or a run folder made by `submit`
  resume SWEEP [--time MIN] [--max-requeues N] [--mem-gb GB] [--partition P] [--nodes N] [...]
         [--dry-run] [--yes] [-- train overrides]
                           submit again every run without DONE (stopped, out of requeues,
                           timed out, failed); each resumes from its latest checkpoint, with
                           new resources and train overrides if given; on other ranks with
                           the micro-batch and train.grad_accum that keep a step's examples
  collect SWEEP | RUN... [--split both|dev|test] [--metrics A,B] [--markdown FILE]
         [--csv FILE] [--png FILE]
                           per model and task the run of the best dev main metric (with
                           seeds: the grid point of the best mean over its seeds):
                           results.md/.csv/.png, results-dev.* / results-test.* for
                           one split (an empty table writes nothing); RUN: run folders
                           trained anywhere (seq2seq-es train, torchrun), or folders of them
  bench  --bench-dir DIR [--nodes 1,2,4,8] [--zero-stages 0,2,3] [--model M] [--task T]
         [--steps 30] [--warmup-steps 5] [--wait] [SLURM options] [-- train overrides]
  bench  --collect DIR [--wait]    throughput and scaling efficiency: scaling.md/.csv/.json/.png

SLURM options come from `--slurm-config FILE` (the `slurm:` section of a YAML file, keys as in
SlurmConfig) and then from the flags, which win. Train overrides after `--` are passed to
`seq2seq-es train` as they are (`--config run.yaml --optim.lr 3e-5 --train.max_steps 100`; the
file's path made absolute). Without --gpus-per-node a job trains on CPUs: a warning says so when
the partition has GPUs (sinfo), or when a partition is given and sinfo cannot tell.
A sweep prints its run count and one line per distinct grid point, then asks before submitting;
where stdin is not a terminal it needs --yes (scripts never hang on the question).
Without --grid a sweep uses the paper's grid for each pair: train.batch_size 4,8,16 x optim.lr
3e-5,5e-5 x train.epochs 3,6, except translation with BARTO and T5S, which gets the paper's recipe
(train.batch_size 384; the registry's steps and peak learning rate, 6.25e-4 BARTO, 1.25e-3 T5S).
A train.batch_size axis is the effective batch per optimizer step: each run gets the largest
micro-batch, up to the pair's default, that divides each rank's share, and the gradient
accumulation that makes up the rest. Every run's config is composed (with the `--config` file after --) and validated before
anything is submitted, and runs whose resolved configs are equal (an axis a run never reads, e.g.
train.epochs under train.max_steps) are dropped, with a summary.
`--seeds 1,2,3` runs every grid point (the paper's, --grid's, or with --no-grid the pair's one
run) once per seed: a last train.seed axis, folders ending in `seed-N`. collect then takes the
runs of a grid point that differ only in train.seed as one: it chooses the grid point by its
mean dev score and shows mean ± sample standard deviation (n-1) over the seeds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# One rule for every folder a run writes to: train.output_dir's, --run-dir's, --sweep-dir's.
from ..config import check_folder
from ..errors import ConfigError, Seq2SeqEsError, run_command
from .config import SlurmConfig, owned_sbatch_message, owned_sbatch_option
from .data_check import add_data_check_option, check_local_data
from .job import DEFAULT_ENTRY
from .monitor import format_status, query_slurm, run_status, status_json, sweep_status
from .options import (SLURM_FLAGS, add_slurm_options, origin, slurm_config_from_args, split_overrides,
                      with_sbatch_options)
from .results_table import SPLITS_SHOWN, build_table, empty_message, write_results
from .sweep import (RUN_FOLDERS_MODE, RUN_MANIFEST, SUBMITIT_DIR, SWEEP_MANIFEST, RunPlan,
                    absolute_config, busy_text, check_names, check_node_count,
                    check_not_resubmitted, check_overrides, check_partition, check_run_dir,
                    check_seeds, check_sweep_dir, compose_run, dry_run_script, finished_run_further,
                    gpu_warning, load_manifest, load_runs, new_manifest, parse_grid, parse_seeds,
                    partition_gres, pinned_paths, plan_sweep, relative_paths, require_slurm_clients,
                    resumed_argv, runs_to_resume, select_pairs, submit, submit_runs, submitting,
                    train_argv)

def _warn_without_gpus(config: SlurmConfig) -> None:
    """A job without --gpus-per-node trains on CPUs: say so on stderr where GPUs seem meant."""
    if config.gpus_per_node > 0:
        return
    warning = gpu_warning(config.gpus_per_node, config.partition, partition_gres())
    if warning:
        print(f"warning: {warning}", file=sys.stderr)


def _confirm(count: int, yes: bool) -> bool:
    """Asks before submitting on a terminal; elsewhere --yes is required (a script never hangs)."""
    if yes:
        return True
    if sys.stdin is None or not sys.stdin.isatty():
        raise ConfigError("--yes", f"stdin is not a terminal, so nobody can confirm submitting "
                          f"{count} run{'s' if count != 1 else ''}; pass --yes to submit without "
                          "asking (or --dry-run to see the plan)")
    try:
        answer = input(f"submit {count} run{'s' if count != 1 else ''}? [y/N] ")
    except EOFError:
        answer = ""
    return answer.strip().lower() in ("y", "yes")


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    return names or None


# ---- submit ----------------------------------------------------------------------------------

# submit's and sweep's usage lines end at their own options; the train options they pass on
# were shown only by `seq2seq-es slurm --help`.
TRAIN_OPTIONS_AFTER = ("Train options go after `--`, as `seq2seq-es train` takes them (`seq2seq-es "
                       "train --help`), e.g. `-- --data.train_file train.jsonl --optim.lr 3e-5`.")

def cmd_submit(argv: list[str]) -> int:
    own, overrides = split_overrides(argv)
    parser = argparse.ArgumentParser(prog="seq2seq-es slurm submit", epilog=TRAIN_OPTIONS_AFTER)
    parser.add_argument("--task", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--run-dir", help="the run's folder (default runs/<model>__<task>__<time>)")
    parser.add_argument("--dry-run", action="store_true", help="print the sbatch script only")
    add_data_check_option(parser)
    add_slurm_options(parser)
    args = parser.parse_args(own)

    # The training entry composes the run below: a task outside the registry is the user's own
    # when the overrides define it, and refused there (with the way to define one) when not.
    check_names([args.model], [] if args.entry == DEFAULT_ENTRY else [args.task])
    check_overrides(overrides, allow_config=args.entry == DEFAULT_ENTRY)
    if args.entry == DEFAULT_ENTRY:
        # The run's config as `train` will compose it (a --config file, then the dotted keys):
        # a bad file, key or value is refused before sbatch.
        overrides = absolute_config(overrides)
        run_config = compose_run(args.task, args.model, overrides, task_option="--task")
        overrides = pinned_paths(overrides, run_config)
    config = slurm_config_from_args(args)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(args.run_dir or f"runs/{args.model}__{args.task}__{stamp}").absolute()
    check_run_dir(run_dir)  # the user's own argument: said before sinfo is asked
    check_partition(config.partition, required=not args.dry_run, origin=origin(args, "partition"))
    check_node_count(config, required=not args.dry_run)
    data_lines: list[str] = []  # printed with the plan: after a dry run's script
    if args.entry == DEFAULT_ENTRY and not args.no_data_check:
        check_local_data([(run_dir.name, run_config)], config.world_size, log=data_lines.append)
    _warn_without_gpus(config)
    run = RunPlan(name=run_dir.name, model=args.model, task=args.task, grid_point={},
                  run_dir=str(run_dir),
                  argv=train_argv(args.model, args.task, run_dir, {}, overrides))
    folder = Path(config.folder).absolute() if config.folder else run_dir / SUBMITIT_DIR
    manifest = new_manifest("run", [run], {}, config, folder, args.entry, overrides, None)
    if args.dry_run:
        print(dry_run_script(config, manifest), end="")
        for line in data_lines:
            print(f"# {line}")
        print(f"# run folder: {run_dir}")
        print(f"# train arguments: {' '.join(run.argv)}")
        return 0
    for line in data_lines:
        print(line)
    submit(manifest, config, run_dir / RUN_MANIFEST)
    print(f"submitted job {run.job_id}: {config.nodes} node(s) x {config.ntasks_per_node} task(s)")
    print(f"run folder: {run_dir}")
    print(f"logs: {folder}/{run.job_id}_<rank>_log.out|err (linked in {run_dir}/logs)")
    print(f"status: seq2seq-es slurm status {run_dir}")
    return 0


# ---- sweep -----------------------------------------------------------------------------------

def cmd_sweep(argv: list[str]) -> int:
    own, overrides = split_overrides(argv)
    parser = argparse.ArgumentParser(prog="seq2seq-es slurm sweep", epilog=TRAIN_OPTIONS_AFTER)
    parser.add_argument("--sweep-dir", required=True)
    parser.add_argument("--models", help="comma-separated filter on the paper's pairs")
    parser.add_argument("--tasks", help="comma-separated filter on the paper's pairs")
    parser.add_argument("--pair", action="append", default=[], metavar="MODEL:TASK",
                        help="explicit pair instead of the paper's (repeatable)")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="grid axis (repeatable); default: the paper's grid")
    parser.add_argument("--no-grid", action="store_true",
                        help="one run per pair, no grid (one per seed with --seeds)")
    parser.add_argument("--seeds", metavar="S1,S2",
                        help="run every grid point once per seed (integers, e.g. 1,2,3): adds a "
                             "train.seed axis to each pair's grid; collect then averages a grid "
                             "point's seeds and chooses by the mean dev score")
    parser.add_argument("--data-root", metavar="DIR",
                        help="local datasets instead of the hub: DIR/<task>/train.jsonl (and "
                             "validation, test; jsonl, json, csv, tsv or parquet) in the hub's "
                             "columns")
    parser.add_argument("--max-parallel", type=int, default=4,
                        help="array jobs running at once (default 4)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and sbatch script")
    parser.add_argument("--yes", "-y", action="store_true",
                        help="submit without asking (needed when stdin is not a terminal)")
    add_data_check_option(parser)
    add_slurm_options(parser)
    args = parser.parse_args(own)

    if args.max_parallel < 1:
        raise ConfigError("--max-parallel", f"expected an integer >= 1, got {args.max_parallel}")
    if args.no_grid and args.grid:
        raise ConfigError("--grid", "--grid and --no-grid exclude each other")
    pairs = select_pairs(_names(args.models), _names(args.tasks), args.pair,
                         own_tasks=args.entry == DEFAULT_ENTRY)
    grid: dict[str, list[str]] | None = None  # None: the paper's grid for each pair
    if args.no_grid:
        grid = {}
    elif args.grid:
        grid = parse_grid(args.grid)
    check_overrides(overrides, allow_config=args.entry == DEFAULT_ENTRY)
    seeds = parse_seeds(args.seeds) if args.seeds is not None else []
    check_seeds(seeds, grid, overrides)  # before sinfo is asked, as the other flags' checks
    if args.entry == DEFAULT_ENTRY:
        overrides = absolute_config(overrides)
    config = slurm_config_from_args(args)
    sweep_dir = Path(args.sweep_dir).absolute()
    # Before the runs are planned: each is composed with its folder under this one, so a file
    # here was refused as config key train.output_dir (or, for an entry that composes no config,
    # not at all), not as the option the user gave.
    check_folder("--sweep-dir", str(sweep_dir))
    check_partition(config.partition, required=not args.dry_run, origin=origin(args, "partition"))
    check_node_count(config, required=not args.dry_run)
    _warn_without_gpus(config)
    plan = plan_sweep(sweep_dir, pairs, grid, overrides, args.data_root,
                      world_size=config.world_size, compose_runs=args.entry == DEFAULT_ENTRY,
                      seeds=seeds)
    runs = plan.runs
    check_sweep_dir(sweep_dir, runs)
    data_lines: list[str] = []  # printed with the plan: after a dry run's script
    if not args.no_data_check:
        check_local_data(plan.configs.items(), config.world_size, log=data_lines.append)
    folder = Path(config.folder).absolute() if config.folder else sweep_dir / SUBMITIT_DIR
    manifest = new_manifest("sweep", runs, plan.grid, config, folder, args.entry, overrides,
                            args.max_parallel, seeds=seeds)
    if args.dry_run:
        print(dry_run_script(config, manifest), end="")
        for line in data_lines + plan.dropped_summary() + plan.summary():
            print(f"# {line}")
        print(f"# {len(runs)} run(s) in {sweep_dir}, at most {args.max_parallel} at once:")
        for run in runs:
            print(f"#   {run.name}")
        return 0
    for line in data_lines + plan.dropped_summary() + plan.summary():
        print(line)
    sys.stdout.flush()
    require_slurm_clients()  # before asking: a yes must be able to submit
    if not _confirm(len(runs), args.yes):
        print("nothing submitted")
        return 1
    submit(manifest, config, sweep_dir / SWEEP_MANIFEST)
    first, last = runs[0].job_id, runs[-1].job_id
    jobs = f"job {first}" if len(runs) == 1 else f"jobs {first}..{last}"
    print(f"submitted {len(runs)} run(s) as {jobs}, at most {args.max_parallel} at once")
    print(f"sweep folder: {sweep_dir}")
    print(f"status: seq2seq-es slurm status {sweep_dir}")
    return 0


# ---- status / collect ------------------------------------------------------------------------

def cmd_status(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="seq2seq-es slurm status")
    parser.add_argument("sweep", metavar="SWEEP", help="sweep folder, run folder or manifest")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    manifest = load_manifest(args.sweep)
    statuses = sweep_status(manifest)
    print(status_json(statuses) if args.json else format_status(manifest, statuses))
    return 0


def cmd_collect(argv: list[str], prog: str = "seq2seq-es slurm collect") -> int:
    """Tables of a sweep: per (model, task) the grid point with the best dev value of the task's
    main metric, all of that run's metrics (dev / test), family averages beside the paper's.
    Writes results.md, results.csv and results.png beside the manifest (results-dev.* or
    results-test.* with --split dev or test); when there is nothing to
    show it says so, writes nothing (earlier results stay) and returns 1."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="The paper-style results table of a sweep, or of run folders trained "
                    "anywhere (seq2seq-es train, torchrun, ...): one run per (model, task), "
                    "chosen by its dev main metric.")
    # RUN, as its errors name it (`argument RUN: ... does not exist`): the usage said RUN_OR_SWEEP
    parser.add_argument("sweep", metavar="RUN", nargs="+",
                        help="a sweep folder (sweep.json) or run folder of `slurm submit` "
                             "(slurm_job.json); or run folders (each holds config.yaml) and "
                             "folders of them, whose results go to the folder holding them all")
    # `validation` is evaluate's and the config's name for dev: accepted here too
    parser.add_argument("--split", choices=SPLITS_SHOWN, default="both",
                        type=lambda name: "dev" if name == "validation" else name,
                        help="what the markdown cells and the plot show: 'dev / test' (both, the "
                             "default), dev (or validation) only or test only; the CSV always "
                             "holds both")
    parser.add_argument("--metrics", help="comma-separated metric names to show (default: all "
                                          "task metrics); the choice of runs does not change")
    parser.add_argument("--markdown", metavar="FILE",
                        help="default <SWEEP>/results.md (results-dev.md, results-test.md with "
                             "--split dev, test)")
    parser.add_argument("--csv", metavar="FILE", help="default <SWEEP>/results.csv (as --markdown)")
    parser.add_argument("--png", metavar="FILE", help="default <SWEEP>/results.png (as --markdown)")
    args = parser.parse_args(argv)
    # The plot is PNG data whatever its name: one named .jpg or .pdf opened as a broken file.
    if args.png and Path(args.png).suffix.lower() != ".png":
        raise ConfigError("--png", f"{args.png}: the plot is written as PNG; give a name ending "
                                   "in .png")
    for flag, value, suffix in (("--markdown", args.markdown, ".md"), ("--csv", args.csv, ".csv"),
                                ("--png", args.png, ".png")):
        if value and Path(value).is_dir():  # said by its flag, before any table is built
            raise ConfigError(flag, f"{value} is a folder; give a file name (e.g. "
                                    f"{Path(value) / ('results' + suffix)})")
    manifest = load_runs(args.sweep)
    metrics = _names(args.metrics)
    table = build_table(manifest, metrics=metrics)
    # A one-split table gets its own names: `--split test` must not replace the dev / test table.
    folder = Path(manifest.path) if manifest.mode == RUN_FOLDERS_MODE else Path(manifest.path).parent
    stem = folder / ("results" if args.split == "both" else f"results-{args.split}")
    paths = [Path(args.markdown) if args.markdown else stem.with_suffix(".md"),
             Path(args.csv) if args.csv else stem.with_suffix(".csv"),
             Path(args.png) if args.png else stem.with_suffix(".png")]
    if table.is_empty(args.split):
        print(empty_message(table, args.split))
        kept = [str(path) for path in paths if path.exists()]
        print("nothing written" + (f"; kept as they were: {', '.join(kept)}" if kept else ""))
        return 1
    try:
        markdown = write_results(table, *paths, split=args.split, metrics=metrics)
    except OSError as exc:
        raise Seq2SeqEsError(f"could not write the results ({exc}); nothing was replaced: "
                             f"{', '.join(str(path) for path in paths)}") from exc
    print(markdown, end="")
    print(f"\nwritten: {', '.join(str(path) for path in paths)}")
    return 0


# What `resume` may change: where and with what resources the jobs run, the ranks included (a
# checkpoint resumes on other ranks when the step keeps its examples: `sweep.resumed_argv`).
RESUME_FLAGS = ("nodes", "gpus_per_node", "tasks_per_node", "time", "max_requeues", "mem_gb",
                "cpus_per_task", "partition", "account", "qos", "constraint", "signal_delay_s",
                "python")


def cmd_resume(argv: list[str]) -> int:
    """Submit again the runs of a submitted sweep (or run folder) that have not finished: their
    arguments already say --train.resume auto, so each continues from its latest checkpoint,
    with the SLURM settings and train arguments it was submitted with, except those given here
    (RESUME_FLAGS and --sbatch; train overrides after --)."""
    own, overrides = split_overrides(argv)
    parser = argparse.ArgumentParser(
        prog="seq2seq-es slurm resume",
        usage="%(prog)s SWEEP [SLURM flags] [--dry-run] [--yes] [-- --section.key VALUE ...]",
        epilog="The flags replace the settings the runs were submitted with, and train overrides "
               "after -- replace the runs' own (a run that failed on its config, or ran out of "
               "memory: -- --train.batch_size 2 --train.grad_accum 8). On other nodes, GPUs or "
               "tasks per node, each run's train.grad_accum (and micro-batch where needed) is "
               "set to keep the examples of a step, which its checkpoints need.")
    parser.add_argument("sweep", metavar="SWEEP", help="sweep folder, run folder or manifest")
    for flag in RESUME_FLAGS:
        key, kind = SLURM_FLAGS[flag]
        parser.add_argument("--" + flag.replace("_", "-"), type=kind, dest=flag,
                            metavar="MIN" if flag == "time" else None,
                            help=f"a new {key} (SlurmConfig) for the jobs")
    parser.add_argument("--sbatch", action="append", default=[], metavar="OPTION=VALUE",
                        help="an sbatch option added to (or replacing) the submitted ones")
    parser.add_argument("--dry-run", action="store_true", help="list the runs only")
    parser.add_argument("--yes", "-y", action="store_true", help="submit without asking")
    add_data_check_option(parser)
    args = parser.parse_args(own)
    check_overrides(overrides)
    manifest = load_manifest(args.sweep)
    states = query_slurm(run.job_id for run in manifest.runs)
    runs, still_going = runs_to_resume(manifest, states)
    finished = [run.run_dir for run in manifest.runs
                if all(run is not other for other in runs + [busy for busy, _ in still_going])]
    # The SLURM flags given, as typed (--time, --sbatch): on finished runs, as the overrides.
    flags_given = ["--" + flag.replace("_", "-") for flag in RESUME_FLAGS
                   if getattr(args, flag) is not None] + ["--sbatch"] * bool(args.sbatch)
    if not runs and (overrides or flags_given):
        # Said as an error: the arguments asked for a change that nothing received (the run
        # folder keeps its settings), and a script must not read that as done.
        raise ConfigError(overrides[0].split("=", 1)[0] if overrides else flags_given[0],
                          f"not applied: every run of {manifest.path} has finished (DONE), and "
                          "`slurm resume` submits unfinished runs only. "
                          + finished_run_further(finished))
    if not runs:
        print(f"every run of {manifest.path} has finished (DONE): nothing to resume")
        return 0
    changes = {SLURM_FLAGS[flag][0]: getattr(args, flag) for flag in RESUME_FLAGS
               if getattr(args, flag) is not None}
    # Runs submitted before these options were refused may carry one (a --sbatch time=30 beside
    # --time); the tool's own setting renders in its place now, so it is dropped and named.
    submitted_extra = dict(manifest.slurm.get("extra_sbatch") or {})
    for key in [key for key in submitted_extra if owned_sbatch_message(key)]:
        print(f"note: the runs were submitted with --sbatch {key}={submitted_extra.pop(key)}, "
              f"which is now set by {owned_sbatch_option(key)} alone; resubmitting without it",
              file=sys.stderr)
        changes["extra_sbatch"] = submitted_extra
    if args.sbatch:
        changes["extra_sbatch"] = with_sbatch_options(submitted_extra, args.sbatch)
    config = SlurmConfig.from_mapping({**manifest.slurm, **changes})
    config.check_for_submission()  # before the question, as submit and sweep do
    # Also for --dry-run where sinfo answers, as submit and sweep check: an unknown partition or
    # more nodes than it has is said before any run's arguments are composed.
    check_partition(config.partition, required=not args.dry_run, origin=origin(args, "partition"))
    check_node_count(config, required=not args.dry_run)
    ranks = (SlurmConfig.from_mapping(manifest.slurm).world_size, config.world_size)
    if ranks[0] != ranks[1] and still_going:
        # The sweep keeps one set of SLURM settings: the runs still going would be read as on
        # the new ranks by the next resume, which sets grad_accum from them.
        raise ConfigError("--nodes", f"{len(still_going)} run(s) of {manifest.path} still "
                          f"have jobs on {ranks[0]} rank(s) (first: {still_going[0][0].name}); "
                          "resume on other ranks once they have ended")
    if (overrides or ranks[0] != ranks[1]) and manifest.entry != DEFAULT_ENTRY:
        raise ConfigError("SWEEP", f"the jobs of {manifest.path} run {manifest.entry}, not "
                          "training: they resume with their arguments and ranks as submitted")
    # Every run's new arguments, composed and checked before the question (and for --dry-run).
    resumed = {run.name: resumed_argv(run, overrides, ranks) if manifest.entry == DEFAULT_ENTRY
               else (run.argv, []) for run in runs}
    if overrides and finished:  # once they are taken (it was said of arguments then refused)
        print(f"note: the train arguments after -- go to the {len(runs)} run(s) resumed here, "
              f"not to the {len(finished)} finished one(s). {finished_run_further(finished)}",
              file=sys.stderr)
    # The plan's lines: '# ' in a dry run, as sweep's (a real resume's looked like a dry run's)
    mark = "# " if args.dry_run else ""
    carried = dict(config.extra_sbatch or {})
    if carried:  # a dependency or begin time of the first submission waits again
        print(f"{mark}sbatch options carried over: " + " ".join(
            f"--sbatch {key}" if value is True else f"--sbatch {key}={value}"
            for key, value in carried.items()) + " (--sbatch KEY= drops one)")
    if manifest.entry == DEFAULT_ENTRY and not args.no_data_check:
        # As submit and sweep: a new (or since changed) data file is read here, once per
        # distinct set, not found bad by every job after its wait in the queue.
        check_local_data([(run.name, compose_run(run.task, run.model, resumed[run.name][0][4:]))
                          for run in runs], config.world_size,
                         log=lambda line: print(f"{mark}{line}"))
    if ranks[0] != ranks[1]:
        print(f"{mark}ranks: {ranks[0]} -> {ranks[1]} ({config.nodes} node(s) x "
              f"{config.ntasks_per_node} task(s))")
    if still_going:
        print(f"{mark}{len(still_going)} run(s) left as they are, their jobs still going:")
        for run, state in still_going:
            print(f"{mark}  {busy_text(run, state, listed=True)}")
    print(f"{mark}{len(runs)} of {len(manifest.runs)} run(s) to resume:")
    for run in runs:
        print(f"{mark}  {run.name} (last job {run.job_id})")
        for change in resumed[run.name][1]:
            print(f"{mark}    {change}")
        status = run_status(run, manifest, states)
        if status.failed and status.error:
            # A failure of the run's own (a config or data error) comes back on resume: it
            # resumes with the settings it was submitted with.
            print(f"{mark}    its last job ended {status.state}: {status.error}")
        for key, value in relative_paths(run.argv):
            # Runs submitted before paths were pinned (sweep.pinned_paths): the job reads them
            # against the folder sbatch is called from, which is this one now.
            print(f"warning: {run.name} names --{key} {value}, a relative path: the job reads "
                  f"it as {Path(value).absolute()}", file=sys.stderr)
    if args.dry_run:
        return 0
    if not _confirm(len(runs), args.yes):
        print("nothing submitted")  # as sweep: a declined resume is not a success
        return 1
    require_slurm_clients()
    for run in runs:
        run.argv = resumed[run.name][0]
    with submitting(manifest):
        check_not_resubmitted(manifest, runs)
        submit_runs(manifest, runs, config)
        manifest.slurm = config.to_dict()
        manifest.write(manifest.path)
    jobs = ", ".join(run.job_id for run in runs)
    print(f"submitted {len(runs)} run(s) as job{'s' if len(runs) > 1 else ''} {jobs}")
    print(f"status: seq2seq-es slurm status {Path(manifest.path).parent}")
    return 0


def cmd_bench(argv: list[str]) -> int:
    from ..bench.scaling_jobs import main as bench_main

    return bench_main(argv)


COMMANDS = {"submit": cmd_submit, "sweep": cmd_sweep, "status": cmd_status, "resume": cmd_resume,
            "collect": cmd_collect, "bench": cmd_bench}


def main(argv: list[str]) -> int:
    """`seq2seq-es slurm ...`; argv starts with the sub-command. Returns the exit status."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"error: unknown slurm command '{argv[0]}'; known: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    return run_command(command, argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
