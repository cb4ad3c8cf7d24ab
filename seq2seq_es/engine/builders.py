"""Builders the training loop calls: model, generation config, data, collator, DeepSpeed engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import RunConfig, check_target_coverage
from ..data.collator import Seq2SeqCollator
from ..data.sampler import StepPlan
from ..errors import ConfigError
from . import distributed as D
from .optim import (build_optimizer, build_scheduler, deepspeed_config,
                    label_bf16_optimizer_checkpoints, precision_report, refuse_unsupported_fp16)


def get_model(cfg: RunConfig):
    from ..models import get_model_spec, load_model_and_tokenizer

    spec = get_model_spec(cfg.model.name)
    model, tokenizer = load_model_and_tokenizer(spec.name, cfg.model.path)
    if cfg.model.attention_window and spec.adapter.reads("model.attention_window"):
        # Before the kernels: they read each layer's window side when they run.
        spec.adapter.set_attention_window(model, cfg.model.attention_window)
    check_source_positions(cfg, spec, model)
    # BART, LED and T5 kernels (models/family.py); bert2bert does not read model.attention.
    spec.adapter.apply_attention(model, cfg.model.attention, config_key="model.attention")
    if cfg.train.batching == "packed":
        # Document-masked attention for packed rows (issue 12.3), after any other kernel; BART
        # and T5 families only (ConfigError naming train.batching otherwise).
        from ..kernels.packed_attention import install_packed_attention
        install_packed_attention(model)
    if cfg.model.dropout is not None:
        set_dropout(model, cfg.model.dropout)
    if cfg.model.gradient_checkpointing:
        set_activation_checkpointing(model, True, scope=cfg.model.checkpoint_scope)
        model.config.use_cache = False
    set_cudnn_attention(cfg.model.cudnn_attention)
    return model, tokenizer, spec


def set_cudnn_attention(enabled: bool) -> bool:
    """model.cudnn_attention: whether SDPA may pick cuDNN's attention kernels (a process-wide
    switch; the CPU ignores it). Returns the earlier setting, for the bench to put back between
    rows. cuDNN builds an execution plan for each new shape: token-budget batches change shape
    every step, where the Trainer's batches of 32 keep theirs (BENCHMARKS.md, 2026-12-04)."""
    import torch

    earlier = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(enabled)
    return earlier


def check_source_positions(cfg: RunConfig, spec, model) -> None:
    """Refuse a data.max_source_length the loaded checkpoint cannot embed. The config check
    (config.validate) knows the registry's positions only; a --model.path checkpoint (an LED
    converted with fewer --max-positions) failed with an IndexError at the first long batch,
    after loading everything (or at the first validation)."""
    found = spec.adapter.source_positions(model)
    if found is None:
        return
    positions, multiple = found
    padded = -(-cfg.data.max_source_length // multiple) * multiple
    if padded > positions:
        padding = (f" (padded to {padded}, a multiple of its attention window {multiple})"
                   if padded != cfg.data.max_source_length else "")
        # no flag named: predict gives this value as --max-source-length (it re-keys the error)
        raise ConfigError("data.max_source_length",
                          f"{cfg.data.max_source_length}{padding} exceeds the {positions} source "
                          f"positions of the checkpoint {cfg.model.path or cfg.model.name}: "
                          f"{positions // multiple * multiple} or less fits")


def set_activation_checkpointing(model, on: bool, scope: str = "all") -> None:
    """Turn non-reentrant activation checkpointing of every layer on or off (scope "encoder":
    the encoder's layers only, model.checkpoint_scope). Non-reentrant works with shared weights
    and ZeRO-3's parameter hooks. transformers 5.2x renamed the methods
    (activation_checkpointing_*, the old names warn on every call); earlier 5.x have only the
    old ones."""
    if on:
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        if scope == "encoder":
            # transformers checkpoints a layer when its own `gradient_checkpointing` is set
            # (GradientCheckpointingLayer, and the stacks of older code): clear the decoder's.
            for module in model.get_decoder().modules():
                if getattr(module, "gradient_checkpointing", False):
                    module.gradient_checkpointing = False
        return
    disable = getattr(model, "activation_checkpointing_disable", None)
    (disable or model.gradient_checkpointing_disable)()


DROPOUT_ATTRIBUTES = ("dropout", "attention_dropout", "activation_dropout", "dropout_rate",
                      "hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")


def set_dropout(model, p: float) -> None:
    """Set every dropout probability, whichever way the family stores it.

    BART/LED keep probabilities as float attributes read at call time, T5 and BERT use
    nn.Dropout modules; the config is updated too so an exported model says what was trained.
    """
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, p)
    configs = [model.config] + [getattr(model.config, k) for k in ("encoder", "decoder")
                                if hasattr(model.config, k)]
    for config in configs:
        for name in DROPOUT_ATTRIBUTES:
            if isinstance(getattr(config, name, None), float):
                setattr(config, name, p)


