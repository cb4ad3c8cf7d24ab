"""The benchmark rows: transformers' Seq2SeqTrainer route and this package's loop, with variants.

`hf_trainer` is what the paper's scripts run: `Seq2SeqTrainer` with `Seq2SeqTrainingArguments`
(bf16 and fused AdamW on a GPU), the default random sampler (transformers 5 renamed
group_by_length to train_sampling_strategy; its default is random), `DataCollatorForSeq2Seq`
padding each batch, no evaluation, no saving, no reporting. A callback marks step begin/end.

`loop` is the engine as it stands: DeepSpeed ZeRO-0 in one process (`train.precision` auto: bf16
on a GPU), random-order batches of the same size (`StepPlan`), the trainer's own step
(`engine.step.TrainStep`: pinned non-blocking copies, nothing read back per micro-batch), the
config's defaults otherwise. Variants set the config switches a user would set (`loop_config`),
named by underscore-separated tokens:

| token     | what it switches on                                                                  |
|-----------|--------------------------------------------------------------------------------------|
| `budget`  | `train.batching=token_budget` (`TokenBudgetPlan`) of the same padded tokens per step on average |
| `bucket`  | `train.batching=bucketed` (`BucketedPlan`): the same budget, at most `train.length_buckets` shapes |
| `pack`    | `train.batching=packed` (`PackedPlan`): rows of the longest source and target (target to 64s), as many rows as the same budget holds, documents masked apart (`kernels.packed_attention`: flex on a GPU without attention dropout, SDPA with a dense mask otherwise) |
| `fused`   | `optim.fused` (fused AdamW), `model.attention=sdpa` (BART: flash on padded batches; T5: its relative-bias attention), no KV cache in training |
| `compile` | `torch.compile` of every encoder and decoder layer, dynamic shapes (implies `fused`) |
| `static`  | the same compilation with static shapes: one graph per batch shape (implies `compile`) |
| `lean`    | `model.lean_ce`: the chunked LM-head cross-entropy of `kernels.lean_ce` (implies `fused`) |
| `flex`    | `model.attention=flex` for T5 (implies `fused`; needs dropout 0)                     |
| `hfattn`  | BART and T5 attention left to transformers (its own SDPA path) in the fused variants |
| `engine`  | `model.compile`: the whole model compiled by the engine as in training, shapes per `model.compile_shapes` auto (static and warmed up with `bucket`; implies `fused`) |
| `graphs`  | `model.compile_mode reduce-overhead`: the engine's model.compile replaying CUDA graphs (implies `engine`) |
| `cudnn`   | `model.cudnn_attention true`: SDPA may take cuDNN's kernels (torch's own first choice on Hopper; off by default, 3-4x slower steps on varying shapes) |

so `loop_budget` isolates the batching, `loop_budget_compile` adds compilation with the fused
settings, and `loop_budget_compile_lean` the lean loss on top.

Compilation is regional: each layer is compiled, and layers of one class share the compiled code,
so compile time does not grow with depth, and later rows of the same process reuse it. Lengths are
never padded up to buckets: recompilation is bounded by marking the batch and sequence dims dynamic
(`dynamic=True`, duck sizing off so that a batch size equal to a length by chance adds no guard),
so every batch shape runs the same graphs. Matmuls go to cuBLAS either way; the fused elementwise
kernels take the row count as an argument. Compiled rows hand the model a prepared 4D padding
mask (`as_4d_mask`): transformers would drop a 2D mask without padding, and the layers would need
a second graph for those batches. What still makes separate graphs: the layer class (encoder,
decoder) and, for T5, the first block of a stack, which computes the position bias the others
receive: 2 graphs for BART, 4 for T5 (more once T5's lean loss calls the stacks its own way).
All layers go through one code object, so `torch._dynamo.config.recompile_limit` is raised to
RECOMPILE_LIMIT; past it torch would run the layer eagerly rather than compile again. Two untimed
priming steps, on a padded and an unpadded batch, compile what is needed before the warm-up
(`priming_s` says how long that took), and the row reports `graphs_compiled_while_timed` (0 when
no compilation was timed). `static` compiles each new shape instead: right for fixed lengths, a
recompilation per shape otherwise. With `bucket`, `static` compiles each bucket shape in
untimed steps before the warm-up instead of the two priming steps. That compilation is the
bench's own (regional, 4D masks); `engine` rows compile as `seq2seq-es train --model.compile true`
does (`get_engine` and `builders.warm_up_compiled`, the batches' own 2D masks), so
`loop_bucket_engine` is exactly the user's `--train.batching bucketed --model.compile true`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ConfigError, UnknownNameError
from .data import BatchTokens, SyntheticData, batch_tokens
from .shapes import BenchShape, build_model
from .timing import StepClock

LOOP_TOKENS = ("budget", "bucket", "pack", "fused", "compile", "static", "engine", "graphs", "lean",
               "flex", "hfattn", "cudnn")
RECOMPILE_LIMIT = 32


@dataclass(frozen=True)
class ImplSpec:
    name: str
    route: str                   # hf_trainer | loop
    budget: bool = False
    bucket: bool = False         # bucketed token budget (few shapes)
    pack: bool = False           # packed rows (one shape)
    fused: bool = False
    compile: bool = False
    static: bool = False         # compile with static shapes instead of dynamic ones
    engine: bool = False         # model.compile (the engine's whole-model compile)
    lean: bool = False
    attention: str = "hf"        # model.attention where the family has it (BART sdpa, T5 sdpa/flex)
    cudnn: bool = False          # model.cudnn_attention
    graphs: bool = False         # model.compile_mode reduce-overhead (CUDA graphs)

    def describe(self, family: str) -> str:
        if self.route == "hf_trainer":
            return "Seq2SeqTrainer, random sampler, DataCollatorForSeq2Seq"
        parts = ["bucketed token budget" if self.bucket else "packed rows" if self.pack
                 else "token budget" if self.budget else "random batches"]
        if self.fused:
            parts.append("fused AdamW")
        if self.compile:
            parts.append("compiled layers" + (" (static shapes)" if self.static else ""))
        if self.engine:
            parts.append("model.compile" + (" with CUDA graphs" if self.graphs else ""))
        if self.lean:
            parts.append("lean CE")
        if self.cudnn:
            parts.append("cuDNN attention")
        if self.attention != "hf" and self.attention in _attention_kernels(family):
            parts.append(f"{family.upper()} {self.attention} attention")
        return ", ".join(parts)


def _attention_kernels(family: str) -> tuple[str, ...]:
    """The family's model.attention kernels (BART: sdpa; T5: sdpa, flex)."""
    from ..models.family import get_family

    return get_family(family).attention_impls


