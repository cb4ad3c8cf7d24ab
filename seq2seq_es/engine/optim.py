"""AdamW with decay only on matrices, the learning-rate schedule, and the DeepSpeed config.

The DeepSpeed config is written from our config with every value explicit ("auto" is left for
nobody to guess), so the file saved in the run directory is exactly what ran.
"""

from __future__ import annotations

import difflib
import json
import math
from pathlib import Path

import torch

from .. import run_files
from ..config import RunConfig
from ..errors import ConfigError, close_matches


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Biases and normalisation weights (every 1-D parameter) and every parameter named a bias
    (T5's 2-D relative_attention_bias table, as transformers' Trainer has it) get no decay.

    Tied parameters appear once: `named_parameters()` de-duplicates shared Parameters.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "bias" in name else decay).append(p)
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
    """Multiplier of the peak learning rate before optimizer step `step` (0-based). Warmup
    starts at 1/warmup, not at 0 as transformers' linear warmup does: a first step at rate 0
    would move nothing (README says so); after warmup the two are equal."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


class Schedule(torch.optim.lr_scheduler.LambdaLR):
    """The learning-rate schedule; its state also carries the fp16 loss scaler's at ZeRO 0.

    DeepSpeed builds a torch GradScaler for fp16 autocast at ZeRO 0 but leaves it out of its
    checkpoints, so a resumed run would restart at scale 2^16 and skip steps the uninterrupted
    run did not. The schedule's state is saved and loaded with every checkpoint on every rank
    (as is the scale: every rank unscales the same all-reduced gradients), so it carries the
    scaler's state too (get_engine attaches the scaler); checkpoints without it load as before.

    A checkpoint gives the schedule its position only: its shape (optim.lr, warmup, schedule,
    the run's total steps) is this run's config, so a run resumed with more steps follows the
    longer schedule from its first resumed step (the trainer calls `apply_schedule` after the
    load, since DeepSpeed's optimizer load puts the checkpoint's rates back).
    """

    grad_scaler = None

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.grad_scaler is not None:
            state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state = dict(state_dict)
        scaler = state.pop("grad_scaler", None)
        # The peak rates are this run's (optim.lr), not the checkpoint's: only the position is
        # resumed. The trainer then sets the optimizer's rates from this schedule
        # (Trainer.follow_schedule -> apply_schedule), for a run that trains on.
        state.pop("base_lrs", None)
        super().load_state_dict(state)
        if scaler and self.grad_scaler is not None:
            self.grad_scaler.load_state_dict(scaler)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: RunConfig, total_steps: int):
    warmup = warmup_steps(cfg, total_steps)
    schedule = cfg.optim.schedule
    return Schedule(optimizer, lambda step: lr_factor(step, total_steps, warmup, schedule))


def native_bf16() -> bool:
    """Whether this process's GPU computes in bf16 natively (Ampere and later, ROCm).

    torch's own `is_bf16_supported()` also says yes on a V100 or T4, where bf16 is emulated
    (slowly): it only checks that a bf16 tensor can be made unless told otherwise.
    """
    if not torch.cuda.is_available():
        return False
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch before 2.3 had no emulation and no argument
        return torch.cuda.is_bf16_supported()


def _overflows_in_fp16(cfg: RunConfig) -> bool:
    """T5-family models overflow in fp16 (the family adapter's fp16_safe)."""
    from ..models import get_model_spec

    return not get_model_spec(cfg.model.name).adapter.fp16_safe


def resolve_precision(cfg: RunConfig) -> str:
    """What `train.precision` means on this machine: "bf16", "fp16" or "fp32".

    auto: bf16 where the GPU has it natively, else fp16 (V100, T4) with dynamic loss scaling,
    except for T5-family models, which overflow in fp16 (the paper's shell files,
    github.com/vgaraujov/Seq2Seq-Spanish-PLMs, train T5S without --fp16) and get fp32 there; fp32
    without a GPU. An explicit value is taken as given.
    """
    precision = cfg.train.precision
    if precision != "auto":
        return precision
    if not torch.cuda.is_available():
        return "fp32"
    if native_bf16():
        return "bf16"
    return "fp32" if _overflows_in_fp16(cfg) else "fp16"


def precision_report(cfg: RunConfig) -> str:
    """The one line a run prints at start: the precision it trains in, and why."""
    precision = resolve_precision(cfg)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    if cfg.train.precision == "auto":
        why = {"bf16": f"{gpu} computes in bf16",
               "fp16": f"{gpu} has no native bf16; fp16 with dynamic loss scaling",
               "fp32": (f"{gpu} has no native bf16 and T5 models overflow in fp16"
                        if torch.cuda.is_available() else "no GPU")}[precision]
        line = f"precision: {precision} (train.precision auto: {why})"
    else:
        line = f"precision: {precision} (train.precision {precision})"
    if precision == "fp16" and _overflows_in_fp16(cfg):
        line += ("; WARNING: T5 models overflow in fp16 (activations beyond 65504 give inf/NaN "
                 "losses, and train.on_nan stops the run); train T5 in bf16 (Ampere or later) "
                 "or fp32")
    elif precision == "bf16" and torch.cuda.is_available() and not native_bf16():
        line += f"; WARNING: {gpu} has no native bf16 (emulated, slow): consider fp16"
    elif precision == "bf16" and not torch.cuda.is_available():
        # configs/runs/*.yaml are GPU recipes (bf16, ZeRO 2): copied for a try on a CPU they
        # trained tens of times slower than fp32 with nothing said.
        line += ("; note: on CPUs bf16 is much slower than fp32 unless the CPU has AMX: "
                 "--train.precision auto trains in fp32 here")
    if cfg.dist.grad_accum_dtype != grad_accum_dtype(cfg):
        # Set but not read: it applies to bf16 under ZeRO 1-3 only (the precision is known
        # here, not where config.not_applying lists the other unread keys).
        line += (f"; note: dist.grad_accum_dtype {cfg.dist.grad_accum_dtype} is not read "
                 f"(gradients accumulate in {grad_accum_dtype(cfg)}: it applies to bf16 under "
                 "ZeRO 1-3)")
    return line


def use_bf16(cfg: RunConfig) -> bool:
    return resolve_precision(cfg) == "bf16"


def loss_scale(engine) -> float | None:
    """The current fp16 loss scale of a DeepSpeed engine; None when it does not train in fp16."""
    scaler = getattr(engine, "torch_autocast_z0_gradscaler", None)
    if scaler is not None:  # ZeRO 0: torch autocast's GradScaler, built by DeepSpeed
        return float(scaler.get_scale())
    if engine.fp16_enabled():  # ZeRO 1-3: DeepSpeed's own dynamic loss scaler
        optimizer = engine.optimizer
        value = getattr(optimizer, "loss_scale", None)
        return float(value if value is not None else optimizer.cur_scale)
    return None


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


# The keys of the generated config that say what our own config keys say, with the key to set
# instead. A user file used to override them in silence: DeepSpeed ran ZeRO 1 or clipped at 0.3
# while config.yaml said dist.zero_stage 0 and optim.max_grad_norm 1.0, and the checks tied to
# those keys (train.on_nan skip under ZeRO-3) never saw the file. A value equal to the generated
# one is accepted; any other is refused (deepspeed_config compares, since it needs the run's
# config). "bfloat16" is DeepSpeed's old name of "bf16", which it ignores beside our "bf16".
DERIVED_KEYS = {
    "zero_optimization.stage": "dist.zero_stage",
    "gradient_clipping": "optim.max_grad_norm",
    "bf16.enabled": "train.precision",
    "bfloat16.enabled": "train.precision",
    "fp16.enabled": "train.precision",
    "torch_autocast.enabled": "train.precision",
    "torch_autocast.dtype": "train.precision",
    "data_types.grad_accum_dtype": "dist.grad_accum_dtype",
    "zero_optimization.offload_optimizer.device": "dist.offload_optimizer",
}

# Where a derived key is absent from the merged config, DeepSpeed's default is what runs.
_DEEPSPEED_DEFAULTS = {"zero_optimization.stage": 0, "gradient_clipping": 1.0,
                       "bf16.enabled": False, "bfloat16.enabled": False, "fp16.enabled": False,
                       "torch_autocast.enabled": False, "torch_autocast.dtype": None,
                       "data_types.grad_accum_dtype": None,
                       "zero_optimization.offload_optimizer.device": "none"}

# The names DeepSpeed's DtypeEnum accepts for one dtype ("bf16" and "bfloat16" run the same).
_DTYPE_NAMES = {name: canonical for canonical, names in (
    ("fp16", ("fp16", "float16", "half", "torch.float16")),
    ("fp32", ("fp32", "float32", "float", "torch.float32")),
    ("bf16", ("bf16", "bfloat16", "torch.bfloat16"))) for name in names}

# The optimizer and schedule are the package's own (torch AdamW with per-group decay and
# optim.Schedule, passed to deepspeed.initialize), so DeepSpeed ignores these blocks of a user
# file, which still showed in the run's saved deepspeed_config.json as if they had run.
_OPTIM_KEYS = ("optim.lr, optim.weight_decay, optim.betas, optim.eps, optim.schedule, "
               "optim.warmup_steps, optim.warmup_ratio")


def _refuse_optimizer_blocks(values: dict, path: str) -> None:
    for key in ("optimizer", "scheduler"):
        if key in values:
            raise ConfigError("dist.deepspeed_config", f"{path} sets '{key}', which DeepSpeed "
                              "would ignore: seq2seq-es trains with its own AdamW and "
                              "learning-rate schedule, set by the optim section "
                              f"({_OPTIM_KEYS}); set those and remove the '{key}' block "
                              "from the file")


def _refuse_auto(values: dict, path: str, prefix: str = "") -> None:
    for key, value in values.items():
        if isinstance(value, dict):
            _refuse_auto(value, path, f"{prefix}{key}.")
        elif value == "auto":
            derived = DERIVED_KEYS.get(f"{prefix}{key}")
            if derived:  # setting it explicitly would only be refused next if it differs
                raise ConfigError("dist.deepspeed_config", f"{path}: '{prefix}{key}' is "
                                  f"\"auto\"; remove it: seq2seq-es writes it from {derived}")
            raise ConfigError("dist.deepspeed_config", f"{path}: '{prefix}{key}' is \"auto\"; "
                              "set it explicitly (seq2seq-es fills batch, accumulation, clipping, "
                              "precision and ZeRO stage from its own config)")


OWNED_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size")
# A key every config deepspeed_config generates holds (our optimizer is the torch one), and a
# tuning file has no reason to: with OWNED_KEYS, it tells a generated config given back.
GENERATED_MARK = "zero_allow_untested_optimizer"

# DeepSpeed's top-level config keys (its config-json documentation). DeepSpeed ignores a key it
# does not know, so a misspelt section ("zero_optimizaton") trained at another ZeRO stage in
# silence; a key close to one of these is refused as a typo, any other is left to DeepSpeed
# (a newer version's section is not refused for missing from this list).
DEEPSPEED_TOP_LEVEL_KEYS = (
    *OWNED_KEYS, "optimizer", "scheduler", "fp16", "bf16", "bfloat16", "amp", "torch_autocast",
    "gradient_clipping", "prescale_gradients", "gradient_predivide_factor",
    "communication_data_type", "seq_parallel_communication_data_type", "zero_optimization",
    "zero_allow_untested_optimizer", "zero_force_ds_cpu_optimizer", "aio",
    "activation_checkpointing", "flops_profiler", "tensorboard", "wandb", "csv_monitor", "comet",
    "comms_logger", "autotuning", "compression_training", "data_efficiency",
    "curriculum_learning", "checkpoint", "elasticity", "steps_per_print", "wall_clock_breakdown",
    "dump_state", "memory_breakdown", "timers", "sparse_attention", "pipeline", "data_types",
    "compile", "hybrid_engine", "weight_quantization", "graph_harvesting",
    "use_node_local_storage", "load_universal_checkpoint", "eigenvalue", "progressive_layer_drop",
    "quantize_training", "dataloader_drop_last", "sparse_gradients", "disable_allgather",
    "nebula", "tensor_parallel")


def _refuse_misspelt_keys(values: dict, path: str) -> None:
    for key in values:
        if key in DEEPSPEED_TOP_LEVEL_KEYS:
            continue
        near = close_matches(key, DEEPSPEED_TOP_LEVEL_KEYS, n=1)
        if near and difflib.SequenceMatcher(None, key.lower(), near[0]).ratio() >= 0.85:
            raise ConfigError("dist.deepspeed_config", f"{path} sets '{key}', which DeepSpeed does "
                              f"not know and would ignore; did you mean '{near[0]}'?")


def load_user_deepspeed_config(path: str) -> dict:
    """The user's DeepSpeed file, refused where it cannot merge: what the merge needs the run's
    config for (a derived key that differs) is refused by `deepspeed_config`."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError("dist.deepspeed_config", f"file {path} does not exist")
    try:
        values = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError("dist.deepspeed_config", f"{path} is not valid JSON: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError("dist.deepspeed_config", f"{path} must hold a JSON object")
    # Whole blocks to remove before the "auto" values inside them (Hugging Face files hold
    # "lr": "auto" and "train_batch_size": "auto"): one error, the one that fixes the file.
    _refuse_optimizer_blocks(values, path)
    if GENERATED_MARK in values and any(key in values for key in OWNED_KEYS):
        # configs/deepspeed/zeroN.json or a run's own deepspeed_config.json: a user passing one
        # was refused for its batch keys, then its stage or precision, one key at a time.
        raise ConfigError("dist.deepspeed_config", f"{path} is a whole DeepSpeed config as "
                          "this package generates it (configs/deepspeed/zero*.json, a run's "
                          f"{run_files.DEEPSPEED_CONFIG}): it shows what dist.*, train.* and "
                          "optim.* make. Set those keys (e.g. --dist.zero_stage 2), and give "
                          "dist.deepspeed_config a file of tuning keys only, such as "
                          '{"zero_optimization": {"overlap_comm": true, '
                          '"reduce_bucket_size": 200000000}}')
    for key in OWNED_KEYS:
        if key in values:
            raise ConfigError("dist.deepspeed_config", f"{path} sets '{key}'; set train.batch_size "
                              "and train.grad_accum instead (the loss normalisation relies on them)")
    _refuse_auto(values, path)
    _refuse_misspelt_keys(values, path)
    return values


_UNREADABLE = object()  # a derived key under a section the file replaced with a non-object


def _lookup(values: dict, key: str):
    """The value of dotted `key` in a config, DeepSpeed's default where it is absent (or its
    section is null)."""
    node = values
    for part in key.split("."):
        if node is None:
            return _DEEPSPEED_DEFAULTS[key]
        if not isinstance(node, dict):
            return _UNREADABLE
        if part not in node:
            return _DEEPSPEED_DEFAULTS[key]
        node = node[part]
    return _DEEPSPEED_DEFAULTS[key] if node is None else node


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):  # true is no ZeRO stage 1
        return type(a) is type(b) and a == b
    if isinstance(a, str) and isinstance(b, str):
        return _DTYPE_NAMES.get(a, a) == _DTYPE_NAMES.get(b, b)
    return a == b


def _set_in_file(user: dict, key: str) -> str | None:
    """The part of dotted `key` the user file sets: the key itself, or a section above it that
    the file replaced with a non-object (null, true); None where the file leaves the key alone."""
    parts, node = key.split("."), user
    for depth, part in enumerate(parts):
        if not isinstance(node, dict):
            return ".".join(parts[:depth])
        if part not in node:
            return None
        node = node[part]
    return key


def _file_value(user: dict, key: str):
    node = user
    for part in key.split("."):
        node = node[part]
    return node


def _refuse_derived_conflicts(generated: dict, user: dict, path: str, cfg: RunConfig) -> None:
    """Refuse a key of the user file that the generated config writes from one of our config
    keys, unless it runs the same as the generated value."""
    merged = _merge(generated, user)
    for key, config_key in DERIVED_KEYS.items():
        shown = _set_in_file(user, key)
        if shown is None:
            continue
        # "bfloat16" is ignored beside our "bf16": it differs when it says otherwise.
        ours_key = "bf16.enabled" if key == "bfloat16.enabled" else key
        ours = _lookup(generated, ours_key)
        if _same(_lookup(merged, key), ours):
            continue
        source = {
            "train.precision": f"train.precision (here {resolve_precision(cfg)}) and "
                               f"dist.zero_stage {cfg.dist.zero_stage} (ZeRO 0 runs bf16 and "
                               "fp16 as torch autocast)",
            "dist.grad_accum_dtype": f"dist.grad_accum_dtype ({cfg.dist.grad_accum_dtype}), "
                                     "train.precision and dist.zero_stage",
        }.get(config_key, config_key)
        raise ConfigError("dist.deepspeed_config", f"{path} sets '{shown}' to "
                          f"{json.dumps(_file_value(user, shown))}, but seq2seq-es writes "
                          f"'{ours_key}' from {source}: {json.dumps(ours)} for this run; set "
                          f"{config_key} instead and remove '{shown}' from the file (config.yaml "
                          f"and the run's checks follow {config_key}, not the file)")


# DeepSpeed's dynamic loss scaling for fp16 under ZeRO 1-3, every value written out (these are
# DeepSpeed's defaults): start at 2^16, halve after `hysteresis` overflowing steps (each skipped),
# double after `loss_scale_window` steps without one, never below `min_loss_scale`.
FP16_DYNAMIC = {"enabled": True, "auto_cast": False, "loss_scale": 0, "initial_scale_power": 16,
                "loss_scale_window": 1000, "hysteresis": 2, "consecutive_hysteresis": False,
                "min_loss_scale": 1}


def grad_accum_dtype(cfg: RunConfig) -> str:
    """The dtype DeepSpeed accumulates gradients in, given the resolved precision and stage."""
    precision = resolve_precision(cfg)
    if cfg.dist.zero_stage == 0 or precision == "fp32":
        return "fp32"
    return cfg.dist.grad_accum_dtype if precision == "bf16" else "fp16"


def deepspeed_config(cfg: RunConfig, world_size: int) -> dict:
    t, dist = cfg.train, cfg.dist
    precision, zero_stage = resolve_precision(cfg), dist.zero_stage
    zero: dict = {"stage": dist.zero_stage}
    if dist.zero_stage >= 1:
        zero.update({"contiguous_gradients": True, "overlap_comm": False,
                     "reduce_bucket_size": 50_000_000, "allgather_bucket_size": 50_000_000})
    if dist.zero_stage == 3:
        # For DeepSpeed's own save_16bit_model; our export gathers the fp32 masters itself.
        zero.update({"stage3_gather_16bit_weights_on_model_save": True,
                     "stage3_param_persistence_threshold": 10_000,
                     "stage3_prefetch_bucket_size": 50_000_000})
    if dist.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
        # The optimizer is ours (torch AdamW with per-group decay, stepping the fp32 partitions
        # on the CPU); DeepSpeed otherwise refuses any optimizer but its own under offload
        # (zero_force_ds_cpu_optimizer defaults to true), which made every offload run fail.
        zero_force_cpu_optimizer = False
    else:
        zero_force_cpu_optimizer = None
    generated = {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": t.batch_size * t.grad_accum * world_size,
        "gradient_clipping": cfg.optim.max_grad_norm,
        # Without ZeRO, bf16 runs as torch autocast over fp32 weights with our own AdamW (as the
        # Trainer route does); DeepSpeed's "bf16" mode would add its bf16 optimizer wrapper with
        # fp32 master copies, which measured slower there. ZeRO stages keep DeepSpeed's bf16.
        # fp16 follows the same split (decided without a GPU measurement): at ZeRO 0, torch
        # autocast in float16 over the fp32 weights, for which DeepSpeed builds a torch GradScaler
        # itself (dynamic scale from 2^16, halved on inf/NaN gradients, doubled after 2000 clean
        # steps; fp16_step_skipped, called by TrainStep, takes the learning-rate schedule back a
        # step after a skipped one).
        # Autocast keeps softmax, norms and the loss in fp32, which matters more in fp16's narrow
        # range than in bf16's, the weights stay fp32 for the fused AdamW, evaluation reads the
        # same fp32 module, and it runs on CPUs too (DeepSpeed's fp16 mode refuses this CPU), so
        # the tests run the real stage-0 path. DeepSpeed's "fp16" mode at ZeRO 0 would instead
        # run the model in fp16 weights behind its fp16 optimizer wrapper. ZeRO 1-3 own the
        # optimizer step and have no autocast scaler: there DeepSpeed's "fp16" section (fp16
        # weights, fp32 master partitions, dynamic loss scaling, steps skipped on overflow).
        "bf16": {"enabled": precision == "bf16" and zero_stage > 0},
        "fp16": dict(FP16_DYNAMIC) if precision == "fp16" and zero_stage > 0
        else {"enabled": False},
        "torch_autocast": {"enabled": precision in ("bf16", "fp16") and zero_stage == 0,
                           "dtype": "float16" if precision == "fp16" else "bfloat16"},
        # The dtype gradients are accumulated in (over micro-batches, and the reduced partitions
        # under ZeRO 2-3): bf16 under ZeRO keeps fp32 unless dist.grad_accum_dtype says bf16
        # (DeepSpeed's own default would be the model's bf16). ZeRO-1 with bf16 and fp32
        # accumulation is DeepSpeed's BF16_Optimizer (fp32 master weights and optimizer state
        # partitioned, full fp32 gradient buffer). fp16 under ZeRO accumulates in fp16 under the
        # loss scale (DeepSpeed's default); at ZeRO 0 the gradients are the fp32 weights' own.
        "data_types": {"grad_accum_dtype": grad_accum_dtype(cfg)},
        "zero_optimization": zero,
        # Our AdamW has per-group weight decay; DeepSpeed only vouches for its own optimizers.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
        # DeepSpeed's throughput timer is on and synchronised by default: it waits for the
        # device at every forward's start and every engine.step(), twice per micro-batch,
        # which empties the GPU's queue (the CPU-GPU overlap) each time. Its numbers are
        # printed every steps_per_print steps, never here; the trainer logs its own tokens/s.
        "timers": {"throughput": {"enabled": False, "synchronized": False}},
    }
    if zero_force_cpu_optimizer is not None:
        generated["zero_force_ds_cpu_optimizer"] = zero_force_cpu_optimizer
    if dist.deepspeed_config:
        user = load_user_deepspeed_config(dist.deepspeed_config)
        _refuse_derived_conflicts(generated, user, dist.deepspeed_config, cfg)
        generated = _merge(generated, user)
        _refuse_what_deepspeed_refuses(generated, dist.deepspeed_config)
    return generated


# DeepSpeed's pydantic models of the sections a user file tunes, by the name its errors carry.
_SECTION_OF_MODEL = {"DeepSpeedZeroConfig": "zero_optimization"}


def _refuse_what_deepspeed_refuses(merged: dict, path: str) -> None:
    """Parse the merged config as deepspeed.initialize will (the same DeepSpeedConfig), so that
    a bad value or a misspelt key inside a section of the user's file is one error naming it
    before the data and the model load, not a pydantic traceback at the engine."""
    import pydantic
    from deepspeed.runtime.config import DeepSpeedConfig

    # Without train_batch_size (ours, consistent by construction) DeepSpeed derives it from the
    # other two and whatever world it sees here (none before the process group: 1).
    try:
        DeepSpeedConfig({key: value for key, value in merged.items()
                         if key != "train_batch_size"})
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        section = _SECTION_OF_MODEL.get(exc.title)
        where = ".".join([*([section] if section else []), *map(str, error["loc"])])
        if error["type"] == "extra_forbidden":
            why = "not an option DeepSpeed knows"
            if section:
                from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
                fields = DeepSpeedZeroConfig.model_fields
                known = [*fields, *(f.alias for f in fields.values() if f.alias)]
                near = close_matches(str(error["loc"][-1]), known, n=1)
                why += f" (did you mean '{near[0]}'?)" if near else ""
        else:
            why = f"{error['msg']} (given {error.get('input')!r})"
        more = f"; {exc.error_count() - 1} more" if exc.error_count() > 1 else ""
        raise ConfigError("dist.deepspeed_config", f"{path}: {where}: {why}"
                          + ("" if section else f" (DeepSpeed's {exc.title})") + more) from None
    except (AssertionError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError("dist.deepspeed_config", f"{path}: DeepSpeed refuses the config "
                          f"merged with it: {type(exc).__name__}: {exc}") from None


def refuse_unsupported_fp16(cfg: RunConfig, ds_config: dict | None = None) -> None:
    """fp16 under ZeRO 1-3 is DeepSpeed's fp16 mode, which a CPU has only where oneDNN has fp16
    kernels for it (AVX512-FP16 or AMX): refused elsewhere, before the model loads (it failed at
    deepspeed.initialize, after the data and the model had loaded)."""
    ds_config = ds_config if ds_config is not None else deepspeed_config(cfg, world_size=1)
    if not ds_config["fp16"]["enabled"]:
        return
    from deepspeed.accelerator import get_accelerator

    if not get_accelerator().is_fp16_supported():
        raise ConfigError("train.precision", f"fp16 under ZeRO stage {cfg.dist.zero_stage} is "
                          "DeepSpeed's fp16 mode, which this machine "
                          f"({get_accelerator().device_name()}) does not support; use a GPU, "
                          "dist.zero_stage 0 (torch autocast), bf16 or fp32")


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


def fp16_step_skipped(engine, scale_before: float, skipped_before: int) -> bool:
    """After an optimizer step in fp16: was it skipped for inf/NaN gradients?

    ZeRO 1-3 count their skips in `engine.skipped_steps` and leave the learning-rate schedule
    where it was. At ZeRO 0 torch's GradScaler skips `optimizer.step()` and halves its scale, but
    DeepSpeed does not see it and steps the schedule anyway: here the skip is counted the same
    way and the schedule taken back one step, so both paths skip alike.
    """
    scaler = getattr(engine, "torch_autocast_z0_gradscaler", None)
    if scaler is None:
        return engine.skipped_steps > skipped_before
    if scaler.get_scale() >= scale_before:  # the scale only drops when the step was skipped
        return False
    engine.skipped_steps += 1
    scheduler = engine.lr_scheduler
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        scheduler.last_epoch -= 1
        apply_schedule(scheduler)
    return True


def apply_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR) -> list[float]:
    """Set the optimizer's rates to what `scheduler` gives at its position (last_epoch): the
    same numbers LambdaLR itself computes, so an unchanged schedule gets back the rates it had."""
    lrs = [base * factor(scheduler.last_epoch)
           for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs
    return lrs


def label_bf16_optimizer_checkpoints(engine) -> None:
    """Make ZeRO-1 checkpoints of bf16 runs with fp32 gradient accumulation say their stage.

    DeepSpeed runs that combination with its BF16_Optimizer (fp32 master weights and optimizer
    state partitioned as in ZeRO-1, one partition per rank), whose checkpoint leaves out the
    ZeRO stage; DeepSpeed's zero_to_fp32 (which `evaluate` and `predict` consolidate checkpoints
    with, and the copy DeepSpeed writes beside them) then refuses it as "not a zero checkpoint".
    Labelled stage 1 it consolidates to exactly the master weights (tests/test_precision.py);
    loading ignores the label.
    """
    from deepspeed.checkpoint.constants import ZERO_STAGE
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer

    optimizer = engine.optimizer
    if not isinstance(optimizer, BF16_Optimizer):
        return
    unlabelled = optimizer.state_dict

    def state_dict():
        state = unlabelled()
        state.setdefault(ZERO_STAGE, 1)
        return state
    optimizer.state_dict = state_dict