def get_generation_config(cfg: RunConfig, spec, tokenizer):
    from ..models import build_generation_config

    g = cfg.gen
    return build_generation_config(spec, tokenizer, num_beams=g.num_beams,
                                   max_new_tokens=g.max_new_tokens,
                                   min_new_tokens=g.min_new_tokens,
                                   length_penalty=g.length_penalty,
                                   no_repeat_ngram_size=g.no_repeat_ngram_size,
                                   early_stopping=g.early_stopping, do_sample=g.do_sample,
                                   temperature=g.temperature, top_k=g.top_k, top_p=g.top_p)


@dataclass
class SplitData:
    examples: object          # datasets.Dataset: source, target, references, example_id
    tokenized: object         # datasets.Dataset: input_ids, labels, lengths
    report: object            # data.tokenize.TruncationReport
    load_report: object = None  # tasks.loading.LoadReport: rows read, bad rows skipped and why

    def data_report(self) -> dict:
        """What loading and tokenizing this split did, for the run folder's data_report.json."""
        loaded = self.load_report.to_dict() if self.load_report is not None else {}
        return {**loaded, "truncation": self.report.to_dict()}


def data_files(cfg: RunConfig) -> dict[str, str] | None:
    files = {split: path for split, path in (("train", cfg.data.train_file),
                                             ("validation", cfg.data.validation_file),
                                             ("test", cfg.data.test_file)) if path}
    return files or None


def load_split(cfg: RunConfig, task, split: str, max_samples: int | None, log):
    """One split's examples and load report: read and formatted, not yet tokenized."""
    # Imported here: `datasets` is only needed once data is loaded (the GPU bench runs without it).
    from ..tasks import load_examples

    examples, load_report = load_examples(task, split, data_files=data_files(cfg),
                                          hub_revision=cfg.data.hub_revision,
                                          cache_dir=cfg.data.cache_dir, max_samples=max_samples,
                                          skip_bad_rows=cfg.data.skip_bad_rows,
                                          columns=cfg.data.column_map())
    log(f"[{split}] {load_report}")
    return examples, load_report


def tokenize_split(cfg: RunConfig, task, tokenizer, model, split: str, loaded, log) -> SplitData:
    """A loaded split (load_split's pair) tokenized as the model's family needs."""
    from ..data.tokenize import tokenize_examples

    examples, load_report = loaded
    tokenized, report = tokenize_examples(
        examples, tokenizer, split=split, max_source_length=cfg.data.max_source_length,
        max_target_length=cfg.data.max_target_length,
        source_truncation_side=task.source_truncation_side,
        drop_leading_label_id=model.config.decoder_start_token_id, cache_dir=cfg.data.cache_dir)
    log(report.summary())
    return SplitData(examples, tokenized, report, load_report)


def get_split(cfg: RunConfig, task, tokenizer, model, split: str, max_samples: int | None,
              log) -> SplitData:
    return tokenize_split(cfg, task, tokenizer, model, split,
                          load_split(cfg, task, split, max_samples, log), log)


