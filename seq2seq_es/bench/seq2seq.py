"""`seq2seq-es bench`: the Seq2SeqTrainer route beside this package's loop, in one process.

    seq2seq-es bench [--model barto|t5s|barto-tiny|t5s-tiny|bart-large-shape] [--device cuda|cpu]
                     [--dist fixed|mlsum|sqac|miam[,...]] [--steps N] [--warmup N]
                     [--impls hf_trainer,loop,loop_budget,loop_budget_compile,...]
                     [--batch 32] [--max-tokens N] [--examples N] [--dropout P] [--seed S]
                     [--json] [--jsonl-out FILE]

Every row trains a fresh random-weight model of the chosen shape on the same synthetic examples
(`bench.data`) for warmup + steps optimizer steps; the rows are described in `bench.impls`.
Measured per row, over the steps after the warm-up:

- real_tokens_per_s: non-pad source plus target tokens of those steps / their total time (a
  slow step, a recompilation say, counts in full: real_tokens_per_step / step_s can be far
  higher, as step_s is a median);
- padded_fraction: pad tokens / all tokens of the padded batches those steps computed;
- step_s: median step time, end of one step to the end of the next (batch fetch included);
- tflops: model FLOPs of those steps (`bench.flops.train_flops`: matmuls and attention, forward
  plus backward = 3x forward, on the padded shapes computed) / their total time;
- mfu: tflops against a matmul measured in the same process (bf16 8192^3 on a GPU, fp32 1024^3
  on the CPU);
- peak_mem_gib: torch.cuda.max_memory_allocated on a GPU (reset before each row); on the CPU
  the peak resident size of the whole process during the row, which counts the libraries and
  whatever earlier rows keep (about 0.5 GiB before any model), so compare CPU rows loosely.

`seq2seq-es bench led` measures the LED attention implementations at 4K-16K source tokens.

The token budget of `budget` rows defaults to the average padded tokens of the fixed-size
random-order batches, so their steps carry as many tokens as the other rows' (`--max-tokens`
sets it). A row that fails (out of memory, say) reports its error in its row; the others run.
stdout holds only the table, or with `--json` one JSON object per row; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import ConfigError, UnknownNameError, comma_names
from .data import DISTRIBUTIONS, make_data, padded_fraction
from .flops import ModelShape, matmul_ceiling, train_flops
from .impls import (LOOP_TOKENS, BenchCase, ImplSpec, RowRun, parse_impl, random_batch_budget,
                    run_impl)
from .shapes import SHAPES, get_shape, make_config
from .timing import free_memory, peak_memory_gib

ROW_KEYS = ("impl", "real_tokens_per_s", "padded_fraction", "step_s", "tflops", "mfu",
            "peak_mem_gib")
DEFAULT_IMPLS = {
    "cuda": "hf_trainer,loop,loop_budget,loop_budget_compile,loop_budget_compile_lean",
    # Compiling takes minutes on a CPU: the compiled variants run there only when asked for.
    "cpu": "hf_trainer,loop,loop_budget,loop_budget_fused",
}


@dataclass
class BenchOptions:
    model: str | None = None          # None: barto on a GPU, barto-tiny on the CPU
    device: str | None = None         # None: cuda when available
    dists: tuple[str, ...] = ("fixed",)
    impls: tuple[str, ...] | None = None
    steps: int = 20
    warmup: int = 5
    batch: int = 32
    max_tokens: int | None = None
    examples: int | None = None
    dropout: float | None = None
    seed: int = 0
    # (dist, impl) pairs to run instead of every impl on every dist (the GPU script's sections)
    pairs: tuple[tuple[str, str], ...] | None = None

    def jobs(self) -> list[tuple[str, str]]:
        if self.pairs is not None:
            return list(self.pairs)
        return [(dist, impl) for dist in self.dists for impl in self.impls]


def parse_args(argv: list[str]) -> tuple[BenchOptions, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="seq2seq-es bench",
        description="Throughput of the Seq2SeqTrainer route and of this package's loop, "
                    "side by side.",
        # What each figure measures, from the module's docstring (it was in the code only).
        epilog=__doc__[__doc__.index("Every row trains"):],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(SHAPES), default=None,
                        help="shape (default: barto on a GPU, barto-tiny on the CPU)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None)
    parser.add_argument("--dist", default="fixed",
                        help=f"length distribution(s), comma-separated: {', '.join(DISTRIBUTIONS)}")
    parser.add_argument("--steps", type=int, default=20,
                        help="timed optimizer steps per row (default 20)")
    parser.add_argument("--warmup", type=int, default=5,
                        help="untimed steps before them (default 5)")
    parser.add_argument("--impls", default=None,
                        help="comma-separated rows: hf_trainer, or loop with any of the tokens "
                        + ", ".join(LOOP_TOKENS) + " joined by _ (e.g. loop_bucket_engine: "
                        "bucketed batches, model.compile; seq2seq_es/bench/impls.py says what "
                        "each switches on); default: " + DEFAULT_IMPLS["cuda"]
                        + " on a GPU; " + DEFAULT_IMPLS["cpu"] + " on the CPU")
    parser.add_argument("--batch", type=int, default=32,
                        help="examples per fixed-size batch (default 32)")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="token budget of budget rows (default: the fixed batches' average "
                        "padded tokens)")
    parser.add_argument("--examples", type=int, default=None,
                        help="synthetic examples (default: 2 x batch x (warmup + steps), >= 256)")
    parser.add_argument("--dropout", type=float, default=None,
                        help="dropout of every row's model (default: the real config's 0.1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="one JSON object per row on stdout")
    parser.add_argument("--jsonl-out", default=None,
                        help="also append each row to this file as soon as it is measured")
    ns = parser.parse_args(argv)
    options = BenchOptions(
        model=ns.model, device=ns.device, dists=tuple(comma_names("--dist", ns.dist)),
        impls=tuple(comma_names("--impls", ns.impls)) if ns.impls else None, steps=ns.steps,
        warmup=ns.warmup,
        batch=ns.batch, max_tokens=ns.max_tokens, examples=ns.examples, dropout=ns.dropout,
        seed=ns.seed)
    return options, ns


def validate(options: BenchOptions) -> None:
    for dist in options.dists:
        if dist not in DISTRIBUTIONS:
            raise ConfigError("--dist", f"unknown distribution '{dist}'; known: "
                              + ", ".join(DISTRIBUTIONS))
    if not options.dists:
        raise ConfigError("--dist", "name at least one distribution")
    twice = sorted({dist for dist in options.dists if options.dists.count(dist) > 1})
    if twice:  # each row would run twice (it was blamed on --impls)
        raise ConfigError("--dist", f"{', '.join(twice)} given twice")
    if options.steps < 1:
        raise ConfigError("--steps", "must be at least 1")
    if options.warmup < 0:
        raise ConfigError("--warmup", "must be >= 0")
    if options.batch < 1:
        raise ConfigError("--batch", "must be at least 1")
    if options.max_tokens is not None and options.max_tokens < 1:
        raise ConfigError("--max-tokens", "must be a positive token count")
    if options.examples is not None and options.examples < options.batch:
        raise ConfigError("--examples", f"must be at least the batch size ({options.batch})")
    if options.dropout is not None and not 0.0 <= options.dropout < 1.0:
        raise ConfigError("--dropout", "must be in [0, 1)")
    if options.impls is not None and not options.impls:
        raise ConfigError("--impls", "name at least one row")
    for name in options.impls or ():
        try:
            parse_impl(name)
        except UnknownNameError as exc:
            raise ConfigError("--impls", str(exc)) from None
    for dist, name in options.pairs or ():
        if dist not in options.dists:
            raise ConfigError("--dist", f"row {name} asks for distribution '{dist}', which is not "
                              f"among {', '.join(options.dists)}")
        parse_impl(name)
    if options.impls is not None or options.pairs is not None:
        jobs = options.jobs()
        repeated = sorted({f"{name} on {dist}" for dist, name in jobs
                           if jobs.count((dist, name)) > 1})
        if repeated:
            raise ConfigError("--impls", "rows listed twice: " + ", ".join(repeated))


def resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device", "cuda was asked for but torch sees no CUDA device "
                          f"(torch {torch.__version__})")
    return torch.device("cuda", torch.cuda.current_device()) if name == "cuda" \
        else torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# Rows


def summarize(spec: ImplSpec, run: RowRun, case: BenchCase, model_shape: ModelShape,
              ceiling: float) -> dict:
    step_s, compute_s = run.clock.intervals()
    if len(step_s) != case.total_steps or len(run.step_batches) < case.total_steps:
        raise RuntimeError(f"{spec.name} ran {len(step_s)} timed steps and recorded "
                           f"{len(run.step_batches)} batches; expected {case.total_steps}")
    timed = slice(case.warmup, case.total_steps)
    seconds = sum(step_s[timed])
    batches = [b for step in run.step_batches[timed] for b in step]
    real = sum(b.real_tokens for b in batches)
    flops = sum(train_flops(model_shape, b.batch, b.source_len, b.target_len) for b in batches)
    tflops = flops / seconds / 1e12
    return {
        "impl": spec.name,
        "real_tokens_per_s": real / seconds,
        "padded_fraction": padded_fraction(batches),
        "step_s": statistics.median(step_s[timed]),
        "tflops": tflops,
        "mfu": tflops * 1e12 / ceiling,
        "peak_mem_gib": peak_memory_gib(case.device),
        "compute_s": statistics.median(compute_s[timed]),
        "real_tokens_per_step": real / case.steps,
        "padded_tokens_per_step": sum(b.padded_tokens for b in batches) / case.steps,
        "examples_per_step": sum(b.batch for b in batches) / case.steps,
        "max_tokens": case.max_tokens if spec.budget or spec.bucket else None,
        "features": spec.describe(case.shape.family),
        **run.extra,
    }


def failed_row(spec_name: str, exc: BaseException) -> dict:
    out_of_memory = isinstance(exc, torch.OutOfMemoryError) or \
        isinstance(exc.__cause__, torch.OutOfMemoryError)
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return {**{key: None for key in ROW_KEYS}, "impl": spec_name,
            "error": ("out of memory: " if out_of_memory else f"{type(exc).__name__}: ") + message}


def _row_order(jobs: list[tuple[ImplSpec, str]]) -> list[tuple[ImplSpec, str]]:
    # accelerate decides once per process whether it runs distributed; the loop's process group
    # must not exist yet when it does, so the Trainer rows of every distribution go first.
    return sorted(jobs, key=lambda job: job[0].route != "hf_trainer")


def make_case(options: BenchOptions, dist: str, device: torch.device) -> BenchCase:
    shape = get_shape(options.model)
    total = options.warmup + options.steps
    n = options.examples or max(2 * options.batch * total, 256)
    data = make_data(dist, n, shape.vocab_size, shape.first_plain_id, options.seed,
                     max_source=shape.max_positions)
    budget = options.max_tokens or random_batch_budget(data.source_lengths, data.target_lengths,
                                                       options.batch, options.seed)
    return BenchCase(shape, dist, device, data, options.batch, budget, options.warmup,
                     options.steps, options.seed, options.dropout)


def run_bench(options: BenchOptions, on_row: Callable[[dict], None] | None = None,
              log: Callable[[str], None] | None = None) -> list[dict]:
    """All rows for every distribution; each row dict also names its model, dist and device."""
    log = log or (lambda message: None)
    device = resolve_device(options.device)
    options.model = options.model or ("barto" if device.type == "cuda" else "barto-tiny")
    options.impls = options.impls or tuple(comma_names("--impls", DEFAULT_IMPLS[device.type]))
    validate(options)
    shape = get_shape(options.model)
    model_shape = ModelShape.from_config(make_config(shape))
    ceiling = matmul_ceiling(device)
    log(f"matmul ceiling {ceiling['matmul']}: {ceiling['flops_per_s'] / 1e12:.3g} TFLOP/s")
    cases = {dist: make_case(options, dist, device) for dist in options.dists}
    jobs = _row_order([(parse_impl(name), dist) for dist, name in options.jobs()])
    results: dict[tuple[str, str], dict] = {}
    for spec, dist in jobs:
        case = cases[dist]
        log(f"{options.model} {dist} {spec.name}: {case.total_steps} steps "
            f"(batch {case.batch_size}, budget {case.max_tokens} tokens)")
        started = time.perf_counter()
        free_memory(device)
        try:
            row = summarize(spec, run_impl(case, spec), case, model_shape,
                            ceiling["flops_per_s"])
        except Exception as exc:  # one row's failure is its own (OutOfMemoryError included)
            traceback.print_exc(file=sys.stderr)
            row = failed_row(spec.name, exc)
        free_memory(device)
        row.update({"model": options.model, "dist": dist, "device": _device_name(device),
                    "batch": case.batch_size, "steps": case.steps, "warmup": case.warmup,
                    "ceiling_tflops": ceiling["flops_per_s"] / 1e12,
                    "row_wall_s": time.perf_counter() - started})
        row.setdefault("error", None)
        results[(spec.name, dist)] = row
        log(_progress_line(row))
        if on_row is not None:
            on_row(row)
    rows = [results[(name, dist)] for dist, name in options.jobs()]
    add_speedups(rows)
    return rows


def add_speedups(rows: list[dict]) -> None:
    """speedup_vs_hf: real tokens/s over the hf_trainer row's, per (model, dist)."""
    reference = {(r["model"], r["dist"]): r["real_tokens_per_s"] for r in rows
                 if r["impl"] == "hf_trainer" and r["real_tokens_per_s"]}
    for row in rows:
        base = reference.get((row["model"], row["dist"]))
        row["speedup_vs_hf"] = row["real_tokens_per_s"] / base \
            if base and row["real_tokens_per_s"] else None


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _progress_line(row: dict) -> str:
    if row["error"]:
        return f"  {row['impl']}: FAILED ({row['error']})"
    return (f"  {row['impl']}: {row['real_tokens_per_s']:,.0f} real tok/s, "
            f"padded {row['padded_fraction']:.1%}, step {row['step_s']:.4f} s, "
            f"{row['tflops']:.3g} TFLOP/s, row took {row['row_wall_s']:.0f} s")


