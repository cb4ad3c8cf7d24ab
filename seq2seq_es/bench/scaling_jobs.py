"""`seq2seq-es slurm bench`: training throughput over node counts and ZeRO stages, as SLURM jobs.

  bench --bench-dir DIR [--nodes 1,2,4,8] [--zero-stages 0,2,3] [--model barto] [--task mlsum]
        [--steps 30] [--warmup-steps 5] [--train-size N] [--serial] [--dry-run]
        [--wait [--wait-timeout-min M]] [SLURM options as for submit] [-- train overrides]
  bench --collect DIR [--warmup-steps K] [--wait [--wait-timeout-min M]]

Weak scaling: every run keeps the run config's per-device micro-batch, so the global batch grows
with the number of devices. One job per (node count, ZeRO stage) trains for `--steps` steps with
every step logged and no cost that is not training (no evaluation at start, no export, a final
evaluation of 2 examples with 4 greedy tokens). `--collect` reads each run's metrics.jsonl, takes
the median of `train/tokens_per_s` (real, non-pad source+target tokens per second over all ranks)
over the steps after `--warmup-steps`, and writes scaling.md, scaling.csv, scaling.json and
scaling.png into the bench folder (table and plot from seq2seq_es.bench.scaling: scaling
efficiency per ZeRO stage is tokens_per_s(n) / (n * tokens_per_s(1)), so a bench whose node
counts include 1 gets efficiencies). Runs that have not finished are marked; collect can run at
any time.

A bench folder holds:
  bench.json                   the plan: settings, runs and their job ids (marks the folder)
  data/                        the generated MLSUM-schema data set (task mlsum without data files)
  nodes<N>_zero<S>/            one run folder per job: engine output, slurm_job.json (so
                               `seq2seq-es slurm status` works on it), slurm/ (every rank's log)
  scaling.{md,csv,json,png}    written by --collect
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import run_files
from ..config import RunConfig, check_folder, compose, parse_overrides
from ..errors import ConfigError, DataError, Seq2SeqEsError
from ..slurm.config import SlurmConfig
from ..slurm.monitor import FINISHED_STATES, read_metrics, sweep_status
from ..slurm.data_check import add_data_check_option, check_local_data
from ..slurm.options import add_slurm_options, origin, slurm_config_from_args, split_overrides
from ..slurm.results_table import run_code
from ..slurm.sweep import (PLANNER_KEYS, RUN_MANIFEST, SUBMITIT_DIR, SWEEP_MANIFEST, RunPlan,
                          check_names, check_node_count, check_overrides, check_partition,
                          dry_run_script, load_manifest, new_manifest, pinned_paths, submit,
                          train_argv)
from .scaling import scaling_plot, scaling_points, scaling_table

BENCH_MANIFEST = "bench.json"
BENCH_KIND = "seq2seq-es slurm bench"
DATA_DIR = "data"
RESULT_STEM = "scaling"
VALIDATION_SIZE = 8
DATA_SEED = 20240601
DEFAULT_JOB_NAME = SlurmConfig.job_name
# Without a fixed micro-batch (token-budget batching) the samples per step are not known before
# tokenization; a budget is assumed to hold at most one sample per this many tokens.
MIN_TOKENS_PER_SAMPLE = 32

# Settings every bench run gets. Train overrides after `--` come later and win, except the keys in
# RESERVED_OVERRIDES, which the bench itself controls.
BENCH_TRAIN_ARGS = [
    "--train.log_every", "1", "--train.eval_at_start", "false", "--train.eval_every", "0",
    "--train.export", "false", "--train.save_every", "0", "--train.progress_bar", "false",
    "--data.max_eval_samples", "2", "--gen.max_new_tokens", "4", "--gen.min_new_tokens", "0",
    "--gen.num_beams", "1",
]
RESERVED_OVERRIDES = {
    "train.max_steps": "set by --steps",
    "train.log_every": "the bench logs every step (the median needs per-step values)",
    "dist.zero_stage": "set by --zero-stages",
    "train.output_dir": "each run writes to its folder in --bench-dir",
    # After -- it came after the planner's `auto` and won: a requeued bench job started again
    # from step 0 (or `none` refused its own folder), timing other steps than asked.
    "train.resume": PLANNER_KEYS["train.resume"],
    "model.name": "set by --model",
    "data.task": "set by --task",
}
# States in which a job will not change any more: SLURM's final states, plus UNKNOWN (SLURM has
# forgotten the job and it left no result) and runs that were never submitted.
_SETTLED_STATES = FINISHED_STATES | {"UNKNOWN", "NOT_SUBMITTED"}


@dataclass
class BenchRun:
    """One (node count, ZeRO stage) point: its run folder and, once submitted, its job id."""

    name: str
    nodes: int
    zero_stage: int
    world_size: int
    run_dir: str
    job_id: str | None = None


@dataclass
class BenchManifest:
    """bench.json: what --collect needs to read the runs back and label the results."""

    kind: str
    model: str
    task: str
    steps: int
    warmup_steps: int
    samples_per_device_step: int | None   # micro-batch x grad_accum (None: token budget)
    gpus_per_node: int
    tasks_per_node: int
    train_size: int | None                # generated training rows (None: the user's data)
    data_files: dict[str, str]
    overrides: list[str]
    slurm: dict[str, Any]
    runs: list[BenchRun]
    created: float = 0.0
    submitted: bool = False
    path: str = ""

    def write(self, path: str | Path) -> None:
        path = Path(path)
        data = asdict(self)
        data.pop("path")
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        tmp.replace(path)
        self.path = str(path)


def load_bench_manifest(path: str | Path) -> BenchManifest:
    """Reads bench.json from a bench folder (or the file itself)."""
    path = Path(path).absolute()
    if path.is_dir():
        path = path / BENCH_MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("--collect", f"{path} does not exist: not a bench folder") from None
    except json.JSONDecodeError as exc:
        raise ConfigError("--collect", f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("kind") != BENCH_KIND:
        raise ConfigError("--collect", f"{path} is not a seq2seq-es bench manifest")
    try:
        runs = [BenchRun(**run) for run in data.pop("runs")]
        manifest = BenchManifest(runs=runs, **data)
    except (TypeError, KeyError) as exc:
        raise ConfigError("--collect", f"{path} does not match this version's bench manifest: "
                          f"{exc}") from None
    # Each run folder is nodes<N>_zero<S> beside bench.json: a bench folder copied or moved
    # elsewhere had its results read from the old place (the absolute paths it was planned with).
    for run in manifest.runs:
        run.run_dir = str(path.parent / Path(run.run_dir).name)
    manifest.path = str(path)
    return manifest


# ---- input checks ----------------------------------------------------------------------------

def parse_int_list(text: str, flag: str, *, minimum: int, maximum: int | None = None) -> list[int]:
    """'1,2,4' -> [1, 2, 4]; an empty list, a non-integer, a repeat or a value out of range is
    refused naming the flag."""
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part for part in parts):
        raise ConfigError(flag, f"'{text}' has an empty entry: give a comma-separated list such "
                          "as 1,2,4")
    values = []
    for part in parts:
        try:
            value = int(part)
        except ValueError:
            raise ConfigError(flag, f"'{part}' is not an integer") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise ConfigError(flag, f"{value} is out of range: expected {bound}")
        if value in values:
            raise ConfigError(flag, f"{value} is given twice")
        values.append(value)
    return sorted(values)


def check_steps(steps: int, warmup_steps: int) -> None:
    if steps < 1:
        raise ConfigError("--steps", f"expected an integer >= 1, got {steps}")
    if warmup_steps < 0:
        raise ConfigError("--warmup-steps", f"expected an integer >= 0, got {warmup_steps}")
    if warmup_steps >= steps:
        raise ConfigError("--warmup-steps", f"{warmup_steps} warm-up steps leave none of the "
                          f"{steps} steps to measure")


def check_bench_overrides(overrides: list[str]) -> dict[str, str]:
    """Train overrides as a dict; keys the bench controls are refused with the flag to use."""
    check_overrides(overrides)
    values = parse_overrides(overrides)
    for key in values:
        if key in RESERVED_OVERRIDES:
            raise ConfigError(key, f"cannot be overridden in a bench: {RESERVED_OVERRIDES[key]}")
    return values


def check_bench_dir(bench_dir: Path, runs: list[BenchRun]) -> None:
    """Refuses a path that is a file (or lies under one), a folder that holds another bench, a
    sweep or a run (a training run's folder too), or results in a run folder."""
    check_folder("--bench-dir", str(bench_dir))
    manifest = bench_dir / BENCH_MANIFEST
    if manifest.exists():
        try:
            previous = load_bench_manifest(manifest)
        except ConfigError:
            raise ConfigError("--bench-dir", f"{manifest} exists and is not a seq2seq-es bench; "
                              "choose another folder") from None
        if previous.submitted:
            raise ConfigError("--bench-dir", f"{bench_dir} already holds another bench "
                              f"({len(previous.runs)} runs, {previous.model} on {previous.task}); "
                              "choose another folder")
    for other in (SWEEP_MANIFEST, RUN_MANIFEST, run_files.CONFIG, run_files.METRICS):
        if (bench_dir / other).exists():
            raise ConfigError("--bench-dir", f"{bench_dir} holds {other} (a sweep or a run); "
                              "choose another folder")
    for run in runs:
        run_dir = Path(run.run_dir)
        if run_dir.is_dir() and any(run_dir.iterdir()):
            raise ConfigError("--bench-dir", f"run folder {run_dir} is not empty; choose another "
                              "bench folder")


# ---- planning --------------------------------------------------------------------------------

def run_name(nodes: int, zero_stage: int) -> str:
    return f"nodes{nodes}_zero{zero_stage}"


def plan_bench_runs(bench_dir: Path, node_counts: list[int], zero_stages: list[int],
                    tasks_per_node: int) -> list[BenchRun]:
    return [BenchRun(name=run_name(nodes, stage), nodes=nodes, zero_stage=stage,
                     world_size=nodes * tasks_per_node,
                     run_dir=str(bench_dir / run_name(nodes, stage)))
            for stage in zero_stages for nodes in node_counts]


def validated_config(task: str, model: str, train_values: dict[str, str],
                     zero_stages: list[int]) -> RunConfig:
    """Composes and validates every stage's run config as `train` will; returns the last one."""
    configs = [compose(task=task, model=model,
                       overrides={**train_values, "dist.zero_stage": str(stage)})
               for stage in zero_stages]
    return configs[-1]


def samples_per_device_step(cfg: RunConfig) -> int | None:
    """Samples one device consumes per optimizer step; None under token-budget batching."""
    if cfg.train.batching == "fixed":
        return cfg.train.batch_size * cfg.train.grad_accum
    return None


def samples_per_device_bound(cfg: RunConfig) -> int:
    """An upper estimate of samples per device and step, for sizing the generated data set."""
    fixed = samples_per_device_step(cfg)
    if fixed is not None:
        return fixed
    return max(1, cfg.train.max_tokens // MIN_TOKENS_PER_SAMPLE) * cfg.train.grad_accum


def bench_overrides(steps: int, zero_stage: int, data_files: dict[str, str],
                    user_overrides: list[str]) -> list[str]:
    """The train overrides of one run: bench settings, data files, stage, then the user's."""
    data_args: list[str] = []
    if data_files:
        data_args = ["--data.train_file", data_files["train"],
                     "--data.validation_file", data_files["validation"]]
    return ["--train.max_steps", str(steps), *BENCH_TRAIN_ARGS, *data_args,
            "--dist.zero_stage", str(zero_stage), *user_overrides]


def run_config(base: SlurmConfig, run: BenchRun, bench_dir: Path, serial: bool) -> SlurmConfig:
    """The SLURM config of one run: the base with the run's node count and, with `serial`, one
    job name for the whole bench and sbatch's singleton dependency (one job at a time)."""
    changes: dict[str, Any] = {"nodes": run.nodes}
    if serial:
        digest = hashlib.sha1(str(bench_dir).encode()).hexdigest()[:8]
        changes["job_name"] = f"seq2seq-es-bench-{digest}"
        changes["extra_sbatch"] = {**base.extra_sbatch, "dependency": "singleton"}
    elif base.job_name == DEFAULT_JOB_NAME:
        changes["job_name"] = f"bench-n{run.nodes}-z{run.zero_stage}"
    return base.replace(**changes)


# ---- submitting ------------------------------------------------------------------------------

def submit_bench(manifest: BenchManifest, base: SlurmConfig, bench_dir: Path, entry: str,
                 serial: bool) -> None:
    """Submits one job per run, recording each job id in bench.json as soon as it is known, so
    that a submission failing midway leaves the jobs already queued collectable."""
    manifest_path = bench_dir / BENCH_MANIFEST
    manifest.write(manifest_path)
    for run in manifest.runs:
        config = run_config(base, run, bench_dir, serial)
        overrides = bench_overrides(manifest.steps, run.zero_stage, manifest.data_files,
                                    manifest.overrides)
        run_dir = Path(run.run_dir)
        plan = RunPlan(name=run.name, model=manifest.model, task=manifest.task, grid_point={},
                       run_dir=str(run_dir),
                       argv=train_argv(manifest.model, manifest.task, run_dir, {}, overrides))
        run_manifest = new_manifest("run", [plan], {}, config, run_dir / SUBMITIT_DIR, entry,
                                    overrides, None)
        try:
            submit(run_manifest, config, run_dir / RUN_MANIFEST)
        except Seq2SeqEsError:
            queued = [f"{r.name} (job {r.job_id})" for r in manifest.runs if r.job_id]
            if queued:
                print(f"submitting {run.name} failed; already queued: {', '.join(queued)} "
                      f"(collect them with --collect {bench_dir})", file=sys.stderr, flush=True)
            raise
        run.job_id = plan.job_id
        manifest.submitted = True
        manifest.write(manifest_path)
        print(f"submitted {run.name}: job {run.job_id}, {run.nodes} node(s) x "
              f"{config.ntasks_per_node} task(s)", flush=True)


def write_bench_data(bench_dir: Path, train_size: int) -> dict[str, str]:
    from ..demo.synthetic import write_demo_dataset

    return write_demo_dataset(bench_dir / DATA_DIR, train_size=train_size,
                              validation_size=VALIDATION_SIZE, seed=DATA_SEED)


# ---- states, waiting -------------------------------------------------------------------------

def run_states(manifest: BenchManifest) -> dict[str, str]:
    """{run name: SLURM state} from each run's own manifest (slurm_job.json)."""
    states = {}
    for run in manifest.runs:
        if run.job_id is None or not (Path(run.run_dir) / RUN_MANIFEST).is_file():
            states[run.name] = "NOT_SUBMITTED"
            continue
        states[run.name] = sweep_status(load_manifest(Path(run.run_dir) / RUN_MANIFEST))[0].state
    return states


def wait_for_runs(manifest: BenchManifest, timeout_s: float | None,
                  poll_s: float = 5.0) -> dict[str, str]:
    """Polls until every run has settled (or the timeout passes); prints each change of state."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    shown: dict[str, str] = {}
    while True:
        states = run_states(manifest)
        changed = {name: state for name, state in states.items() if shown.get(name) != state}
        if changed:
            print("  ".join(f"{name}: {state}" for name, state in changed.items()), flush=True)
            shown = states
        if all(state in _SETTLED_STATES for state in states.values()):
            return states
        if deadline is not None and time.monotonic() > deadline:
            print(f"stopped waiting after {timeout_s:.0f} s; collecting what there is",
                  file=sys.stderr, flush=True)
            return states
        time.sleep(poll_s)


# ---- collecting ------------------------------------------------------------------------------

def measure_run(run_dir: str | Path, warmup_steps: int) -> dict[str, Any]:
    """Median tokens/s and padded fraction over the logged steps after the warm-up.

    A step logged twice (a requeued run repeats nothing, but a restart of the same job could) is
    taken from its last record.
    """
    by_step: dict[int, dict[str, Any]] = {}
    for record in read_metrics(Path(run_dir) / run_files.METRICS):
        step = record.get("step")
        if isinstance(step, int) and _number(record.get("train/tokens_per_s")) is not None:
            by_step[step] = record
    measured = [by_step[step] for step in sorted(by_step) if step > warmup_steps]
    tokens = [float(record["train/tokens_per_s"]) for record in measured]
    padded = [float(record["train/padded_fraction"]) for record in measured
              if _number(record.get("train/padded_fraction")) is not None]
    return {"real_tokens_per_s": statistics.median(tokens) if tokens else None,
            "padded_fraction": statistics.median(padded) if padded else None,
            "steps_measured": len(tokens),
            "last_step": max(by_step) if by_step else None}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def add_efficiency(rows: list[dict[str, Any]]) -> None:
    """Adds `speedup` and `efficiency` over the one-node run of the same ZeRO stage, as the
    scaling table computes them (None without a one-node measurement)."""
    points = {(point["zero_stage"], point["nodes"]): point for point in scaling_points(rows)}
    for row in rows:
        point = points[(row["zero_stage"], row["nodes"])]
        row["speedup"], row["efficiency"] = point["speedup"], point["efficiency"]


def collect_rows(manifest: BenchManifest, warmup_steps: int,
                 states: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per run: node count, stage, devices, median tokens/s, efficiency, state."""
    states = states if states is not None else run_states(manifest)
    rows = []
    for run in sorted(manifest.runs, key=lambda r: (r.zero_stage, r.nodes)):
        problem = None
        try:
            measured = measure_run(run.run_dir, warmup_steps)
        except DataError as exc:  # a broken line: this run is unreadable, not the whole bench
            measured = {"real_tokens_per_s": None, "padded_fraction": None, "steps_measured": 0,
                        "last_step": None}
            problem = str(exc)
        tokens = measured["real_tokens_per_s"]
        state = states.get(run.name, "UNKNOWN")
        if problem is None and state == "COMPLETED" and not measured["steps_measured"]:
            problem = (f"completed, but {Path(run.run_dir) / run_files.METRICS} holds no step "
                       f"after the {warmup_steps} warm-up step(s)")
        rows.append({"nodes": run.nodes, "zero_stage": run.zero_stage,
                     "world_size": run.world_size, **measured,
                     "tokens_per_s_per_device": tokens / run.world_size if tokens else None,
                     "state": state, "finished": state == "COMPLETED",
                     "job_id": run.job_id, "run_dir": run.run_dir,
                     "code": run_code(Path(run.run_dir)), "problem": problem})
    add_efficiency(rows)
    return rows


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def runs_table(rows: list[dict[str, Any]]) -> str:
    """Markdown, one line per job: devices, per-device rate, padding, steps measured and state;
    jobs that have not completed are marked with *."""
    header = ["run", "job", "devices", "tokens/s per device", "padded", "steps measured", "state"]
    align = ["---"] * 2 + ["---:"] * 4 + ["---"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    unfinished = []
    for row in rows:
        name = Path(row["run_dir"]).name
        if not row["finished"]:
            unfinished.append(name)
        padded = row.get("padded_fraction")
        cells = [name + ("" if row["finished"] else "*"), row.get("job_id") or "-",
                 _fmt(row["world_size"]), _fmt(row.get("tokens_per_s_per_device")),
                 "-" if padded is None else f"{padded:.1%}", _fmt(row.get("steps_measured")),
                 row["state"]]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    if unfinished:
        lines += ["", f"* not finished ({', '.join(unfinished)}): still going, failed or "
                  "cancelled; its values, if any, come from the steps logged so far"]
    problems = [f"{Path(row['run_dir']).name}: {row['problem']}" for row in rows
                if row.get("problem")]
    if problems:
        lines += ["", *problems]
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ["zero_stage", "nodes", "world_size", "real_tokens_per_s", "tokens_per_s_per_device",
               "speedup", "efficiency", "padded_fraction", "steps_measured", "last_step", "state", "finished",
               "job_id", "run_dir", "code", "problem"]


def scaling_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row.get(key) is None else row.get(key) for key in CSV_COLUMNS})
    return buffer.getvalue()


def bench_header(manifest: BenchManifest, warmup_steps: int,
                 rows: list[dict[str, Any]] | None = None) -> str:
    codes = sorted({row["code"] for row in rows or [] if row.get("code")})
    code = (f" Code: {codes[0]}." if len(codes) == 1 else
            f" Code: {', '.join(codes)} (the runs differ)." if codes else "")
    devices = (f"{manifest.gpus_per_node} GPU(s)" if manifest.gpus_per_node
               else f"{manifest.tasks_per_node} CPU task(s)")
    batch = (f"{manifest.samples_per_device_step} samples per device per step"
             if manifest.samples_per_device_step else "token-budget batches")
    return (f"Scaling of {manifest.model} on {manifest.task}: {devices} per node, {batch} (weak "
            f"scaling), median over steps {warmup_steps + 1}..{manifest.steps} of "
            f"{manifest.steps}.{code}\n\n")


def write_results(manifest: BenchManifest, rows: list[dict[str, Any]],
                  warmup_steps: int) -> tuple[str, list[Path]]:
    """Writes scaling.md/.csv/.json/.png next to bench.json; returns (markdown, paths)."""
    bench_dir = Path(manifest.path).parent
    paths = [bench_dir / f"{RESULT_STEM}.{suffix}" for suffix in ("md", "csv", "json", "png")]
    markdown = (bench_header(manifest, warmup_steps, rows) + scaling_table(rows) + "\n\n"
                + runs_table(rows))
    paths[0].write_text(markdown, encoding="utf-8")
    paths[1].write_text(scaling_csv(rows), encoding="utf-8")
    settings = {key: value for key, value in asdict(manifest).items()
                if key not in ("runs", "path", "kind")}
    # The SLURM settings shared by the jobs: each job's node count is its row's (the base
    # config's default of 1 read as the bench's).
    settings["slurm"] = {key: value for key, value in settings["slurm"].items() if key != "nodes"}
    settings["node_counts"] = sorted({run.nodes for run in manifest.runs})
    paths[2].write_text(json.dumps({"bench": {**settings, "warmup_steps": warmup_steps},
                                    "rows": rows}, indent=1) + "\n", encoding="utf-8")
    scaling_plot(rows, paths[3])
    return markdown, paths


# ---- command line ----------------------------------------------------------------------------

def _wait_timeout(minutes: float | None) -> float | None:
    if minutes is None:
        return None
    if minutes <= 0:
        raise ConfigError("--wait-timeout-min", f"expected a positive number, got {minutes}")
    return minutes * 60


def _collect(manifest: BenchManifest, warmup_steps: int, wait: bool,
             timeout_s: float | None) -> int:
    if warmup_steps < 0 or warmup_steps >= manifest.steps:
        raise ConfigError("--warmup-steps", f"expected 0..{manifest.steps - 1} for a bench of "
                          f"{manifest.steps} steps, got {warmup_steps}")
    states = wait_for_runs(manifest, timeout_s) if wait else run_states(manifest)
    rows = collect_rows(manifest, warmup_steps, states)
    markdown, paths = write_results(manifest, rows, warmup_steps)
    print(markdown, end="")
    print(f"\nwritten: {', '.join(str(path) for path in paths)}")
    failed = False
    for row in rows:
        name = Path(row["run_dir"]).name
        if row["state"] in FINISHED_STATES - {"COMPLETED"}:
            failed = True
            print(f"{name}: {row['state']}; see `seq2seq-es slurm status {row['run_dir']}`",
                  file=sys.stderr)
        if row["problem"]:
            failed = True
            print(f"{name}: {row['problem']}", file=sys.stderr)
    codes = {Path(row["run_dir"]).name: row["code"] for row in rows if row["code"]}
    if len(set(codes.values())) > 1:
        print("warning: the runs ran different code ("
              + ", ".join(f"{name}: {code}" for name, code in codes.items())
              + "): their rates may not compare", file=sys.stderr)
    # A job that ended without completing (or left no readable steps) fails the collect, with
    # --wait or not; a job still going does so only once waited for.
    if failed or (wait and not all(row["finished"] for row in rows)):
        return 1
    return 0


def cmd_collect(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="seq2seq-es slurm bench --collect")
    parser.add_argument("--collect", required=True, metavar="DIR", help="the bench folder")
    parser.add_argument("--warmup-steps", type=int, help="default: the bench's own")
    parser.add_argument("--wait", action="store_true", help="wait for every job to end first")
    parser.add_argument("--wait-timeout-min", type=float, metavar="M",
                        help="with --wait: collect what there is after M minutes (default: "
                             "wait for every job)")
    args = parser.parse_args(argv)
    manifest = load_bench_manifest(args.collect)
    warmup = manifest.warmup_steps if args.warmup_steps is None else args.warmup_steps
    return _collect(manifest, warmup, args.wait, _wait_timeout(args.wait_timeout_min))


def _bench_parser() -> argparse.ArgumentParser:
    # "resolve": the bench's --nodes (a list) replaces the single --nodes of the SLURM options.
    parser = argparse.ArgumentParser(prog="seq2seq-es slurm bench", conflict_handler="resolve",
                                     usage="%(prog)s --bench-dir DIR [options] | --collect DIR "
                                           "[--warmup-steps K] [--wait]",
                                     description="Throughput over node counts and ZeRO stages; "
                                                 "collect with --collect DIR.")
    add_slurm_options(parser)
    parser.add_argument("--bench-dir", required=True)
    parser.add_argument("--nodes", default="1,2,4,8", help="node counts (default 1,2,4,8)")
    parser.add_argument("--zero-stages", default="0,2,3", help="ZeRO stages (default 0,2,3)")
    parser.add_argument("--model", default="barto", help="registry name (default barto)")
    parser.add_argument("--task", default="mlsum",
                        help="default mlsum, whose data the bench generates; another task's "
                             "files go after -- (--data.train_file F --data.validation_file F)")
    parser.add_argument("--steps", type=int, default=30,
                        help="training steps per run (default 30)")
    parser.add_argument("--warmup-steps", type=int, default=5,
                        help="first steps left out of the median (default 5)")
    parser.add_argument("--train-size", type=int,
                        help="generated training rows (default: steps x largest global batch)")
    parser.add_argument("--serial", action="store_true",
                        help="one job at a time (sbatch singleton dependency)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and sbatch script")
    add_data_check_option(parser)
    parser.add_argument("--wait", action="store_true", help="wait for the jobs, then collect")
    parser.add_argument("--wait-timeout-min", type=float, metavar="M",
                        help="with --wait: collect what there is after M minutes (default: "
                             "wait for every job)")
    return parser


def cmd_bench(argv: list[str]) -> int:
    own, overrides = split_overrides(argv)
    args = _bench_parser().parse_args(own)
    node_counts = parse_int_list(args.nodes, "--nodes", minimum=1)
    zero_stages = parse_int_list(args.zero_stages, "--zero-stages", minimum=0, maximum=3)
    check_steps(args.steps, args.warmup_steps)
    check_names([args.model], [args.task])
    user_values = check_bench_overrides(overrides)
    timeout_s = _wait_timeout(args.wait_timeout_min)
    base = slurm_config_from_args(argparse.Namespace(**{**vars(args), "nodes": None}))
    bench_dir = Path(args.bench_dir).absolute()
    runs = plan_bench_runs(bench_dir, node_counts, zero_stages, base.ntasks_per_node)
    check_bench_dir(bench_dir, runs)
    generate = "data.train_file" not in user_values
    if generate and args.task != "mlsum":
        raise ConfigError("--task", f"the bench generates data in MLSUM's schema only; for task "
                          f"'{args.task}' pass its files after -- (--data.train_file ... "
                          "--data.validation_file ...)")
    data_files = ({"train": str(bench_dir / DATA_DIR / "train.jsonl"),
                   "validation": str(bench_dir / DATA_DIR / "validation.jsonl")}
                  if generate else {})
    values = {**parse_overrides(bench_overrides(args.steps, 0, data_files, [])), **user_values}
    cfg = validated_config(args.task, args.model, values, zero_stages)
    per_device = samples_per_device_step(cfg)
    largest = max(runs, key=lambda run: run.world_size)
    train_size = None
    if args.train_size is not None and not generate:
        raise ConfigError("--train-size", "sizes the data the bench generates; this bench "
                          f"reads {user_values['data.train_file']} (--data.train_file)")
    if generate:
        train_size = args.train_size
        if train_size is None:
            train_size = args.steps * samples_per_device_bound(cfg) * largest.world_size
        if train_size < 1:
            raise ConfigError("--train-size", f"expected an integer >= 1, got {train_size}")
        if per_device is not None and train_size < per_device * largest.world_size:
            # The job's own refusal, after its wait in the queue.
            raise ConfigError("--train-size", f"{train_size} rows are less than one step of "
                              f"{largest.name} ({per_device} examples per device x "
                              f"{largest.world_size} devices)")
    else:
        # The user's files: made absolute and checked to exist, as submit and sweep pin them,
        # and read once (unless --no-data-check), so a bad file is refused here, not per job.
        overrides = pinned_paths(overrides, cfg)
        if not args.no_data_check:
            check_local_data([(largest.name, cfg)], largest.world_size)

    manifest = BenchManifest(kind=BENCH_KIND, model=args.model, task=args.task, steps=args.steps,
                             warmup_steps=args.warmup_steps, samples_per_device_step=per_device,
                             gpus_per_node=base.gpus_per_node, tasks_per_node=base.ntasks_per_node,
                             train_size=train_size, data_files=data_files, overrides=overrides,
                             slurm=base.to_dict(), runs=runs, created=round(time.time(), 3))
    # As submit and sweep check (a dry run too, where sinfo answers): a node count the
    # partition cannot hold makes a job that waits for ever; the largest job decides. The GPUs
    # and CPUs asked are a dry run's warning (its script may be meant for another cluster).
    check_partition(base.partition, required=not args.dry_run, origin=origin(args, "partition"))
    check_node_count(dataclasses.replace(base, nodes=max(node_counts)),
                     required=not args.dry_run)
    if args.dry_run:
        return _print_plan(manifest, base, bench_dir, args.entry, args.serial)
    bench_dir.mkdir(parents=True, exist_ok=True)
    if generate:
        write_bench_data(bench_dir, train_size)
    submit_bench(manifest, base, bench_dir, args.entry, args.serial)
    print(f"bench folder: {bench_dir}")
    if args.wait:
        return _collect(manifest, args.warmup_steps, True, timeout_s)
    print(f"collect: seq2seq-es slurm bench --collect {bench_dir} [--wait]")
    return 0


def _print_plan(manifest: BenchManifest, base: SlurmConfig, bench_dir: Path, entry: str,
                serial: bool) -> int:
    first = manifest.runs[0]
    config = run_config(base, first, bench_dir, serial)
    overrides = bench_overrides(manifest.steps, first.zero_stage, manifest.data_files,
                                manifest.overrides)
    plan = RunPlan(name=first.name, model=manifest.model, task=manifest.task, grid_point={},
                   run_dir=first.run_dir,
                   argv=train_argv(manifest.model, manifest.task, first.run_dir, {}, overrides))
    run_manifest = new_manifest("run", [plan], {}, config, Path(first.run_dir) / SUBMITIT_DIR,
                                entry, overrides, None)
    print(dry_run_script(config, run_manifest), end="")
    print(f"# {len(manifest.runs)} job(s) in {bench_dir} (the script above is {first.name}'s):")
    for run in manifest.runs:
        print(f"#   {run.name}: {run.nodes} node(s), {run.world_size} device(s), "
              f"ZeRO-{run.zero_stage}")
    if manifest.train_size:
        print(f"# generated data: {manifest.train_size} training rows in {bench_dir / DATA_DIR}")
    print(f"# train arguments ({first.name}): {' '.join(plan.argv)}")
    return 0


def main(argv: list[str]) -> int:
    """`seq2seq-es slurm bench ...` (argv without 'bench'). Returns the exit status."""
    if any(arg == "--collect" or arg.startswith("--collect=") for arg in split_overrides(argv)[0]):
        return cmd_collect(argv)
    return cmd_bench(argv)
