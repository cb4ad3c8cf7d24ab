"""Where a bench row's step time goes: one row of `seq2seq-es bench` under torch.profiler.

    python3 -m seq2seq_es.bench.gpu_step_profile OUT_DIR [--model barto] [--dist fixed]
        [--impls hf_trainer,loop_fused] [--warmup 2] [--steps 3]

Each row runs as the bench runs it (`bench.impls.run_impl`: the same config switches, batches
and train step) with the profiler recording host and device activity over the whole row, so
the model's set-up is in the tables too (the kernels of its random initialisation; they are
few). OUT_DIR/<model>_<dist>_<impl>.txt receives the operators sorted by device time and by host
time; stdout gets one line per row: the median step, the device time the profiler saw per
timed step, and the attention kernels by kind (cuDNN's, flash, memory-efficient).

Why: on the H200 of 2026-12-04 token-budget batches took 0.47 s a step against 0.11 s without
cuDNN's attention, the same kernels' time: host time (found by this script; cuDNN is off by
default since). The loop's fixed-shape step then took 0.081 s where the Trainer's took 0.058 s
on the same model and batches; gpu_all.sh profiles those two rows.
On the CPU it profiles the tiny model (a smoke test of this script).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from .impls import parse_impl, run_impl
from .seq2seq import BenchOptions, make_case, resolve_device

# Substrings of kernel names, per kind of attention kernel (device time summed per kind).
ATTENTION_KINDS = {"cudnn": ("cudnn", "sm90_xmma", "fmha_cudnn"), "flash": ("flash",),
                   "efficient": ("fmha_cutlass", "efficient_attention", "mem_eff")}


def _device_time_us(event) -> float:
    for name in ("self_device_time_total", "self_cuda_time_total"):
        value = getattr(event, name, None)
        if value is not None:
            return float(value)
    return 0.0


def attention_kernel_times(events) -> dict[str, float]:
    """Device microseconds per attention kernel kind, from the profiler's key averages."""
    totals = {kind: 0.0 for kind in ATTENTION_KINDS}
    for event in events:
        name = event.key.lower()
        for kind, needles in ATTENTION_KINDS.items():
            if any(needle in name for needle in needles):
                totals[kind] += _device_time_us(event)
                break
    return totals


def profile_row(options: BenchOptions, dist: str, impl: str, out_dir: Path) -> str:
    from torch.profiler import ProfilerActivity, profile

    device = resolve_device(options.device)
    case = make_case(options, dist, device)
    spec = parse_impl(impl)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run = run_impl(case, spec)
    step_s, _ = run.clock.intervals()
    timed = step_s[case.warmup:] or step_s
    events = prof.key_averages()
    on_device = device.type == "cuda"
    device_us = sum(_device_time_us(e) for e in events) if on_device else 0.0
    sort_key = "self_device_time_total" if on_device else "self_cpu_time_total"
    tables = [f"# {options.model} {dist} {impl} on {device.type}: steps {[round(s, 4) for s in step_s]}",
              f"## by {sort_key}", events.table(sort_by=sort_key, row_limit=25),
              "## by self_cpu_time_total", events.table(sort_by="self_cpu_time_total", row_limit=25)]
    name = f"{options.model}_{dist}_{impl}.txt"
    (out_dir / name).write_text("\n".join(tables) + "\n")
    attention = attention_kernel_times(events)
    steps_run = len(step_s) + int(run.extra.get("priming_steps") or 0)
    line = (f"{options.model} {dist} {impl}: median step {statistics.median(timed):.4f} s over "
            f"{len(timed)} timed steps")
    if on_device:
        line += (f"; device time {device_us / 1e6 / max(steps_run, 1):.4f} s a step (all "
                 f"{steps_run} steps run); attention kernels, ms a step: "
                 + ", ".join(f"{kind} {us / 1e3 / max(steps_run, 1):.2f}"
                             for kind, us in attention.items()))
    return line + f" ({name})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--model", default=None, help="bench shape (default: barto on a GPU, "
                        "barto-tiny on the CPU)")
    parser.add_argument("--dist", default="fixed")
    parser.add_argument("--impls", default="hf_trainer,loop_fused")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(None)
    options = BenchOptions(model=args.model or ("barto" if device.type == "cuda" else "barto-tiny"),
                           dists=(args.dist,), steps=args.steps, warmup=args.warmup,
                           batch=args.batch)
    failed = 0
    for impl in [part.strip() for part in args.impls.split(",") if part.strip()]:
        try:
            print(profile_row(options, args.dist, impl, args.out_dir), flush=True)
        except Exception as exc:  # one row's failure must not hide the next
            failed += 1
            print(f"{options.model} {args.dist} {impl}: {type(exc).__name__}: {exc}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