def parse_impl(name: str) -> ImplSpec:
    if name == "hf_trainer":
        return ImplSpec(name, "hf_trainer")
    head, *tokens = name.split("_")
    has = set(tokens)
    unknown = [t for t in tokens if t not in LOOP_TOKENS]
    # One batching; one kind of compilation (the bench's regional one or the engine's; packed
    # rows take the engine's); T5's attention either ours or transformers'.
    conflicting = len(has & {"budget", "bucket", "pack"}) > 1 or {"flex", "hfattn"} <= has \
        or bool(has & {"engine", "graphs", "pack"} and has & {"compile", "static"})
    if head != "loop" or unknown or len(has) != len(tokens) or conflicting:
        raise UnknownNameError("bench impl", name,
                               ["hf_trainer", "loop", *(f"loop_{t}" for t in LOOP_TOKENS),
                                "loop_budget_compile_lean (any combination)"])
    fused = bool(has & {"fused", "compile", "static", "engine", "graphs", "lean", "flex"})
    attention = "flex" if "flex" in has else ("sdpa" if fused and "hfattn" not in has else "hf")
    return ImplSpec(name, "loop", budget="budget" in has, bucket="bucket" in has,
                    pack="pack" in has, fused=fused,
                    compile=bool(has & {"compile", "static"}), static="static" in has,
                    engine=bool(has & {"engine", "graphs"}), lean="lean" in has,
                    attention=attention, cudnn="cudnn" in has, graphs="graphs" in has)