# ---------------------------------------------------------------------------------------------
# Output


def _fmt(value, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def format_table(rows: list[dict]) -> str:
    """Markdown table, one line per row, grouped by (model, dist) in the rows' order."""
    header = ("| model | dist | impl | real tok/s | vs hf | padded | step s | TFLOP/s | MFU "
              "| peak GiB | notes |")
    lines = [header, "|" + "---|" * 11]
    for r in rows:
        notes = r["error"] or r.get("features", "")
        lines.append(
            f"| {r['model']} | {r['dist']} | {r['impl']} | {_fmt(r['real_tokens_per_s'], ',.0f')} "
            f"| {_fmt(r.get('speedup_vs_hf'), '.2f')}x | {_fmt(r['padded_fraction'], '.1f', 100)}% "
            f"| {_fmt(r['step_s'], '.4f')} | {_fmt(r['tflops'], '.3g')} "
            f"| {_fmt(r['mfu'], '.1f', 100)}% | {_fmt(r['peak_mem_gib'], '.2f')} | {notes} |")
    return "\n".join(lines)


def _quiet_libraries() -> None:
    import deepspeed  # noqa: F401  (creates its logger, at INFO, bound to the current stdout)

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def _json_safe(row: dict) -> dict:
    return {k: (v if isinstance(v, (str, int, float, bool, type(None))) else str(v))
            for k, v in row.items()}


def main(argv: list[str] | None = None) -> int:
    options, ns = parse_args(list(sys.argv[1:] if argv is None else argv))
    validate(options)
    real_stdout = sys.stdout

    def log(message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def on_row(row: dict) -> None:
        if ns.jsonl_out:
            with open(ns.jsonl_out, "a", encoding="utf-8") as out:
                out.write(json.dumps(_json_safe(row)) + "\n")

    # Libraries print to stdout (the Trainer its summary; DeepSpeed's logger binds stdout when
    # first imported): everything but the rows or the table goes to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        _quiet_libraries()
        rows = run_bench(options, on_row=on_row, log=log)
    if ns.json:
        for row in rows:
            print(json.dumps(_json_safe(row)), file=real_stdout, flush=True)
    else:
        print(f"{options.model} on {rows[0]['device']}, matmul ceiling "
              f"{rows[0]['ceiling_tflops']:.3g} TFLOP/s, {options.steps} timed steps after "
              f"{options.warmup} warm-up", file=real_stdout)
        print(format_table(rows), file=real_stdout, flush=True)
    return 1 if any(row["error"] for row in rows) else 0