def has_test_split(cfg: RunConfig, task, log) -> bool:
    """Whether the run scores a test split at its end; says once why not.

    Local files have a test split only when `data.test_file` is given; the hub when the task
    lists one. The whole split is scored (not `data.max_eval_samples`): these are the reported
    numbers. It is loaded at the start, so that a bad test file fails before hours of training.
    """
    if not cfg.train.eval_test:
        log("train.eval_test=false: the test split is not scored")
        return False
    if cfg.data.train_file and not cfg.data.test_file:
        log("no test split: the run reads local files and data.test_file is not set; pass "
            "--data.test_file to score the best checkpoint on test")
        return False
    if not cfg.data.train_file and "test" not in task.splits:
        log(f"no test split: task {task.name} has none on the hub; pass --data.train_file, "
            "--data.validation_file and --data.test_file to score one")
        return False
    return True


def get_collator(cfg: RunConfig, spec, tokenizer, model) -> Seq2SeqCollator:
    options = spec.adapter.collator_options(cfg, model, tokenizer)
    if options is not None:  # LED: padded to its attention window, global attention mask
        return Seq2SeqCollator(tokenizer.pad_token_id, model.config.decoder_start_token_id,
                               **options)
    packed = False
    if cfg.train.batching == "packed":
        from ..kernels.packed_attention import is_installed
        packed = is_installed(model)  # training (get_model installed it); evaluate/predict: plain
    return plain_collator(cfg, tokenizer.pad_token_id, model.config.decoder_start_token_id,
                          packed=packed)


def plain_collator(cfg: RunConfig, pad_token_id: int, decoder_start_token_id: int, *,
                   packed: bool) -> Seq2SeqCollator:
    """The collator of a model without collator options of its own (not LED): get_collator's,
    and the bench's loop rows', which must time the step training runs."""
    multiple, dynamic = collator_padding(cfg)
    if packed:
        from ..data.packing import PackedCollator
        return PackedCollator(pad_token_id, decoder_start_token_id,
                              pad_to_multiple_of=multiple, mark_dynamic=dynamic,
                              rows=cfg.train.batch_size, source_len=cfg.data.max_source_length,
                              target_len=cfg.data.max_target_length)
    return Seq2SeqCollator(pad_token_id, decoder_start_token_id,
                           pad_to_multiple_of=multiple, mark_dynamic=dynamic)


def collator_padding(cfg: RunConfig) -> tuple[int, bool]:
    """(pad_to_multiple_of, mark_dynamic) of a model without its own collator options: what
    get_collator gives training, and what the bench's loop rows must use to time the same step."""
    # Compiled models see fewer distinct shapes when sources are padded to multiples of 64;
    # bucketed batches bound their shapes themselves (and would lose their fit to 64s).
    coarse = cfg.model.compile and cfg.train.batching != "bucketed"
    multiple = 64 if coarse else (8 if torch.cuda.is_available() else 1)
    # model.compile_shapes dynamic: mark_dynamic on the batch and length dims (see compile_shapes)
    return multiple, cfg.model.compile and compile_shapes(cfg) == "dynamic"


