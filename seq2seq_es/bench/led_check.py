"""Numerical check of the LED attention implementations against transformers' own, at any length.

`check_impl_against_hf` runs one model on one batch three ways: transformers' attention in fp32 (the
reference), transformers' attention in bf16 autocast, and the checked implementation in bf16 autocast
(or fp32 on the CPU), forward and optionally backward, and reports for the encoder output, the logits,
the loss and a few parameter gradients the max absolute error, the max error relative to the reference's
largest magnitude, and the norm-relative error ||x - ref|| / ||ref||. The verdict allows the checked
implementation the bf16 error transformers' own attention has (x2) or `rel_tolerance`, whichever is larger.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .led import LedShape, build_led_model
from ..kernels.led_attention import apply_led_attention, clear_led_attention_caches

# Gradients worth comparing: the encoder's local and global projections, the decoder's cross-attention
# over the long memory, and the shared embedding that every position feeds.
CHECKED_GRADIENTS = (
    "led.encoder.layers.0.self_attn.longformer_self_attn.query.weight",
    "led.encoder.layers.0.self_attn.longformer_self_attn.value.weight",
    "led.encoder.layers.0.self_attn.longformer_self_attn.query_global.weight",
    "led.encoder.layers.0.self_attn.longformer_self_attn.key_global.weight",
    "led.encoder.layers.0.self_attn.longformer_self_attn.value_global.weight",
    "led.encoder.layers.1.self_attn.output.weight",
    "led.decoder.layers.0.encoder_attn.k_proj.weight",
    "led.decoder.layers.0.self_attn.q_proj.weight",
    "led.shared.weight",
)


@dataclass(frozen=True)
class CheckCase:
    """One batch: source lengths per row (shorter rows are padded), global token positions per row."""

    src_lengths: tuple[int, ...]
    global_positions: tuple[tuple[int, ...], ...]
    tgt_len: int
    seed: int = 0


def make_inputs(shape: LedShape, case: CheckCase, device: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(case.seed)
    batch, width = len(case.src_lengths), max(case.src_lengths)
    input_ids = torch.randint(3, shape.vocab_size, (batch, width), generator=generator)
    attention_mask = torch.zeros(batch, width, dtype=torch.long)
    global_attention_mask = torch.zeros(batch, width, dtype=torch.long)
    for row, (length, positions) in enumerate(zip(case.src_lengths, case.global_positions)):
        attention_mask[row, :length] = 1
        input_ids[row, length:] = 1  # LED's pad id
        global_attention_mask[row, list(positions)] = 1
    labels = torch.randint(3, shape.vocab_size, (batch, case.tgt_len), generator=generator)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask,
              "global_attention_mask": global_attention_mask, "labels": labels}
    return {name: tensor.to(device) for name, tensor in inputs.items()}


def run_pass(model, impl: str, inputs: dict, bf16: bool, backward: bool) -> dict[str, torch.Tensor]:
    """One forward (and backward) pass; the compared tensors as fp32 copies on the CPU."""
    apply_led_attention(model, impl)
    model.zero_grad(set_to_none=True)
    device_type = next(model.parameters()).device.type
    with torch.set_grad_enabled(backward), torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        output = model(**inputs, use_cache=False)
    results = {"encoder_output": output.encoder_last_hidden_state.detach().float().cpu(),
               "logits": output.logits.detach().float().cpu(), "loss": output.loss.detach().float().cpu()}
    if backward:
        output.loss.backward()
        parameters = dict(model.named_parameters())
        for name in CHECKED_GRADIENTS:
            if name in parameters and parameters[name].grad is not None:
                results[f"grad:{name}"] = parameters[name].grad.detach().float().cpu()
        model.zero_grad(set_to_none=True)
    del output
    return results


def error_stats(value: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    difference = (value - reference).abs()
    scale = reference.abs().max().clamp_min(1e-12)
    return {"max_abs": difference.max().item(), "max_rel": (difference.max() / scale).item(),
            "norm_rel": ((value - reference).norm() / reference.norm().clamp_min(1e-12)).item()}


def check_impl_against_hf(shape: LedShape, case: CheckCase, device: str, impl: str = "flex",
                          backward: bool = True, rel_tolerance: float = 0.02, log=print) -> dict:
    """Compare `impl` with transformers' attention on `case`; returns errors per tensor and a verdict."""
    on_cuda = device.startswith("cuda")
    model = build_led_model(shape, device, seed=case.seed)
    model.eval()  # no dropout: the passes must see the same function
    inputs = make_inputs(shape, case, device)
    timings = {}
    passes = {"hf_fp32": ("hf", False), "hf_bf16": ("hf", True), f"{impl}": (impl, on_cuda)}
    results = {}
    for label, (pass_impl, bf16) in passes.items():
        if label == "hf_bf16" and not on_cuda:
            continue  # on the CPU the checked implementation runs in fp32 too
        if on_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        results[label] = run_pass(model, pass_impl, inputs, bf16=bf16, backward=backward)
        if on_cuda:
            torch.cuda.synchronize()
        timings[label] = time.perf_counter() - start
        log(f"{label} pass done in {timings[label]:.2f} s")
    clear_led_attention_caches()
    del model
    reference = results["hf_fp32"]
    tensors = {}
    verdict = True
    for name, ref_value in reference.items():
        checked = error_stats(results[impl][name], ref_value)
        entry = {impl: checked}
        allowed = rel_tolerance
        if "hf_bf16" in results:
            entry["hf_bf16"] = error_stats(results["hf_bf16"][name], ref_value)
            allowed = max(rel_tolerance, 2 * entry["hf_bf16"]["norm_rel"])
        entry["allowed_norm_rel"] = allowed
        entry["ok"] = checked["norm_rel"] <= allowed
        verdict = verdict and entry["ok"]
        tensors[name] = entry
    return {"impl": impl, "device": device, "src_lengths": list(case.src_lengths),
            "global_positions": [list(p) for p in case.global_positions], "tgt_len": case.tgt_len,
            "precision": "bf16 autocast vs hf fp32" if on_cuda else "fp32 vs hf fp32",
            "backward": backward, "pass_seconds": timings, "tensors": tensors, "ok": verdict}


def format_check(check: dict) -> str:
    """A markdown table of one check's errors."""
    impl = check["impl"]
    lines = [f"{impl} vs hf fp32, source lengths {check['src_lengths']}, globals {check['global_positions']}, "
             f"{check['precision']}, backward {check['backward']}: {'PASS' if check['ok'] else 'FAIL'}",
             "",
             f"| tensor | {impl} max abs | {impl} max rel | {impl} norm rel | hf bf16 norm rel | allowed | ok |",
             "|---|---|---|---|---|---|---|"]
    for name, entry in check["tensors"].items():
        mine, hf_bf16 = entry[impl], entry.get("hf_bf16")
        hf_text = f"{hf_bf16['norm_rel']:.3e}" if hf_bf16 else "-"
        lines.append(f"| {name} | {mine['max_abs']:.3e} | {mine['max_rel']:.3e} | {mine['norm_rel']:.3e} | "
                     f"{hf_text} | {entry['allowed_norm_rel']:.1e} | {'yes' if entry['ok'] else 'NO'} |")
    return "\n".join(lines)
