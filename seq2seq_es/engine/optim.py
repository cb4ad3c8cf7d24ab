"""AdamW with decay only on matrices, the learning-rate schedule, and the DeepSpeed config.

The DeepSpeed config is written from our config with every value explicit ("auto" is left for
nobody to guess), so the file saved in the run directory is exactly what ran.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..config import RunConfig
from ..errors import ConfigError


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Biases and normalisation weights (every 1-D parameter) get no weight decay.

    Tied parameters appear once: `named_parameters()` de-duplicates shared Parameters.
    """
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    o = cfg.optim
    # Fused on GPUs: at 512x128x32 on an H200 the step went from 0.068 s to 0.048 s (BENCHMARKS.md).
    # Not with ZeRO-Offload, whose optimizer steps run on CPU copies of the weights.
    fused = bool(o.fused and torch.cuda.is_available() and not cfg.dist.offload_optimizer)
    return torch.optim.AdamW(param_groups(model, o.weight_decay), lr=o.lr, betas=tuple(o.betas),
                             eps=o.eps, fused=fused)


def warmup_steps(cfg: RunConfig, total_steps: int) -> int:
    if cfg.optim.warmup_steps > 0:
        return cfg.optim.warmup_steps
    return int(math.ceil(cfg.optim.warmup_ratio * total_steps))


def lr_factor(step: int, total_steps: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate before optimizer step `step` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: RunConfig, total_steps: int):
    warmup = warmup_steps(cfg, total_steps)
    schedule = cfg.optim.schedule
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, schedule))


def use_bf16(cfg: RunConfig) -> bool:
    if cfg.train.precision == "bf16":
        return True
    if cfg.train.precision == "fp32":
        return False
    return torch.cuda.is_available()


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


def _refuse_auto(values: dict, path: str, prefix: str = "") -> None:
    for key, value in values.items():
        if isinstance(value, dict):
            _refuse_auto(value, path, f"{prefix}{key}.")
        elif value == "auto":
            raise ConfigError("dist.deepspeed_config", f"{path}: '{prefix}{key}' is \"auto\"; "
                              "set it explicitly (seq2seq-es fills batch, accumulation, clipping, "
                              "precision and ZeRO stage from its own config)")


OWNED_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size")


def load_user_deepspeed_config(path: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise ConfigError("dist.deepspeed_config", f"file {path} does not exist")
    try:
        values = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError("dist.deepspeed_config", f"{path} is not valid JSON: {exc}") from None
    _refuse_auto(values, path)
    for key in OWNED_KEYS:
        if key in values:
            raise ConfigError("dist.deepspeed_config", f"{path} sets '{key}'; set train.batch_size "
                              "and train.grad_accum instead (the loss normalisation relies on them)")
    return values


def deepspeed_config(cfg: RunConfig, world_size: int) -> dict:
    t, dist = cfg.train, cfg.dist
    zero: dict = {"stage": dist.zero_stage}
    if dist.zero_stage >= 1:
        zero.update({"contiguous_gradients": True, "overlap_comm": False,
                     "reduce_bucket_size": 50_000_000, "allgather_bucket_size": 50_000_000})
    if dist.zero_stage == 3:
        # Export writes the full weights from rank 0; gathering them on save makes that possible.
        zero.update({"stage3_gather_16bit_weights_on_model_save": True,
                     "stage3_param_persistence_threshold": 10_000,
                     "stage3_prefetch_bucket_size": 50_000_000})
    if dist.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    generated = {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": t.batch_size * t.grad_accum * world_size,
        "gradient_clipping": cfg.optim.max_grad_norm,
        # Without ZeRO, bf16 runs as torch autocast over fp32 weights with our own AdamW (as the
        # Trainer route does); DeepSpeed's "bf16" mode would add its bf16 optimizer wrapper with
        # fp32 master copies, which measured slower there. ZeRO stages keep DeepSpeed's bf16.
        "bf16": {"enabled": use_bf16(cfg) and dist.zero_stage > 0},
        "torch_autocast": {"enabled": use_bf16(cfg) and dist.zero_stage == 0,
                           "dtype": "bfloat16"},
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        # Our AdamW has per-group weight decay; DeepSpeed only vouches for its own optimizers.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }
    if dist.deepspeed_config:
        generated = _merge(generated, load_user_deepspeed_config(dist.deepspeed_config))
    return generated


def write_reference_configs(folder: str | Path) -> list[Path]:
    """The files in configs/deepspeed/: what each ZeRO stage generates for one GPU, batch 8, bf16."""
    from ..config import RunConfig as _RunConfig

    written = []
    for stage in range(4):
        cfg = _RunConfig()
        cfg.dist.zero_stage, cfg.train.batch_size, cfg.train.precision = stage, 8, "bf16"
        path = Path(folder) / f"zero{stage}.json"
        path.write_text(json.dumps(deepspeed_config(cfg, world_size=1), indent=2) + "\n")
        written.append(path)
    return written