def source_bucket_align(max_source_length: int, pad_to_multiple_of: int) -> int:
    """What source buckets are multiples of: DEFAULT_ALIGN and the collator's multiple (LED's
    window) together, unless that rounds the longest sources past what the window alone
    needs. A window that is no multiple of 8 (12, 20, ...) made buckets of lcm(8, window):
    data.max_source_length 4092 at window 12 gave a bucket of 4104, past ledo-tiny's 4096
    positions (IndexError at the first long batch); config.validate checked only the window."""
    import math

    from ..data.length_buckets import DEFAULT_ALIGN
    align = math.lcm(DEFAULT_ALIGN, pad_to_multiple_of)
    if pad_to_multiple_of > 1 and (-(-max_source_length // align) * align
                                   > -(-max_source_length // pad_to_multiple_of)
                                   * pad_to_multiple_of):
        return pad_to_multiple_of
    return align


def token_lengths(tokenized) -> tuple[list[int], list[int]]:
    """(source, target) token counts of a tokenized split, read as Arrow list lengths: datasets'
    lazy columns convert every row's token list to Python to take its len()."""
    import pyarrow.compute as pc

    table = tokenized.with_format("arrow")[:]   # honours an indices mapping (select, shuffle)
    return (pc.list_value_length(table["input_ids"]).to_pylist(),
            pc.list_value_length(table["labels"]).to_pylist())


def build_step_plan(cfg: RunConfig, world_size: int, num_examples: int,
                    lengths: Callable[[], tuple[list[int], list[int]]], pad_to_multiple_of: int,
                    collator: Seq2SeqCollator | None = None):
    """The plan of `cfg.train.batching` over `num_examples` examples whose (source, target)
    token counts `lengths()` gives (called only by the batchings that read them): get_step_plan
    reads them from a split, the bench's loop rows from their synthetic lengths."""
    if cfg.train.batching == "bucketed":
        from ..data.length_buckets import DEFAULT_ALIGN, DEFAULT_MAX_SHAPES, BucketedPlan
        if collator is None:
            raise ValueError("train.batching=bucketed: get_step_plan needs the collator, which "
                             "must pad to the plan's bucket lengths")
        sources, targets = lengths()
        plan = BucketedPlan(sources, targets, cfg.train.max_tokens,
                            cfg.train.grad_accum, world_size, cfg.train.seed,
                            max_shapes=getattr(cfg.train, "length_buckets", DEFAULT_MAX_SHAPES),
                            align=DEFAULT_ALIGN,
                            source_align=source_bucket_align(cfg.data.max_source_length,
                                                             pad_to_multiple_of))
        collator.set_buckets(plan.buckets.source, plan.buckets.target)
        return plan
    if cfg.train.batching == "token_budget":
        from ..data.token_budget import TokenBudgetPlan
        sources, targets = lengths()
        return TokenBudgetPlan(sources, targets, cfg.train.max_tokens,
                               cfg.train.grad_accum, world_size, cfg.train.seed,
                               pad_to_multiple_of=pad_to_multiple_of)
    if cfg.train.batching == "packed":
        from ..data.packing import PackedCollator, PackedPlan
        if not isinstance(collator, PackedCollator):
            raise ValueError("train.batching=packed: get_step_plan needs the PackedCollator, "
                             "which get_collator gives a model with the packed attention")
        sources, targets = lengths()
        return PackedPlan(sources, targets, cfg.train.batch_size,
                          cfg.data.max_source_length, cfg.data.max_target_length,
                          cfg.train.grad_accum, world_size, cfg.train.seed)
    plan = StepPlan(num_examples, cfg.train.batch_size, cfg.train.grad_accum, world_size,
                    cfg.train.seed)
    if plan.steps_per_epoch == 0:
        raise ConfigError("train.batch_size",
                          f"one step takes {plan.global_batch} examples (batch_size x "
                          f"grad_accum x {world_size} ranks) but the training split has "
                          f"{num_examples}")
    return plan


def get_step_plan(cfg: RunConfig, env: D.DistEnv, train: SplitData, pad_to_multiple_of: int,
                  collator: Seq2SeqCollator | None = None):
    """The data order: fixed-size random batches, token-budget batches of similar lengths, or
    bucketed token-budget batches (few shapes), which set the collator's bucket lengths."""
    plan = build_step_plan(cfg, env.world_size, len(train.tokenized),
                           lambda: token_lengths(train.tokenized), pad_to_multiple_of, collator)
    if cfg.train.batching == "packed":
        from ..data.packing import mark_packed
        # Marked features are packed by the collator; validation and test stay one per row.
        train.tokenized = mark_packed(train.tokenized)
    total = cfg.train.max_steps or plan.steps_per_epoch * cfg.train.epochs
    warmup = cfg.optim.warmup_steps
    if warmup >= total:
        raise ConfigError("optim.warmup_steps", f"warmup of {warmup} steps is not shorter than "
                          f"training ({total} steps)")
    return plan, total


def get_engine(model, cfg: RunConfig, env: D.DistEnv, total_steps: int):
    """The DeepSpeed engine (which owns the optimizer), the learning-rate schedule the trainer
    reads the rate from, and the DeepSpeed config it was built with (saved in the run)."""
    import deepspeed

    from .step import clips_in_train_step

    if cfg.model.lean_ce:
        from ..kernels.lean_ce import install_lean_loss
        # A compiled forward whose lengths vary keeps the loss out of its graph: in it, every
        # new target-token count would compile the model again (kernels/lean_ce.py).
        install_lean_loss(model, cfg.model.lean_ce_chunk, cfg.optim.label_smoothing,
                          in_graph=not cfg.model.compile or compile_shapes(cfg) == "static")

    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    ds_config = deepspeed_config(cfg, env.world_size)
    refuse_unsupported_fp16(cfg, ds_config)  # run_dir.check_inputs said it before loading
    if env.is_main:
        print(precision_report(cfg), flush=True)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    label_bf16_optimizer_checkpoints(engine)
    if cfg.optim.max_grad_norm and clips_in_train_step(engine):
        # TrainStep clips on the device by the norm it logs (see there); the saved DeepSpeed
        # config keeps saying gradient_clipping = optim.max_grad_norm, which is what happens.
        engine._config.gradient_clipping = 0.0  # what engine.gradient_clipping() reads per step
    if cfg.dist.zero_stage == 0 and engine.dp_world_size == 1:
        # One process has nothing to average, yet DeepSpeed would flatten every gradient into a
        # bucket, all-reduce it over the one rank and copy it back after each step's last
        # backward (two passes over the gradient's memory).
        engine.enable_backward_allreduce = False
    scheduler.grad_scaler = engine.torch_autocast_z0_gradscaler  # saved with it (optim.Schedule)
    if cfg.model.compile:
        # static: dynamic=False, one graph per shape; dynamic and auto: torch's default, which
        # honours the collator's mark_dynamic (dynamic) or turns a recompiled size dynamic (auto)
        engine.compile(backend=cfg.model.compile_backend, compile_kwargs=compile_kwargs(cfg))
    return engine, scheduler, ds_config


def compile_kwargs(cfg: RunConfig) -> dict:
    """torch.compile's keywords for model.compile: dynamic=False for static shapes (torch's
    default, None, otherwise) and model.compile_mode unless it is the default."""
    kwargs: dict = {"dynamic": False} if compile_shapes(cfg) == "static" else {}
    if cfg.model.compile_mode != "default":
        kwargs["mode"] = cfg.model.compile_mode
    return kwargs


def compile_shapes(cfg: RunConfig) -> str:
    """model.compile_shapes with auto resolved: static where the batches have few fixed shapes
    (bucketed: at most train.length_buckets; packed: one), torch's own default ("auto")
    elsewhere. Which of static and dynamic is faster for bucketed batches is for a GPU to say
    (BENCHMARKS.md); static is the default because its graphs are all compiled before step 1."""
    shapes = cfg.model.compile_shapes
    if shapes == "auto" and cfg.train.batching in ("bucketed", "packed"):
        return "static"
    return shapes


def warm_up_compiled(engine, cfg: RunConfig, plan, collator, token_id: int,
                     env: D.DistEnv) -> str | None:
    """Compile every batch shape of a statically compiled run before training; what to print.
    The dummy batches repeat `token_id` (any ordinary token).

    Bucketed plans list their shapes; each is run once (forward and backward on dummy tokens,
    gradients cleared, weights and optimizer untouched) at ZeRO 0, under a forked RNG so that
    training draws the same dropout masks as without the warm-up (exact resume included). ZeRO
    1-3 hook gradients into their partitions, which a plain backward would disturb: there the
    shapes compile when first met. Packed batches have one shape (compiled at step 1).
    """
    if not cfg.model.compile or compile_shapes(cfg) != "static":
        return None
    from ..data.length_buckets import allow_static_shapes, warm_up_model

    shapes = plan.shapes() if cfg.train.batching == "bucketed" else []
    allow_static_shapes(max(len(shapes), 1))
    if not shapes:
        return None
    if cfg.dist.zero_stage > 0:
        return (f"{len(shapes)} batch shapes compile as they first come (ZeRO "
                f"{cfg.dist.zero_stage}: no warm-up)")
    devices = [env.device] if env.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        seconds = warm_up_model(engine, engine.module.parameters(), shapes, collator,
                                token_id=token_id, device=env.device,
                                lean_ce=cfg.model.lean_ce, backward=engine.backward)
    return f"compiled {len(shapes)} batch shapes before training in {sum(seconds.values()):.1f} s"


def check_targets(cfg: RunConfig, train: SplitData) -> None:
    check_target_coverage(cfg, train.report.target_lengths)
