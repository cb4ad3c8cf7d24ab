"""Where a 16K LEDO training step spends its GPU time (flex against hf: where the remaining gap is), in one short call.

    python3 -m seq2seq_es.bench.gpu_led_profile OUT_DIR [--src-len 16384] [--tgt-len 512] [--impls flex]

For each implementation and checkpointing off/on: build the LED-base-shaped model of
`seq2seq-es bench led`, run warm-up steps, time steps with CUDA events, then profile two steps with
torch.profiler and write, per configuration, `OUT_DIR/<impl>_ckpt<0|1>.txt`: the step time, the
GPU-busy time (the sum of kernel times: a step far longer than it is bound by the host), and the
kernels and operators ranked by GPU time, grouped into encoder attention / linear layers /
elementwise / LM head and loss / optimizer buckets. The last lines printed are a short summary.
On the CPU (`--device cpu`, tiny shape) it runs the same code path for a smoke test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ..kernels.led_attention import apply_led_attention, clear_led_attention_caches
from .led import (LED_BASE_SHAPE, TINY_SHAPE, BenchOptions,
                  _make_batch, build_led_model, enable_checkpointing)

# Kernel-name fragments -> bucket; the first match wins (names are lower-cased).
BUCKETS = (
    ("flex/attention", ("flex", "triton_tem", "attention", "fmha", "softmax")),
    ("matmul", ("gemm", "cutlass", "sm90_xmma", "nvjet", "matmul", "wgmma", "ampere_", "sm80_")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("loss", ("nll", "log_softmax", "cross_entropy")),
    ("copy/cast", ("copy", "cast", "convert", "to_copy", "cat", "index", "gather", "scatter")),
    ("reduce", ("reduce", "sum", "norm")),
)


def bucket_of(name: str) -> str:
    lowered = name.lower()
    for bucket, fragments in BUCKETS:
        if any(fragment in lowered for fragment in fragments):
            return bucket
    return "elementwise/other"


def profile_config(options: BenchOptions, impl: str, src_len: int, checkpointing: bool,
                   timed_steps: int) -> tuple[dict, str]:
    on_cuda = options.device.startswith("cuda")
    model = build_led_model(options.shape, options.device, options.seed)
    apply_led_attention(model, impl)
    if checkpointing:
        enable_checkpointing(model)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=on_cuda)
    batch = _make_batch(options, src_len)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda)

    def step() -> None:
        with torch.profiler.record_function("forward"):
            with autocast:
                loss = model(**batch, use_cache=False).loss
        with torch.profiler.record_function("backward"):
            loss.backward()
        with torch.profiler.record_function("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    started = time.perf_counter()
    for _ in range(options.warmup):
        step()
    if on_cuda:
        torch.cuda.synchronize()
    warmup_s = time.perf_counter() - started
    times = []
    for _ in range(timed_steps):
        if on_cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(begin.elapsed_time(end) / 1000)
        else:
            begin_s = time.perf_counter()
            step()
            times.append(time.perf_counter() - begin_s)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if on_cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    profiled_steps = 2
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(profiled_steps):
            step()
        if on_cuda:
            torch.cuda.synchronize()
    del model, optimizer, batch
    clear_led_attention_caches()
    if on_cuda:
        torch.cuda.empty_cache()

    kernels: dict[str, list[float]] = {}
    for event in prof.events():
        if str(getattr(event, "device_type", "")).endswith("CUDA"):  # a kernel (or memcpy/memset)
            kernels.setdefault(event.name, []).append(event.time_range.elapsed_us())
    kernel_us = {name: sum(values) / profiled_steps for name, values in kernels.items()}
    busy_s = sum(kernel_us.values()) / 1e6
    buckets: dict[str, float] = {}
    for name, us in kernel_us.items():
        buckets[bucket_of(name)] = buckets.get(bucket_of(name), 0.0) + us / 1e6
    step_s = sorted(times)[len(times) // 2]
    summary = {"impl": impl, "src_len": src_len, "checkpointing": checkpointing, "step_s": step_s,
               "gpu_busy_s": busy_s, "host_gap_s": step_s - busy_s if on_cuda else None,
               "kernel_launches": sum(len(v) for v in kernels.values()) / profiled_steps,
               "warmup_s": warmup_s, "buckets_s": buckets}
    lines = [json.dumps(summary), "", "kernels by GPU time per step (us, calls):"]
    for name, us in sorted(kernel_us.items(), key=lambda item: -item[1])[:40]:
        lines.append(f"{us:10.1f} {len(kernels[name]) // profiled_steps:5d}  {bucket_of(name):18s} {name[:140]}")
    sort_key = "self_device_time_total" if on_cuda else "self_cpu_time_total"
    lines += ["", "operators:", prof.key_averages().table(sort_by=sort_key, row_limit=35, max_name_column_width=70)]
    return summary, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--src-len", type=int, default=16384)
    parser.add_argument("--tgt-len", type=int, default=512)
    parser.add_argument("--impls", default="flex")
    parser.add_argument("--checkpointing", default="0,1")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    on_cuda = args.device.startswith("cuda")
    options = BenchOptions(impls=tuple(args.impls.split(",")), src_lengths=(args.src_len,),
                           checkpointing=(), tgt_len=args.tgt_len, batch=1, warmup=args.warmup,
                           steps=args.steps, device=args.device,
                           shape=LED_BASE_SHAPE if on_cuda else TINY_SHAPE)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = []
    for impl in options.impls:
        for flag in args.checkpointing.split(","):
            checkpointing = flag == "1"
            try:
                summary, report = profile_config(options, impl, args.src_len, checkpointing, args.steps)
            except Exception as error:  # one configuration failing must not lose the others
                summary, report = {"impl": impl, "checkpointing": checkpointing,
                                   "error": f"{type(error).__name__}: {error}"[:400]}, ""
            (out_dir / f"{impl}_ckpt{int(checkpointing)}.txt").write_text(report + "\n")
            summaries.append(summary)
            print(json.dumps(summary), flush=True)
    (out_dir / "summary.json").write_text(json.dumps(summaries, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
