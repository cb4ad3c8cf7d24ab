"""Why LEDO's flex encoder attention forward is slow: one-call ablation for a GPU session.

On an H100 (BENCHMARKS.md, profile of 2026-11-26) our FlexAttention forward took 2.6 ms per layer
at 16K tokens while a plain +-512 band took 0.2 ms (seq2seq_es.bench.gpu_flex_options); the backward
was 1.2 ms against 0.75 ms. This script changes one thing at a time between the two:

  A  plain band BlockMask (create_block_mask), contiguous q/k/v        the 0.2 ms reference
  B  A with the query as the module passes it (a transposed [B, L, H, d] view)
  C  our BlockMask (build_flex_block_mask) with the general mask_mod (gathers from [B, L] tensors),
     keys [1 global slot block | sequence]
  D  C with the transposed query
  E  C's block tables with the row-span mask_mod (index arithmetic, a few scalars): what a batch
     with global <s> and right padding gets since 2026-12-02; C against E is the gathers' cost
  F  one FlexLEDEncoderSelfAttention layer forward (projections, global rows, assembly)
  G  C's block tables with a mask_mod that reads no tensor at all (slots or band, not LED's exact
     mask): the bound on what E could still gain
  H  E's mask without the slot block: the keys are the sequence itself, the global <s> reached in
     place (kv_idx < global count), so no [slots | sequence] concatenation and square tables;
     whether dropping the slots for prefix globals is worth it

  I  the band alone through flex with A's tables (keys past the global prefix, before the padding),
     the global <s> as one dense score column, the two merged by log-sum-exp: the way round the
     slot block, if E's extra partial block per query row is what costs
  A-dyn, E-dyn  A and E compiled with dynamic shapes: what training meets once a second source
     length has made torch.compile's automatic dynamic shapes mark the lengths dynamic

The H200 run of 2026-12-04 (16K, median of 10) measured A 0.283 / 1.482 ms, C 3.786 / 5.610 ms,
E 0.680 / 2.708 ms (forward / forward+backward) before this script's 45 s ran out: the general
mask's gathers (C) were the 13x, the row-span mask (E) is 2.4x the plain band's forward. But those
cases shared one compiled flex_attention: A compiled for 16384 keys, then E's 16512 (a slot block
in front) made torch.compile recompile with the key length dynamic, so E and C may have been timed
on a dynamic-shape kernel and A on a static one. Each case now starts from a reset compiler with
its own `torch.compile(flex_attention, dynamic=...)`, and the -dyn rows time the dynamic kernels.

and prints forward (with grad) and forward+backward milliseconds, median of --repeat calls.
    python3 -m seq2seq_es.bench.gpu_flex_ablation [--src-len 16384] [--repeat 20] [--cases all]
On the CPU (no GPU) it runs the forwards at --src-len 1024 as a smoke test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from ..kernels.led_attention import (
    build_encoder_layout,
    build_flex_block_mask,
    find_row_spans,
    padded_slot_count,
)

HEADS, HEAD_DIM, ONE_SIDED_WINDOW = 12, 64, 512
# Issue 12.4's comparison (what gpu_all.sh times by default): the plain band against the mask LED
# batches get, static and dynamic. The other cases explained the gap in the H200 runs of
# 2026-12-04 (BENCHMARKS.md) and run with --cases all.
TARGET_CASES = ("A", "E", "A-dyn", "E-dyn")


def timed(fn, device: str, repeat: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src-len", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--cases", default=",".join(TARGET_CASES),
                        help="comma-separated case letters (A, E, A-dyn, ...) or 'all'; the "
                        "default is item 4's comparison, the rest were measured on 2026-12-04")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    seq_len = args.src_len or (16384 if device == "cuda" else 1024)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    backward = device == "cuda"  # FlexAttention has no backward on the CPU
    torch.manual_seed(0)

    def tensor(*shape):
        return torch.randn(*shape, device=device, dtype=dtype, requires_grad=backward)

    q = tensor(1, HEADS, seq_len, HEAD_DIM)
    q_view = tensor(1, seq_len, HEADS, HEAD_DIM)  # the module's layout: [B, L, H, d] viewed as [B, H, L, d]
    k, v = tensor(1, HEADS, seq_len, HEAD_DIM), tensor(1, HEADS, seq_len, HEAD_DIM)

    def band(b, h, q_idx, kv_idx):
        return (q_idx - kv_idx).abs() <= ONE_SIDED_WINDOW

    plain_mask = create_block_mask(band, 1, 1, seq_len, seq_len, device=device)
    key_padding = torch.zeros(1, seq_len, dtype=torch.bool, device=device)
    is_global = key_padding.clone()
    is_global[0, 0] = True
    layout = build_encoder_layout(key_padding, is_global, 1, any_padding=False)
    ours = build_flex_block_mask(layout, ONE_SIDED_WINDOW)
    n_slots = padded_slot_count(1)
    k_slots = tensor(1, HEADS, n_slots + seq_len, HEAD_DIM)
    v_slots = tensor(1, HEADS, n_slots + seq_len, HEAD_DIM)

    spans_layout = build_encoder_layout(key_padding, is_global, 1, any_padding=False,
                                        row_spans=find_row_spans(key_padding.cpu(), is_global.cpu()))
    row_spans = build_flex_block_mask(spans_layout, ONE_SIDED_WINDOW)

    def band_after_slots(b, h, q_idx, kv_idx):
        return (kv_idx < n_slots) | ((q_idx - (kv_idx - n_slots)).abs() <= ONE_SIDED_WINDOW)

    global_count = torch.tensor(1, device=device)  # the <s> of position 0, as in E
    length = torch.tensor(seq_len, device=device)
    window = torch.tensor(ONE_SIDED_WINDOW, device=device)

    def prefix_globals_in_place(b, h, q_idx, kv_idx):
        in_band = ((q_idx - kv_idx).abs() <= window) & (kv_idx >= global_count) & (kv_idx < length)
        return (kv_idx < global_count) | in_band

    in_place = create_block_mask(prefix_globals_in_place, 1, 1, seq_len, seq_len, device=device)
    no_tensors = BlockMask.from_kv_blocks(
        ours.kv_num_blocks, ours.kv_indices, ours.full_kv_num_blocks, ours.full_kv_indices,
        BLOCK_SIZE=ours.BLOCK_SIZE, mask_mod=band_after_slots, seq_lengths=ours.seq_lengths)

    def band_without_globals(b, h, q_idx, kv_idx):
        return ((q_idx - kv_idx).abs() <= window) & (kv_idx >= global_count) & (kv_idx < length)

    band_only = create_block_mask(band_without_globals, 1, 1, seq_len, seq_len, device=device)
    scale = HEAD_DIM ** -0.5

    def split_globals(query, key, value):
        """I: the band alone through flex (A's tables), the prefix global key as a dense column,
        the two merged by their log-sum-exp: no extra block per query row."""
        band_out, band_lse = flex_attention(query, key, value, block_mask=band_only, return_lse=True)
        global_scores = (query @ key[:, :, :1].transpose(-1, -2)).float() * scale  # [B, H, L, 1]
        top = torch.maximum(band_lse, global_scores.amax(-1))
        band_weight = torch.exp(band_lse - top)[..., None]
        global_weight = torch.exp(global_scores - top[..., None])
        merged = band_out.float() * band_weight + global_weight @ value[:, :, :1].float()
        return (merged / (band_weight + global_weight.sum(-1, keepdim=True))).to(query.dtype)

    def with_mask(block_mask):
        return lambda query, key, value: flex_attention(query, key, value, block_mask=block_mask)

    # name: (attention of (q, k, v), query, keys, values, compile with dynamic shapes)
    cases = {
        # The open questions first: gpu_all.sh gives this script a fixed time (C was measured).
        "A plain band, contiguous": (with_mask(plain_mask), lambda: q, k, v, False),
        "E ours, row-span mask_mod": (with_mask(row_spans), lambda: q, k_slots, v_slots, False),
        "I band flex + global column, lse merge": (split_globals, lambda: q, k, v, False),
        "A-dyn plain band, dynamic shapes": (with_mask(plain_mask), lambda: q, k, v, True),
        "E-dyn row-span mask_mod, dynamic": (with_mask(row_spans), lambda: q, k_slots, v_slots, True),
        "H row spans, globals in place": (with_mask(in_place), lambda: q, k, v, False),
        "G ours, mask_mod reading no tensor": (with_mask(no_tensors), lambda: q, k_slots, v_slots, False),
        "C ours, contiguous": (with_mask(ours), lambda: q, k_slots, v_slots, False),
        "B plain band, transposed q": (with_mask(plain_mask), lambda: q_view.transpose(1, 2), k, v, False),
        "D ours, transposed q": (with_mask(ours), lambda: q_view.transpose(1, 2), k_slots, v_slots, False),
    }
    wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
    if wanted != ["all"]:
        letters = {name.split()[0]: name for name in cases}
        unknown = [c for c in wanted if c not in letters]
        if unknown:
            parser.error(f"--cases: unknown {', '.join(unknown)}; known: "
                         f"{', '.join(letters)}, F (the layer, with all) or all")
        cases = {letters[c]: cases[letters[c]] for c in wanted}
    print(f"device {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}), "
          f"torch {torch.__version__}, L={seq_len}, heads {HEADS}x{HEAD_DIM}, window +-{ONE_SIDED_WINDOW}")
    for name, (attend, query, key, value, dynamic) in cases.items():
        # A fresh compiler per case: a shared one recompiles the second shape it meets with the
        # lengths dynamic, and the cases after it would time another kind of kernel.
        torch._dynamo.reset()
        compiled = torch.compile(attend, dynamic=dynamic)
        try:
            forward = timed(lambda: compiled(query(), key, value), device, args.repeat)
            line = f"{name:36s} forward {forward:8.3f} ms"
            if backward:
                both = timed(lambda: compiled(query(), key, value).sum().backward(), device, args.repeat)
                line += f"   forward+backward {both:8.3f} ms"
            print(line, flush=True)
        except Exception as error:  # a failing case must not hide the others
            print(f"{name:36s} error {type(error).__name__}: {str(error)[:200]}", flush=True)

    if wanted != ["all"]:
        return 0
    from .led import LED_BASE_SHAPE, TINY_SHAPE, build_led_model
    from ..kernels.led_attention import apply_led_attention

    shape = LED_BASE_SHAPE if device == "cuda" else TINY_SHAPE
    torch._dynamo.reset()
    model = build_led_model(shape, device)
    apply_led_attention(model, "flex")
    layer = model.led.encoder.layers[0].self_attn.longformer_self_attn
    hidden = torch.randn(1, seq_len, shape.d_model, device=device, requires_grad=backward)
    masked = torch.zeros(1, seq_len, dtype=torch.bool, device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def layer_forward():
        with autocast, torch.set_grad_enabled(backward):
            return layer(hidden, is_index_masked=masked, is_index_global_attn=is_global,
                         is_global_attn=True)[0]

    forward = timed(layer_forward, device, args.repeat)
    line = f"{'F one encoder attention layer':36s} forward {forward:8.3f} ms"
    if backward:
        both = timed(lambda: layer_forward().float().sum().backward(), device, args.repeat)
        line += f"   forward+backward {both:8.3f} ms"
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
