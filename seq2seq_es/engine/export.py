"""The trained model as a Hugging Face checkpoint (`final/`), from any ZeRO stage and precision."""

from __future__ import annotations

from pathlib import Path

import torch

from . import distributed as D

EXPORT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def export_state_dict(engine, dtype: str, is_main: bool) -> dict | None:
    """The trained model's full state dict in `dtype`, on rank 0's CPU (None on other ranks).

    Under ZeRO 1-3 the weights are the optimizer's fp32 master partitions: the module holds only
    their bf16/fp16 rounding when training in 16 bits, and only its own partition under ZeRO-3
    (whose consolidated 16-bit dict would lose the fp32 digits). Each parameter is assembled
    from the masters (DeepSpeed's safe_get_full_fp32_param: collective, every rank calls this in
    the same order) and then cast, so an fp32 export of a bf16 run has the real fp32 weights. At
    ZeRO 0 the module's weights are the fp32 ones (16-bit training is autocast there). Tied
    parameters stay one tensor under all their names, as in the module's own state dict.
    """
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    target, zero = EXPORT_DTYPES[dtype], engine.zero_optimization_stage() > 0
    state, first_name = {}, {}
    for name, value in engine.module.state_dict(keep_vars=True).items():
        if id(value) in first_name:
            if is_main:
                state[name] = state[first_name[id(value)]]
            continue
        first_name[id(value)] = name
        full = None
        if zero and isinstance(value, torch.nn.Parameter):
            full = safe_get_full_fp32_param(value)
            if full is None and hasattr(value, "ds_id"):  # ZeRO-3 without a master (frozen)
                with deepspeed.zero.GatheredParameters([value]):
                    full = value.detach().clone()
        if full is None:
            full = value.detach()
        if is_main:
            full = full.to("cpu")
            state[name] = full.to(target) if full.is_floating_point() else full
    return state if is_main else None


def save_tokenizer(tokenizer, out: Path, source_length: int, truncation_side: str) -> None:
    """The tokenizer, cutting sources as the run did: a plain `tokenizer(text, truncation=True)`
    on the folder cut at the model's positions (1024, on the right) where the run read
    data.max_source_length tokens (480 for SQAC; MIAM's from the left). A copy: the run's own
    tokenizer keeps its settings."""
    import copy

    saved = copy.copy(tokenizer)
    saved.init_kwargs = {**tokenizer.init_kwargs, "truncation_side": truncation_side}
    saved.model_max_length, saved.truncation_side = source_length, truncation_side
    saved.save_pretrained(out)


def export_hf(engine, tokenizer, generation_config, out: Path, zero_stage: int,
              env: D.DistEnv, dtype: str = "fp32", *, source_length: int | None = None,
              truncation_side: str = "right") -> None:
    """Write a Hugging Face checkpoint (safetensors in `dtype`, tokenizer, generation config).

    `dtype` is train.export_dtype, whatever the training precision (see export_state_dict);
    the tokenizer cuts sources at `source_length` on `truncation_side` (save_tokenizer; as
    it is without a length).
    """
    state_dict = export_state_dict(engine, dtype, env.is_main)
    if env.is_main:
        from ..models import save_model
        save_model(engine.module, out, state_dict=state_dict, dtype=dtype)
        if source_length is None:
            tokenizer.save_pretrained(out)
        else:
            save_tokenizer(tokenizer, out, source_length, truncation_side)
        generation_config.save_pretrained(out)
    D.barrier()