@dataclass
class BenchCase:
    """Everything the rows of one (model, distribution) share."""
    shape: BenchShape
    dist: str
    device: torch.device
    data: SyntheticData
    batch_size: int
    max_tokens: int
    warmup: int
    steps: int
    seed: int = 0
    dropout: float | None = None

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps


@dataclass
class RowRun:
    """What a row measured before summarising: micro-batches per step and the step clock."""
    step_batches: list[list[BatchTokens]]
    clock: StepClock
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Token budget of the fixed-size route


def random_batch_budget(source_lengths: np.ndarray, target_lengths: np.ndarray, batch_size: int,
                        seed: int) -> int:
    """Average padded tokens, B x (longest source + longest target), of the random-order batches."""
    from ..data.sampler import StepPlan

    plan = StepPlan(len(source_lengths), batch_size, 1, 1, seed)
    if plan.steps_per_epoch == 0:
        raise ConfigError("--batch", f"batch size {batch_size} is larger than the "
                          f"{len(source_lengths)} synthetic examples")
    costs = [len(idx) * (int(source_lengths[idx].max()) + int(target_lengths[idx].max()))
             for step in range(plan.steps_per_epoch)
             for idx in [np.asarray(plan.micro_batches(0, step, 0)[0])]]
    return int(round(sum(costs) / len(costs)))


# ---------------------------------------------------------------------------------------------
# hf_trainer


def pad_tokenizer(shape: BenchShape):
    """A minimal fast tokenizer whose only job is DataCollatorForSeq2Seq's padding."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    names = list(shape.adapter.vocab_head)
    vocab = {token: i for i, token in enumerate(names)}
    if vocab["<pad>"] != shape.pad_token_id:
        raise AssertionError(f"{shape.name}: pad id {shape.pad_token_id} is not the tokenizer's")
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                   eos_token="</s>")


class _RecordingCollator:
    """Wraps the Trainer's collator and notes each batch's tokens, in the order batches are made.

    accelerate's data loader fetches one batch ahead, but in order: the k-th batch collated is
    the k-th step's (one micro-batch per step).
    """

    def __init__(self, inner):
        self.inner = inner
        self.batches: list[BatchTokens] = []

    def __call__(self, features):
        out = self.inner(features)
        self.batches.append(batch_tokens(out))
        return out


def _scrubbed_launcher_env():
    """Hide RANK/WORLD_SIZE/... (set by the loop's process group) from accelerate's state."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

    @contextlib.contextmanager
    def scrub():
        saved = {k: os.environ.pop(k) for k in names if k in os.environ}
        try:
            yield
        finally:
            os.environ.update(saved)
    return scrub()


def run_hf_trainer(case: BenchCase, spec: ImplSpec) -> RowRun:
    from transformers import (DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments,
                              TrainerCallback)

    on_gpu = case.device.type == "cuda"
    clock = StepClock(case.device)

    class StepMarks(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            clock.begin()

        def on_step_end(self, args, state, control, **kwargs):
            clock.end()

    model = build_model(case.shape, case.device, case.seed, case.dropout)
    collator = _RecordingCollator(DataCollatorForSeq2Seq(pad_tokenizer(case.shape), model=model,
                                                         label_pad_token_id=-100))
    with tempfile.TemporaryDirectory(prefix="seq2seq-es-bench-") as out_dir, \
            _scrubbed_launcher_env():
        args = Seq2SeqTrainingArguments(
            output_dir=out_dir, per_device_train_batch_size=case.batch_size,
            max_steps=case.total_steps, learning_rate=5e-5, bf16=on_gpu,
            optim="adamw_torch_fused" if on_gpu else "adamw_torch", use_cpu=not on_gpu,
            report_to="none", save_strategy="no", eval_strategy="no", logging_strategy="no",
            disable_tqdm=True, seed=case.seed, dataloader_num_workers=0,
            remove_unused_columns=False)
        trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=case.data,
                                 data_collator=collator, callbacks=[StepMarks()])
        trainer.train()
        wrapped = type(trainer.model_wrapped).__name__
        del trainer, model
    steps = clock.steps
    return RowRun([[b] for b in collator.batches[:steps]], clock, {"hf_model_wrapper": wrapped})


# ---------------------------------------------------------------------------------------------
# loop


def layer_stacks(model) -> list[torch.nn.ModuleList]:
    """The encoder's and the decoder's list of layers (BART: layers, T5: block)."""
    from ..models.family import family_of_model

    return family_of_model(model).layer_stacks(model)


def compile_layers(model, dynamic: bool) -> int:
    """torch.compile each encoder and decoder layer in place; returns how many were wrapped."""
    import torch._dynamo
    import torch.fx.experimental._config as fx_config

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit,
                                               RECOMPILE_LIMIT)
    if dynamic:
        fx_config.use_duck_shape = False
    count = 0
    for stack in layer_stacks(model):
        for layer in stack:
            layer.compile(dynamic=dynamic)
            count += 1
    return count


def compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def loop_config(case: BenchCase, spec: ImplSpec):
    """The run config a user would set for this row: the switches its tokens name."""
    from ..config import RunConfig

    cfg = RunConfig()
    cfg.train.batch_size = case.batch_size
    cfg.train.grad_accum = 1
    cfg.train.seed = case.seed
    cfg.train.max_steps = case.total_steps
    cfg.train.batching = "bucketed" if spec.bucket else "token_budget" if spec.budget \
        else "packed" if spec.pack else "fixed"
    cfg.train.max_tokens = case.max_tokens if spec.budget or spec.bucket else 0
    if spec.pack:
        source_len, target_len = packed_row(case)
        cfg.data.max_source_length, cfg.data.max_target_length = source_len, target_len
        cfg.train.batch_size = max(1, round(case.max_tokens / (source_len + target_len)))
    cfg.model.compile = spec.engine
    cfg.model.compile_mode = "reduce-overhead" if spec.graphs else "default"
    cfg.optim.fused = spec.fused
    cfg.model.lean_ce = spec.lean
    # A kernel the family lacks (flex for BART) leaves its attention to transformers.
    cfg.model.attention = spec.attention \
        if spec.attention in case.shape.adapter.attention_impls else "hf"
    cfg.model.dropout = case.dropout
    cfg.model.cudnn_attention = spec.cudnn
    cfg.dist.zero_stage = 0
    return cfg


