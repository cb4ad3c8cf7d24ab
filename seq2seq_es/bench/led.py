"""`seq2seq-es bench led`: LED training-step throughput per attention implementation and source length.

For each implementation (hf, sdpa, flex), source length (default 4096, 8192, 16384) and gradient
checkpointing off/on, one run builds a randomly initialised LED-base-shaped model (d_model 768, 6+6
layers, 12 heads, FFN 3072, vocab 50264, attention window 1024, 16384 encoder positions), and times
training steps (forward, backward, fused AdamW step) on random tokens: batch 1, target 512, bf16 autocast
on a GPU, global attention on the first source token. It reports the median step after warm-up, source
tokens/s, model TFLOP/s and peak memory (torch.cuda.max_memory_allocated).

Model FLOPs (see `model_flops_per_step`) count the matmuls and attention score/value products of the
forward pass and take forward+backward as 3x forward; recomputation under checkpointing is not counted.
The encoder counts only the work LED's attention defines: per non-global row attention_window+1 window
keys plus the global keys, the global rows against all tokens, and the key_global/value_global
projections of every token (which LED computes); decoder self-attention is counted as full T x T.

One configuration failing (out of memory, an unsupported combination) gives a row with status "oom",
"error" or "skipped" and the bench goes on. `--json` prints one JSON object per row, one per line.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from ..errors import ConfigError
from ..kernels.led_attention import ATTENTION_IMPLS, apply_led_attention, clear_led_attention_caches


@dataclass(frozen=True)
class LedShape:
    """The sizes of the benchmarked LED model."""

    d_model: int
    encoder_layers: int
    decoder_layers: int
    heads: int
    ffn_dim: int
    vocab_size: int
    attention_window: int
    max_source_positions: int
    max_target_positions: int


LED_BASE_SHAPE = LedShape(d_model=768, encoder_layers=6, decoder_layers=6, heads=12, ffn_dim=3072,
                          vocab_size=50264, attention_window=1024, max_source_positions=16384,
                          max_target_positions=1024)
TINY_SHAPE = LedShape(d_model=32, encoder_layers=2, decoder_layers=2, heads=4, ffn_dim=64, vocab_size=128,
                      attention_window=32, max_source_positions=1024, max_target_positions=64)

ROW_KEYS = ("impl", "src_len", "tgt_len", "batch", "checkpointing", "device", "dtype", "status", "error",
            "step_s", "src_tok_s", "model_tflop_per_step", "model_tflop_s", "peak_gib", "warmup", "steps")


@dataclass
class BenchOptions:
    """What to run; see `parse_args` for the flags."""

    impls: tuple[str, ...]
    src_lengths: tuple[int, ...]
    checkpointing: tuple[bool | str, ...]  # False, True (every layer) or "encoder" (its layers only)
    tgt_len: int
    batch: int
    warmup: int
    steps: int
    device: str
    shape: LedShape
    global_tokens: int = 1
    seed: int = 0
    json_output: bool = False


def build_led_model(shape: LedShape, device: str, seed: int = 0):
    """A randomly initialised LED with the given shape (dropout as LED-base: 0.1, attention 0.0)."""
    from transformers import LEDConfig, LEDForConditionalGeneration

    config = LEDConfig(
        vocab_size=shape.vocab_size, d_model=shape.d_model, encoder_layers=shape.encoder_layers,
        decoder_layers=shape.decoder_layers, encoder_attention_heads=shape.heads,
        decoder_attention_heads=shape.heads, encoder_ffn_dim=shape.ffn_dim, decoder_ffn_dim=shape.ffn_dim,
        attention_window=[shape.attention_window] * shape.encoder_layers,
        max_encoder_position_embeddings=shape.max_source_positions,
        max_decoder_position_embeddings=shape.max_target_positions,
        dropout=0.1, attention_dropout=0.0, activation_dropout=0.0, use_cache=False)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LEDForConditionalGeneration(config)
    return model


def model_flops_per_step(shape: LedShape, src_len: int, tgt_len: int, batch: int, global_tokens: int) -> float:
    """Model FLOPs of one training step (3x the forward's matmul and attention FLOPs)."""
    d, f, s, t, g = shape.d_model, shape.ffn_dim, src_len, tgt_len, global_tokens
    window_keys = min(shape.attention_window + 1, s)
    encoder_layer = (
        4 * 2 * s * d * d  # query, key, value, output projections
        + 2 * 2 * s * d * d + 2 * g * d * d  # key_global/value_global on every token, query_global
        + 2 * 2 * s * d * f  # feed-forward
        + 2 * 2 * (s - g) * (window_keys + g) * d  # window and global keys of the other rows
        + 2 * 2 * g * s * d)  # global rows against every token
    decoder_layer = (
        4 * 2 * t * d * d  # self-attention projections
        + 2 * 2 * t * d * d + 2 * 2 * s * d * d  # cross-attention query/output, key/value of the memory
        + 2 * 2 * t * d * f  # feed-forward
        + 2 * 2 * t * t * d  # self-attention scores and values
        + 2 * 2 * t * s * d)  # cross-attention scores and values
    lm_head = 2 * t * d * shape.vocab_size
    forward = shape.encoder_layers * encoder_layer + shape.decoder_layers * decoder_layer + lm_head
    return 3.0 * forward * batch


def enable_checkpointing(model, scope: str = "all") -> None:
    """Non-reentrant activation checkpointing of every layer (scope "encoder": the encoder's), as
    training turns it on with model.gradient_checkpointing (and model.checkpoint_scope)."""
    from ..engine.builders import set_activation_checkpointing

    set_activation_checkpointing(model, True, scope=scope)


def _is_out_of_memory(error: BaseException) -> bool:
    # torch's CPU allocator says "can't allocate memory" (DefaultCPUAllocator), not "out of memory"
    message = str(error).lower()
    return (isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in message
            or "can't allocate memory" in message)


def _free_device_memory(device: str) -> None:
    gc.collect()
    clear_led_attention_caches()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _make_batch(options: BenchOptions, src_len: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(options.seed + src_len)
    vocab = options.shape.vocab_size
    input_ids = torch.randint(3, vocab, (options.batch, src_len), generator=generator)
    labels = torch.randint(3, vocab, (options.batch, options.tgt_len), generator=generator)
    global_attention_mask = torch.zeros_like(input_ids)
    global_attention_mask[:, :options.global_tokens] = 1
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
             "global_attention_mask": global_attention_mask, "labels": labels}
    return {name: tensor.to(options.device) for name, tensor in batch.items()}


def time_training_steps(options: BenchOptions, impl: str, src_len: int, checkpointing: bool) -> dict:
    """Build the model, run warm-up and timed training steps; the measurements of one row."""
    model = build_led_model(options.shape, options.device, options.seed)
    apply_led_attention(model, impl)
    if checkpointing:
        enable_checkpointing(model, "encoder" if checkpointing == "encoder" else "all")
    model.train()
    on_cuda = options.device.startswith("cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=on_cuda)
    batch = _make_batch(options, src_len)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda)

    def training_step() -> None:
        with autocast:
            loss = model(**batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(options.warmup):
        training_step()
    step_times = []
    for _ in range(options.steps):
        _synchronize(options.device)
        start = time.perf_counter()
        training_step()
        _synchronize(options.device)
        step_times.append(time.perf_counter() - start)
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if on_cuda else None
    del model, optimizer, batch
    step_s = statistics.median(step_times)
    flops = model_flops_per_step(options.shape, src_len, options.tgt_len, options.batch, options.global_tokens)
    return {"step_s": step_s, "src_tok_s": src_len * options.batch / step_s,
            "model_tflop_per_step": flops / 1e12, "model_tflop_s": flops / step_s / 1e12,
            "peak_gib": peak_gib}


def empty_row(options: BenchOptions, impl: str, src_len: int, checkpointing: bool) -> dict:
    """A row with the configuration filled in, status "ok" and no measurements yet."""
    row = {key: None for key in ROW_KEYS}
    row.update(impl=impl, src_len=src_len, tgt_len=options.tgt_len, batch=options.batch,
               checkpointing=checkpointing, device=options.device,
               dtype="bf16-autocast" if options.device.startswith("cuda") else "fp32",
               warmup=options.warmup, steps=options.steps, status="ok")
    return row


def bench_row(options: BenchOptions, impl: str, src_len: int, checkpointing: bool) -> dict:
    """One row of the table; failures become the row's status instead of an exception."""
    row = empty_row(options, impl, src_len, checkpointing)
    if impl == "flex" and not options.device.startswith("cuda"):
        row.update(status="skipped", error="FlexAttention has no backward pass on the CPU")
        return row
    try:
        row.update(time_training_steps(options, impl, src_len, checkpointing))
    except Exception as error:  # one configuration must not end the whole bench
        row.update(status="oom" if _is_out_of_memory(error) else "error",
                   error=f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300] if str(error).strip() else ''}")
    finally:
        _free_device_memory(options.device)
    return row


def run_bench(options: BenchOptions, on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """All rows: for each source length, each implementation, checkpointing off then on."""
    rows = []
    for src_len in options.src_lengths:
        for impl in options.impls:
            for checkpointing in options.checkpointing:
                row = bench_row(options, impl, src_len, checkpointing)
                rows.append(row)
                if on_row is not None:
                    on_row(row)
    return rows


def _format_number(value, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def format_table(rows: list[dict]) -> str:
    """A markdown table of the rows; step-time ratios against hf at the same length and checkpointing
    (encoder-only checkpointing against hf's full checkpointing: the HF route checkpoints every layer)."""
    baseline = {(r["src_len"], r["checkpointing"]): r["step_s"] for r in rows
                if r["impl"] == "hf" and r["status"] == "ok"}
    lines = ["| impl | src x tgt x batch | checkpointing | step s | vs hf | src tok/s | model TFLOP/s "
             "| peak GiB | status |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = baseline.get((r["src_len"], bool(r["checkpointing"])))
        speedup = f"{base / r['step_s']:.2f}x" if base and r["step_s"] else "-"
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['error']}"
        lines.append(
            f"| {r['impl']} | {r['src_len']} x {r['tgt_len']} x {r['batch']} | "
            f"{checkpointing_label(r['checkpointing'])} | {_format_number(r['step_s'], 4)} | {speedup} | "
            f"{_format_number(r['src_tok_s'], 0)} | {_format_number(r['model_tflop_s'], 1)} | "
            f"{_format_number(r['peak_gib'], 2)} | {status} |")
    return "\n".join(lines)


CHECKPOINTING_MODES = {"off": False, "on": True, "encoder": "encoder"}


def checkpointing_label(mode: bool | str) -> str:
    return "encoder only" if mode == "encoder" else "yes" if mode else "no"


def parse_checkpointing(text: str) -> tuple[bool | str, ...]:
    names = ["off", "on"] if text == "both" else [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in CHECKPOINTING_MODES]
    if unknown or not names:
        raise ConfigError("--checkpointing", f"unknown mode(s) {unknown or names}; known: both, "
                                             f"{', '.join(CHECKPOINTING_MODES)}")
    return tuple(CHECKPOINTING_MODES[name] for name in names)


def _parse_int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(flag, f"expected comma-separated integers, got '{text}'") from None
    if not values or any(value <= 0 for value in values):
        raise ConfigError(flag, f"expected positive integers, got '{text}'")
    return values


def parse_args(argv: list[str] | None) -> BenchOptions:
    parser = argparse.ArgumentParser(prog="seq2seq-es bench led", description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", default=",".join(ATTENTION_IMPLS),
                        help="comma-separated attention implementations among hf, sdpa, flex (default: all)")
    parser.add_argument("--lengths", default=None,
                        help="comma-separated source lengths (default 4096,8192,16384; tiny: 256,512)")
    parser.add_argument("--checkpointing", default="both",
                        help="comma-separated among off, on (every layer), encoder (the encoder's layers "
                        "only, model.checkpoint_scope encoder); both: off,on")
    parser.add_argument("--target-length", type=int, default=None, help="target tokens (default 512; tiny 16)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; tiny 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10; tiny 2)")
    parser.add_argument("--global-tokens", type=int, default=1, help="leading source tokens with global attention")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--tiny", action="store_true", help="a tiny LED shape for smoke tests")
    parser.add_argument("--json", action="store_true", help="print one JSON object per row instead of a table")
    args = parser.parse_args(argv)

    impls = tuple(part.strip() for part in args.impl.split(",") if part.strip())
    unknown = [impl for impl in impls if impl not in ATTENTION_IMPLS]
    if unknown or not impls:
        raise ConfigError("--impl", f"unknown attention implementation(s) {unknown or impls}; "
                                    f"known: {', '.join(ATTENTION_IMPLS)}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device", "cuda was asked for but torch sees no CUDA device")
    shape = TINY_SHAPE if args.tiny else LED_BASE_SHAPE
    lengths = _parse_int_list(args.lengths or ("256,512" if args.tiny else "4096,8192,16384"), "--lengths")
    too_long = [length for length in lengths if length > shape.max_source_positions]
    if too_long:
        raise ConfigError("--lengths", f"{too_long} exceed the model's {shape.max_source_positions} positions")
    tgt_len = args.target_length or (16 if args.tiny else 512)
    if not 0 < tgt_len <= shape.max_target_positions:
        raise ConfigError("--target-length", f"must be in 1..{shape.max_target_positions}, got {tgt_len}")
    if args.batch_size <= 0:
        raise ConfigError("--batch-size", f"must be positive, got {args.batch_size}")
    if not 0 <= args.global_tokens <= min(lengths):
        raise ConfigError("--global-tokens", f"must be in 0..{min(lengths)}, got {args.global_tokens}")
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    steps = args.steps if args.steps is not None else (2 if args.tiny else 10)
    if warmup < 0 or steps <= 0:
        raise ConfigError("--steps", f"need warmup >= 0 and steps > 0, got {warmup} and {steps}")
    checkpointing = parse_checkpointing(args.checkpointing)
    return BenchOptions(impls=impls, src_lengths=lengths, checkpointing=checkpointing, tgt_len=tgt_len,
                        batch=args.batch_size, warmup=warmup, steps=steps, device=device, shape=shape,
                        global_tokens=args.global_tokens, json_output=args.json)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `seq2seq-es bench led`; returns 0 when every row ran (or was skipped), 1 otherwise."""
    options = parse_args(argv)

    def report_progress(row: dict) -> None:
        print(f"[bench led] {row['impl']} src {row['src_len']} checkpointing {row['checkpointing']}: "
              f"{row['status']}" + (f" {row['step_s']:.4f} s/step" if row["step_s"] else ""),
              file=sys.stderr, flush=True)

    rows = run_bench(options, on_row=report_progress)
    if options.json_output:
        for row in rows:
            print(json.dumps(row))
    else:
        print(f"LED {asdict(options.shape)} on {options.device}")
        print(format_table(rows))
    return 0 if all(row["status"] in ("ok", "skipped") for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
