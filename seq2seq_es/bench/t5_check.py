"""T5 attention implementations compared on a T5-v1.1-base shape: accuracy against transformers and
training-step timings.

`gpu_check` compares and times hf / sdpa / flex (seq2seq_es.kernels.t5_attention) for the GPU session
(`python3 -m seq2seq_es.bench.gpu_t5`); with `tiny=True` it runs the same code on the CPU.
"""

from __future__ import annotations

import copy
import statistics
import time
import traceback
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from transformers import T5Config, T5ForConditionalGeneration

from ..errors import ConfigError, UnknownNameError
from ..kernels.t5_attention import apply_t5_attention


def t5_base_v11_config(*, tiny: bool = False) -> T5Config:
    """T5-v1.1-base shape, or a tiny one for CPU runs; dropout 0.

    tie_word_embeddings=False is how T5Config marks v1.1 (no d_model**-0.5 rescaling before the head);
    transformers 5 ties the head to the shared embeddings either way.
    """
    shape = (dict(d_model=32, d_kv=8, num_heads=2, num_layers=2, num_decoder_layers=2, d_ff=64,
                  relative_attention_num_buckets=8, relative_attention_max_distance=16, vocab_size=128)
             if tiny else
             dict(d_model=768, d_kv=64, num_heads=12, num_layers=12, num_decoder_layers=12, d_ff=2048,
                  relative_attention_num_buckets=32, relative_attention_max_distance=128, vocab_size=32128))
    return T5Config(**shape, feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
                    decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


def random_padded_batch(config: T5Config, batch: int, source_len: int, target_len: int,
                        device: torch.device | str, seed: int = 0) -> dict[str, Tensor]:
    """Random token ids with lengths spread from full down to half, padded on the right."""
    generator = torch.Generator().manual_seed(seed)

    def padded(length: int) -> tuple[Tensor, Tensor]:
        ids = torch.randint(2, config.vocab_size, (batch, length), generator=generator)
        lengths = torch.linspace(length, max(1, length // 2), batch).round().long()
        keep = torch.arange(length)[None, :] < lengths[:, None]
        return ids, keep

    input_ids, source_keep = padded(source_len)
    labels, target_keep = padded(target_len)
    return {"input_ids": input_ids.masked_fill(~source_keep, config.pad_token_id).to(device),
            "attention_mask": source_keep.long().to(device),
            "labels": labels.masked_fill(~target_keep, -100).to(device)}


def _autocast(device: torch.device, dtype: torch.dtype):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_train_steps(model: nn.Module, batch: dict[str, Tensor], *, dtype: torch.dtype = torch.bfloat16,
                     steps: int = 5, warmup: int = 2) -> list[float]:
    """Seconds of each of `steps` training steps (forward, backward, AdamW step) after `warmup` steps."""
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    model.train()
    seconds = []
    for step in range(warmup + steps):
        _synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, dtype):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        _synchronize(device)
        if step >= warmup:
            seconds.append(time.perf_counter() - start)
    return seconds


def _gradient_names(config: T5Config) -> list[str]:
    last = config.num_decoder_layers - 1
    return ["shared.weight",
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            "encoder.block.0.layer.0.SelfAttention.q.weight",
            f"decoder.block.{last}.layer.1.EncDecAttention.k.weight"]


def _forward_backward(model: nn.Module, batch: dict[str, Tensor], dtype: torch.dtype,
                      names: Sequence[str]) -> dict[str, Tensor]:
    device = next(model.parameters()).device
    model.train()
    model.zero_grad(set_to_none=True)
    with _autocast(device, dtype):
        output = model(**batch)
    output.loss.backward()
    params = dict(model.named_parameters())
    # Kept on the CPU so that they do not count in the next rows' peak memory.
    results = {"loss": output.loss.detach().float().cpu(), "logits": output.logits.detach().float().cpu()}
    results.update({f"grad:{name}": params[name].grad.detach().float().cpu() for name in names})
    model.zero_grad(set_to_none=True)
    return results


def _errors(results: dict[str, Tensor], reference: dict[str, Tensor]) -> dict[str, dict[str, float]]:
    """Max abs error and that error relative to the largest reference magnitude, per compared tensor."""
    errors = {}
    for key, ref in reference.items():
        max_abs = (results[key] - ref).abs().max().item()
        errors[key] = {"max_abs": max_abs, "max_rel": max_abs / max(ref.abs().max().item(), 1e-30)}
    return errors


# gpu_check's rows: (impl, flex bias layout or, for hf, the transformers attention implementation).
CHECK_LABELS = {"hf": ("hf", None), "hf-eager": ("hf", "eager"), "sdpa": ("sdpa", "dense"),
                "flex": ("flex", "dense"), "flex-distance": ("flex", "distance")}


def _model_for(base: nn.Module, label: str, device: torch.device) -> nn.Module:
    impl, variant = CHECK_LABELS[label]
    model = copy.deepcopy(base).to(device)
    if impl == "hf":
        if variant is not None:
            model.set_attn_implementation(variant)
        return model
    return apply_t5_attention(model, impl, flex_bias_layout=variant)


def _check_row(report: dict[str, Any], label: str, base: nn.Module, data: dict[str, Tensor],
               reference: dict[str, Tensor], hf_results: dict[str, Tensor] | None, names: Sequence[str],
               dtype: torch.dtype, steps: int, warmup: int, compile_model: bool) -> dict[str, Tensor]:
    """Fill one row of gpu_check's report and return its compared tensors; the row's model is freed
    when this returns, even on failure."""
    device = data["input_ids"].device
    model = _model_for(base, label, device)
    results = _forward_backward(model, data, dtype, names)
    report["vs_fp32_eager"][label] = _errors(results, reference)
    if hf_results is not None:
        report["vs_hf"][label] = _errors(results, hf_results)
    timed = torch.compile(model) if compile_model else model
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = time_train_steps(timed, data, dtype=dtype, steps=steps, warmup=warmup)
    report["step_s"][label] = statistics.median(seconds)
    report["real_tokens_per_s"][label] = report["shape"]["real_tokens_per_batch"] / report["step_s"][label]
    if device.type == "cuda":
        report["peak_mem_gib"][label] = torch.cuda.max_memory_allocated(device) / 2**30
    return results


def gpu_check(device: torch.device | str = "cuda", *, tiny: bool = False, batch: int = 8, source_len: int = 512,
              target_len: int = 128, impls: Sequence[str] = ("hf", "sdpa", "flex", "flex-distance"),
              dtype: torch.dtype | None = None, steps: int = 5, warmup: int = 2,
              compile_model: bool = False) -> dict[str, Any]:
    """Compare and time hf / sdpa / flex T5 attention on a T5-v1.1-base shape (or `tiny`).

    Rows (`impls`, see CHECK_LABELS): "hf" is transformers' T5 as loaded (its default SDPA path with the
    bias materialised per layer), "hf-eager" the same in eager attention, "sdpa", "flex" (dense bias
    table) and "flex-distance" (distance bias table) are ours.
    Accuracy: logits, loss and a few gradients of each row under `dtype` autocast (default bf16 on CUDA,
    fp32 elsewhere) against transformers' eager T5 in fp32 on the same weights and padded batch
    ("vs_fp32_eager"), and against the "hf" row under the same autocast ("vs_hf").
    Timing: median of `steps` training steps (forward+backward+AdamW) after `warmup`, per row; peak
    memory is that of the row's model, optimizer and step. A failing row is recorded under "failures"
    with its traceback so one run still reports the others.
    """
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    for label in impls:
        if label not in CHECK_LABELS:
            raise UnknownNameError("gpu_check impl", label, CHECK_LABELS)
        if CHECK_LABELS[label][0] == "flex" and device.type != "cuda":
            raise ConfigError("impls", "flex needs a CUDA device here: torch has no FlexAttention backward on CPU")

    config = t5_base_v11_config(tiny=tiny)
    torch.manual_seed(0)
    base = T5ForConditionalGeneration(config)  # stays on the CPU; each row gets its own copy on `device`
    data = random_padded_batch(config, batch, source_len, target_len, device)
    names = _gradient_names(config)
    real_tokens = int(data["attention_mask"].sum().item() + (data["labels"] != -100).sum().item())

    reference = _forward_backward(_model_for(base, "hf-eager", device), data, torch.float32, names)

    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "shape": {"batch": batch, "source_len": source_len, "target_len": target_len, "tiny": tiny,
                  "dtype": str(dtype).removeprefix("torch."), "compile_model": compile_model,
                  "real_tokens_per_batch": real_tokens},
        "vs_fp32_eager": {}, "vs_hf": {}, "step_s": {}, "real_tokens_per_s": {}, "peak_mem_gib": {},
        "failures": {},
    }
    hf_results = None
    for label in impls:
        try:
            results = _check_row(report, label, base, data, reference, None if label == "hf" else hf_results,
                                 names, dtype, steps, warmup, compile_model)
            if label == "hf":
                hf_results = results
        except Exception:  # one failing kernel must not cost the whole GPU run
            report["failures"][label] = traceback.format_exc()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if "hf" in report["step_s"]:
        report["speedup_vs_hf"] = {label: report["step_s"]["hf"] / s for label, s in report["step_s"].items()}
    return report