def packed_row(case: BenchCase) -> tuple[int, int]:
    """(source, target) tokens of a packed row: the longest source (a multiple of 8), the
    longest target rounded up to 64s (what max_source_length and max_target_length would be)."""
    longest_source = int(case.data.source_lengths.max())
    longest_target = int(case.data.target_lengths.max())
    return -(-longest_source // 8) * 8, -(-longest_target // 64) * 64


def loop_collator(case: BenchCase, cfg):
    """The loop rows' collator: training's (builders.plain_collator: padded to multiples of 8
    on a GPU, 64 when the model is compiled). The bench once padded token-budget batches to any
    length, a step training never runs."""
    from ..engine.builders import plain_collator

    return plain_collator(cfg, case.shape.pad_token_id, case.shape.decoder_start_token_id,
                          packed=cfg.train.batching == "packed")


def _step_plan(case: BenchCase, cfg, collator):
    """The row's plan, built by training's builder (builders.build_step_plan) from the
    synthetic lengths, as get_step_plan builds it from a split's (bucketed: the collator then
    pads to the plan's buckets)."""
    from ..engine.builders import build_step_plan

    return build_step_plan(cfg, 1, len(case.data),
                           lambda: (case.data.source_lengths, case.data.target_lengths),
                           collator.pad_to_multiple_of, collator)


def as_4d_mask(batch: dict) -> dict:
    """The padding mask as a prepared [B, 1, 1, S] boolean mask, which transformers passes on as is.

    With a 2D mask, transformers drops the mask of a batch without padding, and a compiled layer
    then needs a second graph; a 4D mask keeps one graph for every batch (at the price of the
    flash kernel for unpadded BART batches, which then run the masked SDPA kernel).
    """
    return {**batch, "attention_mask": batch["attention_mask"][:, None, None, :].bool()}


def priming_batches(examples: list[dict], collator) -> list[dict]:
    """A batch with source padding and one without, cut from these examples.

    Padded and unpadded batches are the two kinds a compiled layer might need separate graphs
    for; one untimed step on each compiles whatever they need before the warm-up, so that no
    compilation lands in a timed step whatever order the batches come in.
    """
    shortest_source = min(len(e["input_ids"]) for e in examples)
    shortest_target = min(len(e["labels"]) for e in examples)
    even = [{"input_ids": e["input_ids"][:shortest_source], "labels": e["labels"][:shortest_target]}
            for e in examples]
    batches = [collator(even)]
    if len(even) > 1 and shortest_source > 1:
        ragged = [dict(even[0], input_ids=even[0]["input_ids"][:-1])] + even[1:]
        batches.insert(0, collator(ragged))
    return batches


def prepare_loop_model(case: BenchCase, spec: ImplSpec, cfg) -> tuple[torch.nn.Module, dict]:
    """A fresh model with the row's model-side switches applied as get_model applies them, before
    DeepSpeed wraps it (model.lean_ce is installed by get_engine, as in training)."""
    model = build_model(case.shape, case.device, case.seed, case.dropout)
    notes: dict = {}
    if spec.fused:
        model.config.use_cache = False
    if cfg.model.attention != "hf":
        case.shape.adapter.apply_attention(model, cfg.model.attention, config_key="attention")
        notes["attention"] = cfg.model.attention
    if spec.pack:  # as get_model installs it, after the other kernels
        from ..kernels.packed_attention import install_packed_attention
        install_packed_attention(model)
    if spec.compile:
        notes["compiled_layers"] = compile_layers(model, dynamic=not spec.static)
        notes["compile"] = "regional, " + ("static shapes" if spec.static else "dynamic=True")
    return model, notes


def run_loop(case: BenchCase, spec: ImplSpec) -> RowRun:
    """One loop row, with model.cudnn_attention set as get_model sets it for training and put
    back afterwards: the switch is process-wide, and later rows share the process."""
    from ..engine.builders import set_cudnn_attention

    earlier = set_cudnn_attention(spec.cudnn)
    try:
        return _run_loop(case, spec)
    finally:
        set_cudnn_attention(earlier)


def _run_loop(case: BenchCase, spec: ImplSpec) -> RowRun:
    from ..data.length_buckets import dummy_features, warm_up_shapes
    from ..engine import distributed as D
    from ..engine.builders import get_engine, warm_up_compiled
    from ..engine.step import TrainStep

    env = D.read_env()
    if env.world_size != 1:
        raise ConfigError("--impls", "the benchmark runs in one process; start it without a "
                          f"launcher (found world size {env.world_size})")
    if env.device.type != case.device.type:
        raise ConfigError("--device", f"DeepSpeed runs on {env.device.type} here; benchmark on the "
                          "CPU of a CUDA machine with CUDA_VISIBLE_DEVICES= set")
    D.init(env, "auto")
    cfg = loop_config(case, spec)
    graphs_before = compiled_graphs()
    model, notes = prepare_loop_model(case, spec, cfg)
    collator = loop_collator(case, cfg)
    plan = _step_plan(case, cfg, collator)
    engine, *_ = get_engine(model, cfg, env, case.total_steps)
    engine.train()
    if spec.engine:  # as the Trainer does after get_engine
        started = time.perf_counter()
        compiled = warm_up_compiled(engine, cfg, plan, collator, case.shape.first_plain_id, env)
        notes["compile"] = f"model.compile, {compiled or 'shapes compile as they come'}"
        notes["priming_s"] = time.perf_counter() - started
    step = TrainStep(engine, env, cfg)
    # Compiled rows hand the layers a prepared 4D mask (see as_4d_mask): one graph per layer.
    layout = as_4d_mask if spec.compile else (lambda batch: batch)
    if spec.compile:
        started = time.perf_counter()
        if spec.static and spec.bucket:  # every bucket shape once, in untimed steps
            warm_up_shapes(lambda shape: step([layout(collator(dummy_features(
                shape, case.shape.first_plain_id)))], 0), plan.shapes())
            notes["priming_steps"] = len(plan.shapes())
        else:
            first = plan.micro_batches(0, 0, 0)[0]
            primers = priming_batches([case.data[i] for i in first], collator)
            for batch in primers:
                step([layout(batch)], 0)
            notes["priming_steps"] = len(primers)
        if case.device.type == "cuda":
            torch.cuda.synchronize(case.device)
        notes["priming_s"] = time.perf_counter() - started      # mostly compilation
    elif spec.bucket and not spec.engine:
        # Uncompiled too, each bucket shape runs once untimed: what a shape costs the first time
        # (cuDNN's attention plan, cuBLAS's choice, the allocator's blocks) is paid once in a
        # run of thousands of steps, and 10 steps would time mostly first-seen shapes.
        started = time.perf_counter()
        warm_up_shapes(lambda shape: step([collator(dummy_features(
            shape, case.shape.first_plain_id))], 0), plan.shapes())
        notes["priming_steps"] = len(plan.shapes())
        notes["priming_s"] = time.perf_counter() - started
    step.loss_window.zero_()  # the priming steps' dummy batches are no part of the loss noted
    if spec.pack:  # the packed collator packs the training split's (marked) features only
        from ..data.packing import PACKED_FEATURE

        def feature(i):
            return {**case.data[i], PACKED_FEATURE: True}
    else:
        feature = case.data.__getitem__
    clock = StepClock(case.device)
    step_batches: list[list[BatchTokens]] = []
    steps = plan.iter_steps(0, 0, 0)
    graphs_when_timed = None
    try:
        for number in range(case.total_steps):
            if number == case.warmup:
                graphs_when_timed = compiled_graphs()
            _, _, micro_indices = next(steps)
            micro = [collator([feature(i) for i in idx]) for idx in micro_indices]
            step_batches.append([batch_tokens(b) for b in micro])
            clock.begin()
            result = step([layout(b) for b in micro], number)
            clock.end()
        # One read after the timed steps, as the trainer reads once per logging interval: the
        # loss per target token over the steps run (a sanity check between the rows).
        notes["loss"] = step.read(result)["loss"]
    finally:
        step.close()
        engine.destroy()
        del engine, model
    if spec.compile or spec.engine:
        notes["compiled_graphs"] = compiled_graphs() - graphs_before
        # Non-zero means compilation time sits inside the measured steps.
        notes["graphs_compiled_while_timed"] = compiled_graphs() - graphs_when_timed
    if spec.budget or spec.bucket:
        notes["plan_padded_fraction"] = plan.padded_fraction(0)
    if spec.bucket:
        notes["bucket_shapes"] = len(plan.shapes())
    if spec.pack:
        notes["plan_padded_fraction"] = plan.packed_padding(0)
        notes["packed_rows"] = f"{cfg.train.batch_size} x ({cfg.data.max_source_length} + " \
                               f"{cfg.data.max_target_length})"
    return RowRun(step_batches, clock, notes)


def run_impl(case: BenchCase, spec: ImplSpec) -> RowRun:
    if spec.route == "hf_trainer":
        return run_hf_trainer(case, spec)
    if spec.attention == "flex" and "flex" in case.shape.adapter.attention_impls \
            and case.dropout != 0.0:
        raise ConfigError("--dropout", "T5 flex attention has no attention dropout; pass "
                          "--dropout 0 (for every row) to benchmark it")
    return run_loop(case, spec)
