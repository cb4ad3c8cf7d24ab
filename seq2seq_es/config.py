"""Run configuration: typed dataclasses, composed from defaults, YAML and dotted command-line keys.

Precedence, lowest first:
  1. the dataclass defaults below,
  2. the task's defaults (the paper's runs: lengths, batch, epochs, lr, generation),
  3. the model's defaults (e.g. BERT2BERT models read at most 512 source tokens), then the
     task's per-model entries (the paper's runs that differed by model),
  4. a YAML file given with `--config`,
  5. the launcher's environment (accelerate's config settings, `engine.distributed`),
  6. dotted command-line keys (`--optim.lr 3e-5`).
Generation lengths then follow the resolved target length unless `gen.*` was set.

Checks, each naming the bad key: a field whose values are a fixed set is annotated
`Literal[...]`, the one list of its choices, which the converter enforces as a value is set;
each section's `validate()` holds the rules on its own fields (run when a section is built,
and again by `validate(cfg)`, since dotted keys change fields after construction);
`validate(cfg)` adds the rules that relate sections, and that a folder key (train.output_dir,
data.cache_dir) names no file, before any work starts. A number is never nan or inf, an integer
never 2**31 or more in size (C ints overflowed after training), a text key never a YAML boolean
nor, where none means unset, empty. A run file that sets a key twice, or has a top-level name
that is no section, is refused (`load_yaml`). A dotted key given twice on the command line keeps
its last value, as argparse keeps a repeated flag's: scripts append overrides to a base command
line, and the slurm planner puts the user's keys after the run's own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

import yaml

from .errors import ConfigError, Seq2SeqEsError, close_matches, comma_names
# the launcher's rank, read before the process group: notes said once (their callers import
# first_launched_process from here)
from .launch_env import first_launched_process


INT_LIMIT = 2**31  # an integer key holds less in size: torch, numpy and CUDA take C ints, and a
                   # 20-digit batch size or beam width overflowed only after training


class _Section:
    """A config section: validated when built and by `validate(cfg)`. `_section` is its name
    in RunConfig, which prefixes its keys in errors; `_wide_ints` its integer keys with a range
    of their own, past INT_LIMIT."""

    _section = ""
    _wide_ints: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """The rules on this section's own fields; here, a Literal field holds one of its
        choices (also after a direct assignment, which no converter sees), a number is
        finite (no field means anything by nan or inf; where a value turns a feature off, it
        is 0), an integer is less than INT_LIMIT in size, and a key whose unset value is none
        is not empty text (an empty train.output_dir trained into the current folder, an empty
        data.train_file read the hub)."""
        for name, annotation in _section_types(type(self)).items():
            value, key = getattr(self, name), f"{self._section}.{name}"
            if typing.get_origin(annotation) is Literal:
                if not _is_choice(value, typing.get_args(annotation)):
                    raise ConfigError(key, _choices_message(typing.get_args(annotation), value))
            members = value if isinstance(value, (tuple, list)) else (value,)
            if any(isinstance(v, float) and not math.isfinite(v) for v in members):
                raise ConfigError(key, f"must be a finite number, got {_shown(value)}")
            if isinstance(value, int) and not isinstance(value, bool) \
                    and abs(value) >= INT_LIMIT and name not in self._wide_ints:
                shown = f"{value:.4g}" if abs(value) >= 10**15 else value  # 1e+30, not 31 digits
                raise ConfigError(key, f"must be less than 2**31 ({INT_LIMIT}) in size, got "
                                  f"{shown}")
            if annotation == (str | None) and isinstance(value, str) and not value.strip():
                raise ConfigError(key, f"is empty ({value!r}); give a value, or leave the key "
                                  "out (none) for its default")

    def _at_least(self, name: str, minimum: float, hint: str = "") -> None:
        """Refuse `name` below `minimum`, naming the key (hint: what the allowed values mean)."""
        if getattr(self, name) < minimum:
            raise ConfigError(f"{self._section}.{name}", f"must be >= {minimum}{hint}, "
                              f"got {_shown(getattr(self, name))}")


@dataclass
class ModelConfig(_Section):
    _section = "model"
    name: str = "barto-tiny"              # registry name (seq2seq-es list)
    path: str | None = None               # local folder or hub id overriding the registry's hub id
    gradient_checkpointing: bool = False  # non-reentrant activation checkpointing
    checkpoint_scope: Literal["all", "encoder"] = "all"  # with gradient_checkpointing: every
                                          # layer, or the encoder's only (the decoder's
                                          # activations grow with the target, not the source:
                                          # LEDO's 16K inputs need the encoder's checkpointed,
                                          # and its 512-token decoder's recompute costs time)
    attention: Literal["hf", "sdpa", "flex"] = "hf"  # BART, LED, T5 attention implementation
                                          # (seq2seq_es.kernels; hf: transformers' own)
    compile: bool = False                 # torch.compile the model (source lengths padded to
                                          # 64s unless train.batching is bucketed; targets
                                          # to the batch's longest)
    compile_shapes: Literal["auto", "static", "dynamic"] = "auto"  # with compile: static (a
                                          # graph per batch shape; bucketed or packed batches
                                          # only; bucket shapes all compiled before training
                                          # at ZeRO 0, packed's one at step 1), dynamic
                                          # (batch and length sizes marked dynamic), auto (static
                                          # for bucketed and packed batches, else torch's default)
    compile_backend: Literal["inductor", "aot_eager", "eager"] = "inductor"  # torch.compile
                                          # backend; aot_eager and eager make Dynamo's graphs
                                          # without code generation (to find a compile problem)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"] = "default"
                                          # torch.compile mode (inductor): reduce-overhead
                                          # replays each batch shape's kernels as a CUDA graph
                                          # (no per-kernel launch cost on the host; a graph per
                                          # shape, so for fixed, bucketed or packed batches)
    lean_ce: bool = False                 # chunked LM-head + cross-entropy, no full logits
    lean_ce_chunk: int = 2048             # tokens per chunk of the lean cross-entropy
    cudnn_attention: bool = False         # let SDPA use cuDNN's attention where torch picks it
                                          # (its first choice on Hopper since torch 2.10-2.11).
                                          # Off: flash/efficient kernels; on an H200 cuDNN's
                                          # made token-budget steps 4x and bucketed ones 3.4x
                                          # slower (host time per call; BENCHMARKS.md 2026-12-04)
    dropout: float | None = None          # override every dropout probability (None: the model's)
    attention_window: int = 0             # LED: keys each encoder token attends around it (even;
                                          # 0: the checkpoint's, LEDO 1024)

    def validate(self) -> None:
        super().validate()
        if self.lean_ce_chunk < 1:
            raise ConfigError("model.lean_ce_chunk", "must be at least 1")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ConfigError("model.dropout", "must be in [0, 1)")
        if self.attention_window != 0 and (self.attention_window < 4 or self.attention_window % 2):
            # transformers' LED chunks the band by the window's side: a side of 1 (window 2)
            # breaks its diagonal layout (a shape error at the first forward)
            raise ConfigError("model.attention_window", "must be an even number of keys (LED "
                              "splits it evenly around each token) of at least 4, or 0; got "
                              f"{self.attention_window}")


@dataclass
class DataConfig(_Section):
    _section = "data"
    task: str = "mlsum"                   # registry task name (seq2seq-es list), or your own
                                          # task's name (with source_column and target_column)
    train_file: str | None = None         # local jsonl/json/csv/tsv/parquet (.gz/.bz2/.xz
                                          # too) with the hub dataset's columns
    validation_file: str | None = None    # local file for the validation split (as train_file)
    test_file: str | None = None          # local file for the test split (as train_file)
    hub_revision: str | None = None       # e.g. refs/convert/parquet for script-based hub datasets
    max_source_length: int = 512          # source tokens kept; longer sources are cut (dialogue
                                          # histories on the left) and counted in data_report.json
    max_target_length: int = 128          # target tokens kept; refused if it cuts most training
                                          # targets (below the model's own limit)
    max_train_samples: int | None = None  # keep the first N training examples (None: all)
    max_eval_samples: int | None = None   # validate on the first N examples (None: all; the test
                                          # split is always scored whole)
    skip_bad_rows: bool = True            # skip (and report) empty/non-string fields instead of failing
    global_attention: str = "first"       # LED: first | prefix:N | sentences
    columns: str = ""                     # the data's own column names for the task's,
                                          # FILE=TASK pairs: article=text,highlights=summary
    source_column: str = ""               # your own task: the column the model reads
    target_column: str = ""               # your own task: the column it learns to write
    metrics: str = ""                     # your own task: metrics, comma-separated (default
                                          # rouge); the first one's main score picks checkpoints
    hub_dataset: str | None = None        # your own task: a hub dataset (owner/name) with splits
                                          # train, validation, test, instead of local files
    hub_config: str | None = None         # your own task: the hub dataset's config, if it has
                                          # several
    cache_dir: str | None = None          # cache of hub downloads, cleaned copies of local
                                          # files and tokenized splits (None: the libraries'
                                          # caches; tokens in $SEQ2SEQ_ES_CACHE or
                                          # ~/.cache/seq2seq_es)

    def validate(self) -> None:
        super().validate()
        if self.max_source_length < 1:
            raise ConfigError("data.max_source_length", "must be at least 1")
        if self.max_target_length < 1:
            raise ConfigError("data.max_target_length", "must be at least 1")
        # 0 or -1 (None is "all") was refused only by the loader, after the model had loaded
        # and the training split was read; `config` and `slurm submit` passed it.
        for key in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"data.{key}", f"must be at least 1, got {value} (none: "
                                  "every example)")
        self.column_map()  # refused here, before any data is read
        ga = self.global_attention
        if not (ga in ("first", "sentences") or (ga.startswith("prefix:") and ga[7:].isdigit()
                                                 and int(ga[7:]) >= 1)):
            raise ConfigError("data.global_attention", "expected first, sentences or prefix:N "
                              f"with N >= 1 (global tokens at the start), got {ga!r}")


    def column_map(self) -> dict[str, str]:
        """data.columns as {the data's name: the task's name}."""
        renames: dict[str, str] = {}
        for pair in filter(None, (part.strip() for part in self.columns.split(","))):
            old, sep, new = (side.strip() for side in pair.partition("="))
            if not (sep and old and new):
                raise ConfigError("data.columns", f"expected FILE=TASK pairs separated by commas "
                                  f"(e.g. article=text,highlights=summary), got {pair!r}")
            if old in renames or new in renames.values():
                raise ConfigError("data.columns", f"{pair}: each column is renamed once")
            renames[old] = new
        return renames


@dataclass
class OptimConfig(_Section):
    _section = "optim"
    lr: float = 5e-5                      # peak learning rate of AdamW (after warmup)
    weight_decay: float = 0.0             # AdamW decay (the paper's scripts kept transformers'
                                          # 0); never on biases, norms or T5's position bias
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW beta1, beta2 (command line: 0.9,0.98)
    eps: float = 1e-8                     # AdamW epsilon
    schedule: Literal["linear", "cosine", "constant"] = "linear"  # learning rate after warmup
    warmup_ratio: float = 0.0             # fraction of total steps; ignored when warmup_steps > 0
    warmup_steps: int = 0                 # linear warmup steps; > 0 overrides warmup_ratio
    max_grad_norm: float = 1.0            # 0 disables clipping
    label_smoothing: float = 0.0          # the training loss's (the Trainer's
                                          # label_smoothing_factor); validation loss stays plain
    fused: bool = True                    # fused AdamW kernel on GPUs (measured fastest); CPU: off

    def validate(self) -> None:
        super().validate()
        if self.lr <= 0:
            raise ConfigError("optim.lr", "must be positive")
        self._at_least("weight_decay", 0, " (0: no decay)")
        if not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise ConfigError("optim.betas", "each beta must be in [0, 1), e.g. 0.9,0.999; got "
                              + _shown(self.betas))
        if self.eps <= 0:
            raise ConfigError("optim.eps", f"must be positive (e.g. 1e-8), got {_shown(self.eps)}")
        self._at_least("max_grad_norm", 0, " (0 disables clipping)")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError("optim.warmup_ratio", "must be in [0, 1)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError("optim.label_smoothing", "must be in [0, 1) (0: off; the Trainer's "
                              f"usual 0.1), got {_shown(self.label_smoothing)}")
        if self.warmup_steps < 0:
            raise ConfigError("optim.warmup_steps", "must be >= 0")


TRACKERS = ("tensorboard", "wandb")
SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit
# Keys that name a run rather than configure it: where it is written and its W&B group (the
# runs of two sweeps collected together differ in it, each sweep's folder name). A sweep's runs
# always differ there, so no duplicate check and no grid point reads them.
LABEL_KEYS = ("train.output_dir", "train.run_group")
# And the keys that say how a run is watched or stored, not what it trains: no grid point of
# collect, and no change of settings a resume reports.
BOOKKEEPING_KEYS = frozenset({*LABEL_KEYS, "train.resume", "train.progress_bar",
                              "train.log_every", "train.report_to", "train.save_every",
                              "train.save_every_min", "train.keep_last",
                              "train.stop_check_every", "data.cache_dir", "dist.timeout_min"})


@dataclass(frozen=True)
class StepUnit:
    """What an optimizer step is counted in: a fixed step takes the next examples of the epoch
    however they are split into micro-batches and ranks; the token plans (token_budget,
    bucketed, packed) count micro-batches. A resume on other ranks (checkpoint.data_layout) and
    `slurm resume` keep that count."""
    step_key: str   # the checkpoint's data-layout key for one step's whole count
    per_rank: str   # the product of config keys that one rank adds to it
    counts: str     # what it counts, for messages

    def per_rank_value(self, train: "TrainConfig") -> int:
        return train.grad_accum * (train.batch_size if self is FIXED_STEP else 1)


FIXED_STEP = StepUnit("train.batch_size x train.grad_accum x ranks",
                      "train.batch_size x train.grad_accum", "examples")
TOKEN_PLAN_STEP = StepUnit("train.grad_accum x ranks", "train.grad_accum", "micro-batches")


@dataclass
class TrainConfig(_Section):
    _section = "train"
    _wide_ints = ("seed",)  # numpy's 32 bits (SEED_MAX)
    output_dir: str | None = None         # run folder: checkpoints, metrics.jsonl, final/, results
                                          # (none: runs/<model>-<task>, one per pair)
    seed: int = 42                        # seed of initialisation, dropout and the data order
    deterministic: bool = False           # deterministic kernels only (GPU runs repeat bit for
                                          # bit; slower; an op without one stops the run)
    epochs: int = 6                       # passes over the training split (when max_steps is 0)
    max_steps: int = 0                    # > 0 overrides epochs
    batch_size: int = 8                   # per device, per micro-batch (batching=fixed; packed:
                                          # rows of max_source_length / max_target_length)
    batching: Literal["fixed", "token_budget", "bucketed", "packed"] = "fixed"  # fixed: batch_size
                                          # rows; token_budget: length-sorted, padded <= max_tokens;
                                          # bucketed: token budget, few shapes (for compile);
                                          # packed: several examples per row, fixed shape
    max_tokens: int = 0                   # token_budget, bucketed: padded source+target tokens per
                                          # micro-batch
    length_buckets: int = 16              # bucketed: at most this many micro-batch shapes
    grad_accum: int = 1                   # micro-batches per optimizer step on each rank
    eval_batch_size: int = 0              # 0: same as batch_size
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 where the GPU
                                          # supports it, else fp16; fp32 on CPU. fp16: dynamic
                                          # loss scaling. auto gives T5 models fp32 instead of fp16
    log_every: int = 10                   # steps (>= 1) between train/* records in metrics.jsonl;
                                          # train/loss is over the steps since the last record
    stop_check_every: int = 1             # steps between the ranks' agreement on a stop signal
                                          # or a time-based save (one collective each time)
    eval_every: int = 0                   # steps; 0: none between epochs (see eval_per_epoch)
    eval_per_epoch: bool = True           # validate at the end of every epoch (picks the best)
    eval_at_start: bool = False           # validate the untrained model at step 0
    eval_at_end: bool = True              # validation loss + generation + metrics after the last step
                                          # (false: only when an epoch end or eval_every falls there)
    eval_generate: bool = True            # validations generate and score (false: the loss
                                          # only, the best by it; the chosen checkpoint is still
                                          # generated and scored on validation and test)
    best_metric: str | None = None        # validation metric picking the best checkpoint (None:
                                          # the task's main metric, or "loss" without
                                          # eval_generate; "loss": lowest eval loss)
    load_best_at_end: bool = True         # final/ and the test scores come from the best checkpoint
    early_stopping_patience: int = 0      # end training after this many validations in a row
                                          # without a new best (0: off); the end is as usual
    eval_test: bool = True                # score the best checkpoint on the test split at the end
    save_every: int = 0                   # steps; 0: none by step count (see save_every_min)
    save_every_min: float = 30.0          # minutes between checkpoints by wall time; 0: off
    keep_last: int = 2                    # newest checkpoints kept (the best one is always kept)
    resume: Literal["none", "auto", "must"] | str = "none"  # none: refuse a run folder holding
                                          # a checkpoint; auto: its latest, if any; must: its
                                          # latest, or fail; else a checkpoint folder
    on_nan: Literal["stop", "skip"] = "stop"  # on a non-finite loss, stop the run or skip the
                                          # micro-batch (on every rank)
    export: bool = True                   # write a Hugging Face checkpoint at the end
    export_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"  # dtype of final/'s weights
    report_to: str = "tensorboard"        # trackers, comma-separated: tensorboard, wandb; none
    run_group: str = ""                   # W&B run group (wandb's group); slurm sweep sets it to
                                          # the sweep's folder name ('': none, unless
                                          # WANDB_RUN_GROUP is set, which wandb reads itself)
    push_to_hub: str | None = None        # hub repo id to upload final/ to at the end
    hub_private: bool = True              # a repo push_to_hub creates is private (false:
                                          # public); an existing repo keeps its visibility
    progress_bar: bool = True             # rank 0: a bar on a terminal; false, or no terminal:
                                          # a line on stdout every train.log_every steps
    profile_steps: str = ""               # A-B: torch.profiler traces of training steps A..B
                                          # (1-based) in RUN/profile/, per rank ('': none)

    def profile_range(self) -> tuple[int, int] | None:
        """train.profile_steps as (first, last) 1-based steps, both profiled; None: off."""
        text = self.profile_steps.strip()
        if not text:
            return None
        first, sep, last = text.partition("-")
        try:
            start, end = int(first), int(last) if sep else int(first)
        except ValueError:
            raise ConfigError("train.profile_steps", f"expected a step or a range of steps "
                              f"such as 10-12, got {text!r}") from None
        if not 1 <= start <= end:
            raise ConfigError("train.profile_steps", f"expected 1 <= first step <= last step, "
                              f"got {text!r}")
        return start, end

    def validate(self) -> None:
        super().validate()
        if self.max_steps < 0:
            raise ConfigError("train.max_steps", "must be >= 0")
        if self.max_steps == 0 and self.epochs < 1:
            raise ConfigError("train.epochs", "must be at least 1 when train.max_steps is 0")
        if self.batch_size < 1:
            raise ConfigError("train.batch_size", "must be at least 1")
        if self.length_buckets < 1:
            raise ConfigError("train.length_buckets", "must be at least 1")
        if self.grad_accum < 1:
            raise ConfigError("train.grad_accum", "must be at least 1")
        self._at_least("eval_batch_size", 0, " (0: same as train.batch_size)")
        if not 0 <= self.seed <= SEED_MAX:
            raise ConfigError("train.seed", f"must be in [0, {SEED_MAX}] (2**32 - 1, what numpy "
                              f"seeds with), got {self.seed}")
        trackers = comma_names("train.report_to", self.report_to)
        if not trackers or any(name not in (*TRACKERS, "none") for name in trackers) \
                or ("none" in trackers and len(trackers) > 1):
            raise ConfigError("train.report_to", "expected a comma-separated list of tensorboard "
                              f"and wandb, or none; got {self.report_to!r}")
        self._at_least("early_stopping_patience", 0, " (0: off)")
        if not self.eval_generate and self.best_metric not in (None, "loss"):
            raise ConfigError("train.best_metric", f"'{self.best_metric}' needs generated "
                              "validations, and train.eval_generate is false (the loss only); "
                              "set train.best_metric loss, or train.eval_generate true")
        if self.keep_last < 1:
            raise ConfigError("train.keep_last", "must be at least 1")
        if self.stop_check_every < 1:
            raise ConfigError("train.stop_check_every", "must be at least 1")
        self.profile_range()  # refused here, before any loading
        if self.resume.lower() in ("none", "auto", "must") and not os.path.isdir(self.resume):
            self.resume = self.resume.lower()  # `Auto` was read as a folder of that name
        meant = _RESUME_WORDS.get(self.resume.lower())
        if meant and not os.path.isdir(os.path.expanduser(self.resume)):
            # The Trainer's --resume_from_checkpoint True: taken for a folder named 'true',
            # refused only once the run had started
            what = "the latest checkpoint, if any" if meant == "auto" else "a fresh run"
            raise ConfigError("train.resume", f"expected none, auto, must or a checkpoint "
                              f"folder, got {self.resume!r}; for {what}, give {meant}")
        if str(self.push_to_hub).lower() in ("true", "false"):
            # The Trainer's --push_to_hub is a switch: here it names the repo, and 'true' would
            # create a repo called true at the end of the run
            raise ConfigError("train.push_to_hub", f"expected a hub repo id (namespace/name), "
                              f"got {self.push_to_hub!r}; the Trainer's --push_to_hub true is "
                              "train.push_to_hub NAMESPACE/NAME here (none: no upload)")
        for key in ("log_every", "eval_every", "save_every", "save_every_min"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key}", "must be >= 0")
        if self.log_every == 0:
            # 0 was taken as 1 without a word: a record every step, where eval_every and
            # save_every read 0 as none (the loss records cannot be turned off: they are the run's
            # loss curve and its non-finite check)
            raise ConfigError("train.log_every", "must be at least 1 (steps between the loss "
                              "records of metrics.jsonl and the log lines)")

    def step_unit(self) -> StepUnit:
        return FIXED_STEP if self.batching == "fixed" else TOKEN_PLAN_STEP


TIMEOUT_MIN_MAX = 10 * 365 * 24 * 60
# Words other tools take for train.resume (the Trainer's resume_from_checkpoint True, "latest"):
# here they would name a checkpoint folder; the choice each one meant.
_RESUME_WORDS = {"true": "auto", "yes": "auto", "1": "auto", "latest": "auto", "last": "auto",
                 "false": "none", "no": "none", "0": "none"}


@dataclass
class DistConfig(_Section):
    _section = "dist"
    zero_stage: Literal[0, 1, 2, 3] = 0   # DeepSpeed ZeRO stage
    backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: nccl on GPU, gloo on CPU
    offload_optimizer: bool = False       # ZeRO-Offload of the optimizer state to CPU (stages 1-3)
    grad_accum_dtype: Literal["fp32", "bf16"] = "fp32"  # ZeRO 1-3 with bf16: dtype gradients are
                                          # accumulated in (bf16: less memory, less exact); the
                                          # reductions between ranks stay bf16
    timeout_min: int = 30                 # minutes a collective may wait for the other ranks
    deepspeed_config: str | None = None   # JSON merged over the generated config (no "auto")

    def validate(self) -> None:
        super().validate()
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError("dist.offload_optimizer", "needs dist.zero_stage 1, 2 or 3")
        self._at_least("timeout_min", 1, " (minutes a collective waits)")
        if self.timeout_min > TIMEOUT_MIN_MAX:  # past datetime.timedelta's range it overflowed
            raise ConfigError("dist.timeout_min", f"must be at most {TIMEOUT_MIN_MAX} (10 years "
                              f"of minutes), got {self.timeout_min}")


@dataclass
class GenConfig(_Section):
    _section = "gen"
    num_beams: int = 4                    # beam width of validation, test and predict (1: greedy)
    max_new_tokens: int | None = None     # None: data.max_target_length (resolved by compose)
    min_new_tokens: int = 0               # lowered to max_new_tokens unless set explicitly
    length_penalty: float = 1.0           # beam score length exponent (> 1 favours longer outputs)
    no_repeat_ngram_size: int = 0         # forbid repeating any n-gram of this size (0: off)
    early_stopping: bool = True           # stop beam search once num_beams hypotheses are finished
    do_sample: bool = False               # sample tokens instead of searching (seeded by
                                          # train.seed: the same predictions on every run)
    temperature: float = 1.0              # do_sample: divide the logits by it (< 1: surer)
    top_k: int = 50                       # do_sample: keep the k likeliest tokens (0: all)
    top_p: float = 1.0                    # do_sample: keep the likeliest tokens that make up p

    def validate(self) -> None:
        """None for max_new_tokens is left to `validate(cfg)`, which knows the target length."""
        super().validate()
        if self.num_beams < 1:
            raise ConfigError("gen.num_beams", "must be at least 1")
        if not self.temperature > 0:  # not finite: refused by every float key's check
            raise ConfigError("gen.temperature", f"must be a positive number, got "
                              f"{self.temperature}")
        self._at_least("top_k", 0, " (0: all tokens)")
        if not 0 < self.top_p <= 1:
            raise ConfigError("gen.top_p", f"must be in (0, 1], got {self.top_p}")
        self._at_least("no_repeat_ngram_size", 0, " (0: off)")
        # Before min_new_tokens: a minimum that follows it (follow_target_length) takes its
        # bad value too, and would be named instead
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError("gen.max_new_tokens", f"must be at least 1, got "
                              f"{self.max_new_tokens}")
        self._at_least("min_new_tokens", 0)
        if self.max_new_tokens is None:
            return
        if self.min_new_tokens > self.max_new_tokens:
            raise ConfigError("gen.min_new_tokens", f"{self.min_new_tokens} is larger than "
                              f"gen.max_new_tokens {self.max_new_tokens} (the minimum may be the "
                              "task's default); set --gen.min_new_tokens to at most "
                              f"{self.max_new_tokens}")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    gen: GenConfig = field(default_factory=GenConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


@functools.lru_cache(maxsize=None)
def _default_settings(task: Any, model: Any) -> tuple[tuple[str, Any], ...]:
    """Every key's value as `compose` gives it for `task` and `model` (the registry's per-task
    and per-model settings on the dataclass defaults); the bare defaults for a pair this
    version cannot compose (a task of the user's own, a model it does not know)."""
    config = RunConfig()
    if isinstance(task, str) and isinstance(model, str):
        with contextlib.suppress(Seq2SeqEsError, ValueError):  # refused: the bare defaults
            with contextlib.redirect_stderr(io.StringIO()):  # no notes from a lookup
                config = compose(task=task, model=model)
    return tuple((f"{section}.{key}", value)
                 for section, values in config.to_dict().items()
                 for key, value in values.items())


def with_keys_added_since(flat: dict[str, Any]) -> dict[str, Any]:
    """A run's flat config.yaml ({'section.key': value}) with each key that an older version
    of this package did not write yet at what a resume of that run composes for it (the
    registry's value for its task and model, else the default): the behaviour the key was
    added to keep. Collect compared such a key as None against a newer run's value, so the
    seeds of one setting trained before and after an upgrade were not averaged (upgrade
    audit). Only sections the file has; the keys naming the run (data.task, model.name) are
    never filled in."""
    sections = {key.split(".", 1)[0] for key in flat}
    defaults = _default_settings(flat.get("data.task"), flat.get("model.name"))
    added = {key: value for key, value in defaults
             if key not in flat and key.split(".", 1)[0] in sections
             and key not in ("data.task", "model.name")}
    return {**flat, **added} if added else flat


# ---------------------------------------------------------------------------------------------
# Setting values by dotted key, with type conversion from strings (command line) or YAML values.

@functools.lru_cache(maxsize=None)
def _section_types(section_cls) -> dict[str, Any]:
    """{field: resolved annotation} of a section's dataclass fields.

    Cached: resolving the string annotations is ~95% of composing a config, and the sweep
    planner composes hundreds of them."""
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def _is_choice(value: Any, choices: tuple) -> bool:
    # By type as well: True is no ZeRO stage 1, nor 1.0.
    return any(type(value) is type(choice) and value == choice for choice in choices)


def _choices_message(choices: tuple, value: Any) -> str:
    """'expected hf, sdpa or flex, got 'fast''."""
    return f"expected {_listed([str(choice) for choice in choices])}, got {value!r}"


def _listed(names: list[str]) -> str:
    """'hf, sdpa or flex'."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _shown(value: Any) -> str:
    """A value as it is typed on the command line: nan, 1.5,0.9."""
    if isinstance(value, (tuple, list)):
        return ",".join(_shown(v) for v in value)
    return str(value)


def _convert(key: str, raw: Any, annotation: Any) -> Any:
    """Convert `raw` to the field's annotated type; a mismatch is a ConfigError naming `key`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null")):
            if type(None) in args:
                return None
        if isinstance(raw, bool) and str in args:
            raise ConfigError(key, _text_expected(key, args, raw))
        # The first member that takes the value (Literal[...] | str: a choice, else any string);
        # the last member's error otherwise.
        error = None
        for member in (a for a in args if a is not type(None)):
            try:
                return _convert(key, raw, member)
            except ConfigError as exc:
                error = exc
        raise error
    if origin is Literal:
        for choice in args:
            try:
                value = _convert(key, raw, type(choice))
            except ConfigError:
                continue
            if _is_choice(value, (choice,)):
                return choice
        raise ConfigError(key, _choices_message(args, raw))
    if origin is tuple:
        if isinstance(raw, str):
            # 0.9,0.98 as typed, or as Python or YAML write a pair: (0.9, 0.98), [0.9, 0.98]
            raw = [p for p in raw.strip().strip("()[]").split(",") if p.strip()]
        if not isinstance(raw, (list, tuple)) or len(raw) != len(args):
            raise ConfigError(key, f"expected {len(args)} comma-separated values, got {raw!r}")
        return tuple(_convert(key, r, a) for r, a in zip(raw, args))
    if annotation is bool:
        if isinstance(raw, bool):
            return raw
        # YAML reads `1` as a number: the command line's 1 and 0 work in a run file too
        if raw in (0, 1) and isinstance(raw, int):
            return bool(raw)
        if isinstance(raw, str) and raw.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(raw, str) and raw.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(key, f"expected true or false, got {raw!r}")
    if annotation is int:
        if isinstance(raw, bool):
            raise ConfigError(key, f"expected an integer, got {raw!r}")
        if isinstance(raw, int):
            return raw
        if isinstance(raw, str):
            try:
                return int(raw.strip())  # exact, also past float's 2**53
            except ValueError:
                pass
        try:
            as_float = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(key, f"expected an integer, got {raw!r}") from None
        if not math.isfinite(as_float) or as_float != int(as_float):
            raise ConfigError(key, f"expected an integer, got {raw!r}")
        return int(as_float)
    if annotation is float:
        if isinstance(raw, bool):
            raise ConfigError(key, f"expected a number, got {raw!r}")
        try:
            return float(raw)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(key, f"expected a number, got {raw!r}") from None
    if annotation is str:
        if isinstance(raw, bool):  # YAML's unquoted true/false: str() made it the text 'True'
            raise ConfigError(key, _text_expected(key, (str,), raw))
        if (isinstance(raw, list) and key in COMMA_LIST_KEYS and raw
                and all(isinstance(item, str) for item in raw)):
            # A YAML list (the Trainer's `report_to: [wandb, tensorboard]`) is the same list
            # as the comma-separated text the command line takes
            return ",".join(raw)
        if isinstance(raw, (dict, list)):
            raise ConfigError(key, f"expected a string, got {raw!r}")
        return str(raw)
    return raw


# Text keys that hold a comma-separated list: a YAML list of strings is taken for them too.
COMMA_LIST_KEYS = frozenset({"train.report_to", "data.metrics"})

# What the free text of a key whose value is a choice or text means, for its errors.
TEXT_MEANING = {"train.resume": "a checkpoint folder"}


def _text_expected(key: str, members: tuple, raw: bool) -> str:
    """"expected text, got true" for a boolean where text goes (a Literal member's choices
    listed first: "expected none, auto, must or a checkpoint folder, got false")."""
    choices = [str(choice) for member in members if typing.get_origin(member) is Literal
               for choice in typing.get_args(member)]
    expected = _listed([*choices, TEXT_MEANING.get(key, "text")]) if choices else "text"
    return (f"expected {expected}, got {'true' if raw else 'false'} (YAML reads an unquoted "
            "true or false as a boolean)")


SECTIONS = {f.name: f.type for f in dataclasses.fields(RunConfig)}
_SECTION_CLASSES = {name: typing.get_type_hints(RunConfig)[name] for name in SECTIONS}


def set_dotted(cfg: RunConfig, key: str, raw: Any) -> None:
    """Set `section.field` on cfg from a raw value; unknown keys are refused with the known ones."""
    parts = key.split(".")
    if len(parts) != 2:
        raise ConfigError(key, "expected <section>.<field>, e.g. optim.lr; sections: "
                          + ", ".join(SECTIONS))
    section_name, field_name = parts
    if section_name not in SECTIONS:
        raise ConfigError(key, f"unknown section '{section_name}'; sections: {', '.join(SECTIONS)}"
                          + _suggest(section_name, SECTIONS))
    section = getattr(cfg, section_name)
    hints = _section_types(type(section))
    if field_name not in hints:
        owners = _owning_sections(field_name)
        # Where the key is (another section's), or the Trainer's name for it, before near misses.
        hint = (f"; '{field_name}' is a key of section {owners[0]}: {owners[0]}.{field_name}"
                if owners else trainer_name_hint(field_name)
                or _suggest_key(section_name, field_name))
        raise ConfigError(key, f"unknown key; keys of '{section_name}': {', '.join(hints)}"
                          + hint)
    setattr(section, field_name, _convert(key, raw, hints[field_name]))


# The Hugging Face Trainer's (TrainingArguments, Seq2SeqTrainingArguments) and run_summarization's
# names for what a key here does, for the errors of a user porting a command line or a config
# (a near-miss match of `save_total_limit` finds nothing). Names with no counterpart are absent.
TRAINER_NAMES = {
    "learning_rate": "optim.lr", "weight_decay": "optim.weight_decay",
    "adam_beta1": "optim.betas", "adam_beta2": "optim.betas", "adam_epsilon": "optim.eps",
    "lr_scheduler_type": "optim.schedule", "warmup_ratio": "optim.warmup_ratio",
    "warmup_steps": "optim.warmup_steps", "max_grad_norm": "optim.max_grad_norm",
    "num_train_epochs": "train.epochs", "max_steps": "train.max_steps", "seed": "train.seed",
    "per_device_train_batch_size": "train.batch_size",
    "per_device_eval_batch_size": "train.eval_batch_size",
    "gradient_accumulation_steps": "train.grad_accum", "bf16": "train.precision",
    "fp16": "train.precision", "logging_steps": "train.log_every",
    "eval_steps": "train.eval_every", "eval_strategy": "train.eval_every or train.eval_per_epoch",
    "evaluation_strategy": "train.eval_every or train.eval_per_epoch",
    "save_steps": "train.save_every", "save_total_limit": "train.keep_last",
    "metric_for_best_model": "train.best_metric",
    "load_best_model_at_end": "train.load_best_at_end",
    "resume_from_checkpoint": "train.resume", "output_dir": "train.output_dir",
    "report_to": "train.report_to", "push_to_hub": "train.push_to_hub",
    "hub_model_id": "train.push_to_hub", "hub_private_repo": "train.hub_private",
    "group_by_length": "train.batching", "do_predict": "train.eval_test",
    "gradient_checkpointing": "model.gradient_checkpointing",
    "model_name_or_path": "model.name or model.path", "torch_compile": "model.compile",
    "deepspeed": "dist.deepspeed_config", "dataset_name": "data.task",
    "max_source_length": "data.max_source_length", "max_target_length": "data.max_target_length",
    "max_train_samples": "data.max_train_samples", "max_eval_samples": "data.max_eval_samples",
    "generation_num_beams": "gen.num_beams", "num_beams": "gen.num_beams",
    "generation_max_length": "gen.max_new_tokens", "val_max_target_length": "gen.max_new_tokens",
    "length_penalty": "gen.length_penalty", "no_repeat_ngram_size": "gen.no_repeat_ngram_size",
}


# Options of torchrun, deepspeed and accelerate launch: given after the script, the launcher
# never saw them and the run was told "expected a dotted option" with no word of why.
LAUNCHER_FLAGS = frozenset({
    "nproc_per_node", "nnodes", "node_rank", "master_port", "master_addr", "standalone",
    "rdzv_backend", "rdzv_endpoint", "rdzv_id", "max_restarts", "num_gpus", "num_nodes",
    "include", "exclude", "hostfile", "num_processes", "num_machines", "main_process_port",
    "main_process_ip", "machine_rank", "multi_gpu", "config_file", "mixed_precision",
    "use_deepspeed"})


def trainer_name_hint(name: str) -> str:
    """'; the Trainer's save_total_limit is train.keep_last here' for a Trainer name, a word on
    where a launcher's own option goes, else ''."""
    plain = name.lstrip("-").replace("-", "_")
    plain = plain.split(".", 1)[1] if "." in plain else plain
    ours = TRAINER_NAMES.get(plain)
    if ours:
        return f"; the Trainer's {plain} is {ours} here"
    if plain in LAUNCHER_FLAGS and "." not in name:
        return (f"; {name} is an option of the launcher (torchrun, deepspeed or accelerate "
                "launch): give it before the script or -m seq2seq_es, not after")
    return ""


def _owning_sections(name: str) -> list[str]:
    return [section for section, cls in _SECTION_CLASSES.items() if name in _section_types(cls)]


def _suggest(name: str, known, prefix: str = "") -> str:
    """'; did you mean optim.lr?' for a near miss (prefix: the section's, before a key), else ''."""
    matches = close_matches(name, known)
    return f"; did you mean {' or '.join(prefix + m for m in matches)}?" if matches else ""


def _suggest_key(section: str, name: str) -> str:
    """'; did you mean optim.lr?' for a key unknown in `section`: near misses among the
    section's own keys first, then among the other sections' (`--train.lrr` meant optim.lr: a
    near miss of a key and of its section at once), at most three in all; else ''."""
    own = [f"{section}.{match}"
           for match in close_matches(name, _section_types(_SECTION_CLASSES[section]))]
    others: dict[str, list[str]] = {}  # a key name -> the other sections holding it
    for other, cls in _SECTION_CLASSES.items():
        if other != section:
            for key in _section_types(cls):
                others.setdefault(key, []).append(other)
    elsewhere = [f"{other}.{match}" for match in close_matches(name, others)
                 for other in others[match]]
    matches = (own + elsewhere)[:3]
    return f"; did you mean {' or '.join(matches)}?" if matches else ""


def apply_mapping(cfg: RunConfig, values: Mapping[str, Any], prefix: str = "") -> None:
    """Apply a nested ({'optim': {'lr': ..}}) or flat dotted ({'optim.lr': ..}) mapping."""
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and "." not in dotted:
            apply_mapping(cfg, value, prefix=dotted + ".")
        else:
            set_dotted(cfg, dotted, value)


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A YAML mapping that sets a key twice (yaml itself keeps the last, silently). `key` is
    dotted from the top (`optim.lr`; a top-level `optim.lr: ..` key and an `lr` under `optim:`
    are the same key); `first` and `second` are 1-based line numbers."""

    def __init__(self, key: str, first_node, second_node, section: bool = False):
        self.key, self.section = key, section  # section: the first holds a mapping
        self.first, self.second = first_node.start_mark.line + 1, second_node.start_mark.line + 1
        super().__init__(f"while reading key '{key}'", first_node.start_mark,
                         "found it again (a duplicate key)", second_node.start_mark)


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml's SafeLoader refusing a key set twice (DuplicateKeyError), where safe_load keeps the
    last one: a second `optim:` section silently replaced the first's learning rate.

    The check runs on the whole document before it is built, so that a key is named by its
    dotted path from the top; merge keys (`<<: *defaults`) are YAML's own overriding and are
    not duplicates."""

    def construct_document(self, node):
        _refuse_duplicates(node, "", {}, set())
        return super().construct_document(node)


def _refuse_duplicates(node, prefix: str, seen: dict[str, Any], walking: set[int]) -> None:
    if not isinstance(node, yaml.MappingNode) or id(node) in walking:
        return
    walking.add(id(node))
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = f"{prefix}{key_node.value}"
        if key in seen:
            raise DuplicateKeyError(key, seen[key][0], key_node,
                                    isinstance(seen[key][1], yaml.MappingNode))
        seen[key] = (key_node, value_node)
        _refuse_duplicates(value_node, key + ".", seen, walking)
    walking.discard(id(node))


def read_yaml(path: str | Path, flag: str = "--config") -> Any:
    """A YAML file's contents (None when empty), read with UniqueKeyLoader; a missing file, a
    folder, unreadable or invalid YAML and a duplicated key are ConfigErrors naming the file
    (a duplicate: the dotted key and both lines)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(flag, f"{path} is a folder; expected a YAML file (e.g. {path}/run.yaml)")
    if not path.is_file():
        raise ConfigError(flag, f"file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(flag, f"file {path} is not UTF-8 text; expected a YAML file") from None
    except OSError as exc:
        raise ConfigError(flag, f"cannot read {path}: {exc.strerror}") from None
    stream = io.StringIO(text)
    stream.name = str(path)  # YAML's syntax errors name the file, not "<unicode string>"
    try:
        return yaml.load(stream, Loader=UniqueKeyLoader)
    except DuplicateKeyError as exc:
        fix = "merge the two into one" if exc.section else "keep one"
        raise ConfigError(exc.key, f"file {path} has it twice, on lines {exc.first} and "
                          f"{exc.second}; {fix} (YAML would silently keep only the last)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(flag, f"file {path} is not valid YAML: {yaml_problem(exc)}") from None


def yaml_problem(exc: Exception) -> str:
    """A YAML syntax error on one line, where its first line is: "line 3, column 2: expected
    <block end>, but found '<block mapping start>' (while parsing a block mapping that starts
    on line 1)". str(exc) is four lines with the file named twice, and errors are one line."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or not problem:
        return " ".join(str(exc).split())
    text = f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context:
        where = f" that starts on line {context_mark.line + 1}" if context_mark else ""
        text += f" ({context}{where})"
    return text


def key_line(path: str | Path, key: str) -> int | None:
    """The 1-based line of dotted `key` (`section: key:` or a flat `section.key:`) in a YAML run
    file, or None: a value refused by its key names the line too, as an editor shows it."""
    try:
        root = yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(root, yaml.MappingNode):
        return None
    bare = key.split(".", 1)[-1]  # a SLURM settings file may leave out its `slurm:` section
    for name_node, value in root.value:
        name = str(name_node.value)
        if name in (key, bare):
            return name_node.start_mark.line + 1
        if isinstance(value, yaml.MappingNode) and key.startswith(name + "."):
            for inner, _ in value.value:
                if f"{name}.{inner.value}" == key:
                    return inner.start_mark.line + 1
    return None


def in_file(config_file: str | Path, key: str) -> str:
    """'(in FILE, line N)', or '(in FILE)' where the key's line is not found."""
    line = key_line(config_file, key)
    return f"(in {config_file}, line {line})" if line else f"(in {config_file})"


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A run file's {section: {key: value}} (or flat `section.key: value` entries), checked:
    see read_yaml, and every top-level name is a section or a dotted key."""
    loaded = read_yaml(path) or {}
    if not isinstance(loaded, dict):
        raise ConfigError("--config", f"file {path} must hold a mapping of sections")
    sections = {}
    for key, value in loaded.items():
        if "." not in str(key) and str(key) not in SECTIONS:
            raise ConfigError(str(key), f"file {path}: unknown section '{key}'; sections: "
                              f"{', '.join(SECTIONS)}{_misplaced_key_hint(str(key), value)}")
        if value is None and "." not in str(key):  # `data:` with nothing under it
            continue
        if "." not in str(key) and not isinstance(value, Mapping):
            raise ConfigError(str(key), f"file {path}: section '{key}' must hold keys "
                              f"(e.g. '{key}:' then indented 'name: value' lines), got {value!r}")
        sections[key] = value
    return sections


def _misplaced_key_hint(name: str, value: Any) -> str:
    """For a key written at the top level (`lr: 3e-5`): where it belongs, when exactly one
    section has it; else a near-miss section name (`optimm`)."""
    owners = _owning_sections(name)
    if len(owners) == 1:
        shown = "..." if value is None or isinstance(value, (dict, list)) else _shown(value)
        return (f"; '{name}' is a key of section {owners[0]}: write '{owners[0]}:' with "
                f"'{name}: {shown}' indented under it (or '{owners[0]}.{name}: {shown}')")
    if owners:
        return f"; '{name}' is a key of sections {', '.join(owners)}: put it under one of them"
    return trainer_name_hint(name) or _suggest(name, SECTIONS)


def _looks_like_option(arg: str) -> bool:
    """`--train.batch_size` or `--train.batch_size=2`, not a value such as -1, --1 or -1e-5."""
    name = arg[2:].split("=", 1)[0] if arg.startswith("--") else ""
    return "." in name and (name[0].isalpha() or name[0] == "_")


def command_flags(parser) -> list[str]:
    """A command's own --flags (argparse keeps them in `_option_string_actions`), for
    parse_overrides' near-miss hint."""
    return [flag for flag in parser._option_string_actions if flag.startswith("--")]


def undotted_hint(name: str, flags: Iterable[str] = ()) -> str:
    """For an option without a section (`--tsk`, `--lr`): the Trainer's or a launcher's name, the
    one section holding that key (`--lr`: --optim.lr), else a near miss among the command's own
    `flags` (`--tsk`: --task); '' when nothing is close."""
    hint = trainer_name_hint(name)
    if hint:
        return hint
    plain = name.lstrip("-").replace("-", "_")
    owners = _owning_sections(plain)
    if owners:
        return f"; did you mean {' or '.join(f'--{owner}.{plain}' for owner in owners)}?"
    matches = close_matches(name, [flag for flag in flags if flag != name])
    return f"; did you mean {' or '.join(matches)}?" if matches else ""


def parse_overrides(argv: list[str], flags: Iterable[str] = ()) -> dict[str, str]:
    """`--optim.lr 3e-5 --train.epochs=3` -> {'optim.lr': '3e-5', 'train.epochs': '3'}.
    `flags`: the command's own options, suggested for a near miss of one (`--tsk`)."""
    overrides: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise ConfigError(arg, "expected a dotted option such as --optim.lr 3e-5"
                              + undotted_hint(arg.split("=", 1)[0], flags))
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv):
                raise ConfigError(arg[2:], f"no value given (e.g. {arg} VALUE)")
            key, value = arg[2:], argv[i + 1]
            if _looks_like_option(value):
                raise ConfigError(key, f"no value given (the next argument is {value}); give "
                                  f"one: {arg} VALUE")
            i += 2
        overrides[key] = value
    return overrides


def not_applying(cfg) -> dict[str, str]:
    """Config keys whose value the run never reads, with the setting that overrides them (a
    sweep lists those its grid sets; `train` notes those the user set)."""
    from .models import get_model_spec

    adapter = get_model_spec(cfg.model.name).adapter
    ignored = {}
    if cfg.train.max_steps > 0:
        ignored["train.epochs"] = f"train.max_steps={cfg.train.max_steps}"
    if cfg.optim.warmup_steps > 0:
        ignored["optim.warmup_ratio"] = f"optim.warmup_steps={cfg.optim.warmup_steps}"
    if cfg.train.batching == "fixed":
        ignored["train.max_tokens"] = "train.batching=fixed"
    if cfg.train.batching in ("token_budget", "bucketed") and cfg.train.eval_batch_size:
        # Without eval_batch_size it still sizes the evaluation batches.
        ignored["train.batch_size"] = (f"train.batching={cfg.train.batching} (train.max_tokens) "
                                       "and train.eval_batch_size")
    if cfg.train.batching != "bucketed":
        ignored["train.length_buckets"] = f"train.batching={cfg.train.batching}"
    if not cfg.model.compile:
        ignored["model.compile_shapes"] = "model.compile=False"
        ignored["model.compile_mode"] = "model.compile=False"
    if not cfg.model.lean_ce:
        ignored["model.lean_ce_chunk"] = "model.lean_ce=False"
    if not cfg.model.gradient_checkpointing:
        ignored["model.checkpoint_scope"] = "model.gradient_checkpointing=False"
    if not cfg.train.push_to_hub:
        ignored["train.hub_private"] = "no train.push_to_hub"
    if not cfg.train.export:
        ignored["train.export_dtype"] = "train.export=False"
    if cfg.data.train_file and cfg.data.validation_file:
        # No split comes from the hub: a test split needs data.test_file then
        # (builders.has_test_split)
        for key in ("hub_dataset", "hub_config", "hub_revision"):
            ignored[f"data.{key}"] = ("every split is a local file (data.train_file, "
                                      "data.validation_file)")
    if 0 < cfg.train.max_steps < cfg.train.eval_every:
        ignored["train.eval_every"] = (f"train.max_steps={cfg.train.max_steps} ends before its "
                                       "first validation")
    if not (cfg.train.eval_every or cfg.train.eval_per_epoch):
        ignored["train.early_stopping_patience"] = ("no validation while training "
                                                    "(train.eval_every 0, eval_per_epoch false)")
    if not adapter.reads("data.global_attention"):
        ignored["data.global_attention"] = f"{cfg.model.name} is no LED"
    if not adapter.reads("model.attention"):
        ignored["model.attention"] = f"{cfg.model.name} has no attention implementations"
    if not cfg.gen.do_sample:
        for key in ("temperature", "top_k", "top_p"):
            ignored[f"gen.{key}"] = "gen.do_sample=False"
    if cfg.gen.num_beams == 1:  # models.families.build_generation_config: beam search's only
        for key in ("length_penalty", "early_stopping"):
            ignored[f"gen.{key}"] = "gen.num_beams=1"
    if not adapter.reads("model.attention_window"):
        ignored["model.attention_window"] = f"{cfg.model.name} is no LED"
    return ignored


def note_not_read(cfg, given: set[str]) -> None:
    """Say once (rank 0 of whatever launched the process) which of the keys the user `given`
    this run never reads, and why (`not_applying`); not refused: a shared run file may hold
    settings for other models."""
    import sys

    unread = {key: why for key, why in not_applying(cfg).items() if key in given}
    if unread and first_launched_process():
        print("note: not read by this run: " + "; ".join(
            f"{key} ({why})" for key, why in unread.items()), file=sys.stderr)


def note_default_accumulation(cfg, given: set[str]) -> None:
    """A batch size the user set, with the accumulation the pair's defaults give (WMT13's 4 to
    keep the paper's step): a step is then several times the batch, where a Trainer user
    expects per_device_train_batch_size to be the step. Said once, with the way to change it;
    the batches line shows the step too."""
    import sys

    if ("train.batch_size" not in given or "train.grad_accum" in given
            or cfg.train.grad_accum == 1 or cfg.train.batching != "fixed"):
        return
    if first_launched_process():
        print(f"note: train.grad_accum {cfg.train.grad_accum} comes from the defaults of "
              f"{cfg.model.name} on {cfg.data.task}: a step takes train.batch_size "
              f"{cfg.train.batch_size} x {cfg.train.grad_accum} examples per rank; "
              "--train.grad_accum 1 makes a step of the batch alone", file=sys.stderr)


def scored_on_training_data(settings: Mapping[str, Any]) -> list[str]:
    """The data.validation_file / data.test_file keys of flat run settings ({'data.train_file':
    ...}) that name the data.train_file, by resolved path (a link to it counts)."""
    import os

    train = settings.get("data.train_file")
    if not isinstance(train, str) or not train:
        return []
    return [key for key in ("data.validation_file", "data.test_file")
            if isinstance(settings.get(key), str) and settings[key]
            and os.path.realpath(settings[key]) == os.path.realpath(train)]


def note_scored_on_training_data(cfg) -> None:
    """A validation or test file that is the training file: its scores, and the best checkpoint
    chosen on them, are on data the model trained on. Said once, not refused (an overfitting
    check does it on purpose); collect warns of such runs too (results_table.settings_warnings)."""
    import sys

    if not first_launched_process():
        return
    same = scored_on_training_data({f"data.{name}": getattr(cfg.data, name)
                                    for name in ("train_file", "validation_file", "test_file")})
    if same:
        one = len(same) == 1
        print(f"warning: {' and '.join(same)} {'is' if one else 'are'} the training file "
              f"({cfg.data.train_file}): {'its' if one else 'their'} scores are on data the "
              "model trains on", file=sys.stderr)


def registry_layers(task: str, model_spec) -> list[tuple[str, Mapping[str, Any]]]:
    """The registries' layers of a (task, model) pair, lowest first, each with the name
    `seq2seq-es config` gives it: the task's defaults, the model's, then the task's entries for
    this model (the paper's per-pair differences, e.g. BETO on SQAC reads 480 tokens, not
    BERT's 512). A task the registry does not hold (the user's own, checked by validate once
    its columns are known) has the model's layer only.

    Not `task_spec.defaults_for(model)` (the task's defaults and its per-model entries in one
    mapping): the model's own defaults sit between the two. A -tiny twin has no per-model
    entries, so BETO2BETO-tiny's 512 source tokens must beat the task's 1024, while BETO2BETO's
    own entry on SQAC (480) must beat the model's 512."""
    from .tasks import TASKS

    task_spec = TASKS.get(task)
    if task_spec is None:
        return [(f"model {model_spec.name}", model_spec.defaults)]
    return [(f"task {task_spec.name}", task_spec.defaults),
            (f"model {model_spec.name}", model_spec.defaults),
            (f"task {task_spec.name} x model {model_spec.name}",
             task_spec.model_defaults.get(model_spec.name, {}))]


def compose(task: str | None = None, model: str | None = None, config_file: str | None = None,
            overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Build the run config in precedence order (see module docstring) and validate it."""
    from .models import get_model_spec

    cfg = RunConfig()
    file_values = load_yaml(config_file) if config_file else {}
    overrides = dict(overrides or {})
    # The task and model may come from --task/--model, the dotted overrides or the YAML file.
    # They are settled first, since their registry defaults go under everything else; two that
    # disagree are refused (a file's data.task applied over --task's defaults renamed the run
    # without its defaults, and the file's restated defaults belong to its own pair).
    task = _chosen_name("data.task", "--task", task, overrides, file_values, cfg.data.task)
    model = _chosen_name("model.name", "--model", model, overrides, file_values, cfg.model.name)
    model_spec = get_model_spec(model)
    cfg.data.task, cfg.model.name = task, model_spec.name
    for _, values in registry_layers(task, model_spec):
        apply_mapping(cfg, dict(values))
    layered = {key: _dotted_value(cfg, key) for key in flat_keys(file_values)}
    try:
        apply_mapping(cfg, file_values)
    except ConfigError as error:  # say which file: the same key may also be on the command line
        raise ConfigError(error.key, f"{error.reason} {in_file(config_file, error.key)}") \
            from None
    # A file value that restates its default or the registry's chose nothing: `config`'s own
    # output (the task's gen.min_new_tokens written out) refused a shorter --data.max_target_length
    # that the same command without the file took, lowering the minimum.
    chosen_in_file = {key for key, value in layered.items() if _dotted_value(cfg, key) != value}
    apply_mapping(cfg, overrides)
    follow_target_length(cfg, explicit=chosen_in_file | set(overrides))
    if config_file:
        refuse_paths_beside_config_file(config_file, file_values, overrides)
    absolute_paths(cfg)
    try:
        validate(cfg)
    except ConfigError as error:  # a file's value refused only here (optim.lr: .nan): name it too
        if error.key in set(flat_keys(file_values)) - set(overrides):
            raise ConfigError(error.key, f"{error.reason} {in_file(config_file, error.key)}") \
                from None
        raise
    return cfg


def own_task_keys(cfg: RunConfig) -> dict[str, str]:
    """The keys that define a task of the user's own ({} for a registry task): what a config of
    the same task, composed anew, needs beside the task's name."""
    own = {f"data.{key}": getattr(cfg.data, key)
           for key in ("source_column", "target_column", "metrics", "hub_dataset",
                       "hub_config")}
    return {key: value for key, value in own.items() if value}


# The keys naming a local file that must exist when the run starts, and model.path's local
# folder (a cache or output folder is created; model.path and data.hub_dataset may be hub ids).
_EXISTING_PATH_KEYS = ("data.train_file", "data.validation_file", "data.test_file",
                       "dist.deepspeed_config", "model.path")


def refuse_paths_beside_config_file(config_file: str, file_values: Mapping[str, Any],
                                    overrides: Mapping[str, Any]) -> None:
    """A relative path in a --config file is read from the folder the command runs in (as a
    command-line path is, and as absolute_paths records it), not from the file's folder. A path
    missing there but present beside the file is refused here, saying so; it failed later as
    'does not exist' (a model.path went to the hub as an id), with the file in plain sight."""
    for key in _EXISTING_PATH_KEYS:
        value = file_value(file_values, key)
        if key in overrides or not isinstance(value, str) or not value:
            continue
        given = Path(os.path.expanduser(value))
        beside = Path(config_file).parent / given
        if given.is_absolute() or given.exists() or not beside.exists():
            continue
        if key == "model.path" and not (beside / "config.json").is_file():
            continue  # a hub id (owner/name) that happens to name a folder there
        raise ConfigError(key, f"{value} {in_file(config_file, key)} does not exist here: "
                          "relative paths of a --config file are read from the folder the "
                          f"command runs in ({os.getcwd()}), not from the file's own folder, "
                          f"which has it: write {os.path.abspath(beside)} in the file, or run "
                          f"from {Path(config_file).parent} (--{key} on the command line is "
                          "read as given)")


def absolute_paths(cfg: RunConfig) -> None:
    """Local file and folder names made absolute against the folder the config is composed in:
    the run's config.yaml is read again by `evaluate`, `predict`, a resumed or requeued job, from
    wherever they start. A model.path that is not a local folder is a hub id and stays as given;
    train.output_dir stays as given (it names the run where it is started), but with `~`
    expanded, as every other path key is: the shell leaves `--train.output_dir=~/runs/x` and a
    YAML `~/runs/x` alone, and the run was written to a folder literally named `~` here. So is
    a train.resume checkpoint path (Path() does not expand it either)."""
    if cfg.train.output_dir and cfg.train.output_dir.startswith("~"):
        cfg.train.output_dir = os.path.expanduser(cfg.train.output_dir)
    if cfg.train.resume.startswith("~"):  # none, auto and must never start with it
        cfg.train.resume = os.path.expanduser(cfg.train.resume)
    for key in ("train_file", "validation_file", "test_file", "cache_dir"):
        value = getattr(cfg.data, key)
        if value:
            setattr(cfg.data, key, os.path.abspath(os.path.expanduser(value)))
    if cfg.dist.deepspeed_config:
        cfg.dist.deepspeed_config = os.path.abspath(os.path.expanduser(cfg.dist.deepspeed_config))
    if cfg.model.path and os.path.isdir(os.path.expanduser(cfg.model.path)):
        cfg.model.path = os.path.abspath(os.path.expanduser(cfg.model.path))
    if cfg.data.hub_dataset and os.path.isdir(os.path.expanduser(cfg.data.hub_dataset)):
        # datasets reads a local folder as a dataset repository (a hub snapshot on disk)
        cfg.data.hub_dataset = os.path.abspath(os.path.expanduser(cfg.data.hub_dataset))


def file_value(file_values: Mapping[str, Any], key: str) -> Any:
    """The value a --config file gives `key` ('data.task'), whether the file writes it nested
    (data: {task: ...}) or as a flat dotted key; None where it does not."""
    section, name = key.split(".")
    value = file_values.get(key)
    if value is None and isinstance(file_values.get(section), Mapping):
        value = file_values[section].get(name)
    return value


def _chosen_name(key: str, flag: str, given: str | None, overrides: Mapping[str, Any],
                 file_values: Mapping[str, Any], default: str) -> str:
    """The task or model name from the flag, the dotted override or the file (a nested or flat
    key), else the default; places that name different ones are refused."""
    section = key.split(".")[0]
    in_file = file_value(file_values, key)
    places = ((flag, given), (f"--{key}", overrides.get(key)),
              (f"the --config file's {key}", in_file))
    for where, value in places:
        if isinstance(value, str) and not value.strip():  # was read as unset: 'unknown task'
            in_file = " (in the --config file)" if where.startswith("the") else ""
            raise ConfigError(flag if where == flag else key, f"is empty{in_file}; give a "
                              f"{'task' if section == 'data' else 'model'} name (seq2seq-es list)")
    named = [(where, str(value)) for where, value in places if value]
    if len({value for _, value in named}) > 1:
        listed = " and ".join(f"{where} {value}" for where, value in named)
        raise ConfigError(key, f"{listed} disagree; give one (a run file restates its own pair's "
                          "defaults: for another pair, change its name and drop those lines)")
    return named[0][1] if named else default


def _dotted_value(cfg: RunConfig, key: str) -> Any:
    """The value of dotted `key` ('gen.min_new_tokens') in `cfg`, None where there is none."""
    section, _, name = key.partition(".")
    return getattr(getattr(cfg, section, None), name, None)


def flat_keys(values: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys of a nested or flat mapping, as apply_mapping would set them."""
    keys = []
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and "." not in dotted:
            keys += flat_keys(value, prefix=dotted + ".")
        else:
            keys.append(dotted)
    return keys


def follow_target_length(cfg: RunConfig, explicit: set[str]) -> None:
    """Generation lengths follow the resolved target length unless `gen.*` was set by the user.

    A `--data.max_target_length 64` then generates up to 64 tokens, not the task default's 48;
    the task's minimum length is lowered to fit a shorter target rather than refused.
    """
    if cfg.gen.max_new_tokens is None or "gen.max_new_tokens" not in explicit:
        cfg.gen.max_new_tokens = cfg.data.max_target_length
    if "gen.min_new_tokens" not in explicit:
        cfg.gen.min_new_tokens = min(cfg.gen.min_new_tokens, cfg.gen.max_new_tokens)


def validate(cfg: RunConfig) -> None:
    """Refuse configs that cannot work, before any model or data is loaded: every section's own
    rules, then the rules between sections and the registries' models."""
    from .models import get_model_spec
    from .tasks import task_for

    task = task_for(cfg.data)
    spec = get_model_spec(cfg.model.name)
    d, o, t, dist, g = cfg.data, cfg.optim, cfg.train, cfg.dist, cfg.gen
    if g.max_new_tokens is None:  # a RunConfig built in code, not by compose()
        g.max_new_tokens = d.max_target_length
    if t.output_dir is None:  # one folder per pair: a second pair's run is no refused resume
        t.output_dir = f"runs/{cfg.model.name}-{cfg.data.task}"
    for section in (cfg.model, d, o, t, dist, g):
        section.validate()
    if t.batching in ("token_budget", "bucketed") and t.max_tokens < 1:
        # Checked here, not in TrainConfig: the value to suggest needs the data lengths.
        fixed = t.batch_size * (d.max_source_length + d.max_target_length)
        raise ConfigError("train.max_tokens", f"{t.batching} batching needs a positive budget "
                          f"(padded source + target tokens per micro-batch); {fixed} is what a "
                          f"fixed batch of train.batch_size {t.batch_size} at "
                          f"data.max_source_length {d.max_source_length} + "
                          f"data.max_target_length {d.max_target_length} holds at most")
    from .tasks.loading import check_column_map

    check_column_map(task, d.column_map())
    # A file where a folder goes failed only once it was created: the run folder after the model
    # had loaded (FileExistsError), the cache as a "bad data file".
    check_folder("train.output_dir", t.output_dir)
    if d.cache_dir:
        check_folder("data.cache_dir", d.cache_dir)
    if d.max_source_length > spec.max_source_positions:
        raise ConfigError("data.max_source_length",
                          f"{d.max_source_length} exceeds the {spec.max_source_positions} source "
                          f"positions of model '{spec.name}'")
    if d.max_target_length > spec.max_target_positions:
        raise ConfigError("data.max_target_length",
                          f"{d.max_target_length} exceeds the {spec.max_target_positions} target "
                          f"positions of model '{spec.name}'")
    if g.max_new_tokens > spec.max_target_positions:
        # As the target length: generating past the decoder's positions failed on an embedding
        # index, after the whole training (min_new_tokens is at most max_new_tokens)
        raise ConfigError("gen.max_new_tokens",
                          f"{g.max_new_tokens} exceeds the {spec.max_target_positions} target "
                          f"positions of model '{spec.name}'")
    check_global_prefix(cfg, spec)
    window = cfg.model.attention_window
    if window and spec.adapter.reads("model.attention_window"):
        # LED pads every input to a multiple of its window, and the padded length must still
        # have positions: otherwise the first batch fails on an embedding index.
        padded = -(-d.max_source_length // window) * window
        if padded > spec.max_source_positions:
            raise ConfigError("model.attention_window", f"{window}: LED pads inputs to a multiple "
                              f"of the window, and data.max_source_length {d.max_source_length} "
                              f"would pad to {padded}, past the {spec.max_source_positions} "
                              f"source positions of model '{spec.name}'")
    impls = spec.adapter.attention_impls
    if impls and cfg.model.attention != "hf" and cfg.model.attention not in impls:
        raise ConfigError("model.attention", f"{cfg.model.attention}: {spec.family} models have "
                          f"{', '.join(('hf',) + impls)}")
    if t.batching == "packed" and not spec.adapter.packed_attention:
        # Refused here, before any loading: only BART and T5 attention can keep the documents of
        # a packed row apart (kernels/packed_attention.py).
        raise ConfigError("train.batching", f"packed batches need a model whose attention can be "
                          f"masked per document (BART or T5 families); '{spec.name}' is "
                          f"{spec.family}: use fixed, token_budget or bucketed")
    if cfg.model.compile and cfg.model.compile_shapes == "static" and \
            t.batching in ("fixed", "token_budget"):
        # Their target lengths (and token-budget row counts) change almost every micro-batch:
        # a static graph per shape would compile all through training.
        raise ConfigError("model.compile_shapes", f"static shapes need batches of few shapes, "
                          f"and train.batching {t.batching} makes a new one almost every "
                          "micro-batch; use train.batching bucketed (at most train.length_buckets "
                          "shapes) or packed (one), or model.compile_shapes dynamic or auto")
    mode = cfg.model.compile_mode
    if cfg.model.compile and mode != "default":
        if cfg.model.compile_backend != "inductor":
            # torch.compile would drop the mode with a warning and compile without it.
            raise ConfigError("model.compile_mode", f"{mode} is a mode of the inductor backend; "
                              f"model.compile_backend is {cfg.model.compile_backend}")
        if mode == "reduce-overhead" and t.batching == "token_budget":
            raise ConfigError("model.compile_mode", "reduce-overhead records a CUDA graph per "
                              "batch shape, and train.batching token_budget makes a new shape "
                              "almost every micro-batch; use bucketed or packed batches")
        if mode == "reduce-overhead" and dist.zero_stage == 3:
            raise ConfigError("model.compile_mode", "reduce-overhead cannot capture ZeRO-3's "
                              "forward, which gathers each layer's parameters as it runs; use "
                              "dist.zero_stage 0-2 or compile_mode default")
        if mode == "reduce-overhead" and dist.zero_stage in (1, 2) and t.grad_accum > 1:
            # A graph's gradients live in memory that the next micro-batch's replay overwrites;
            # at ZeRO 0 the step moves them out (step.keep_grads_out_of_graph_memory), while
            # ZeRO 1-2's optimizers keep gradients in buffers of their own.
            raise ConfigError("model.compile_mode", "reduce-overhead with gradient accumulation "
                              f"(train.grad_accum {t.grad_accum}) needs dist.zero_stage 0 (ZeRO "
                              f"{dist.zero_stage}'s optimizer accumulates gradients the CUDA "
                              "graphs overwrite); use dist.zero_stage 0, train.grad_accum 1 or "
                              "compile_mode default")
    if t.on_nan == "skip" and dist.zero_stage == 3:
        raise ConfigError("train.on_nan", "skip is not supported under ZeRO-3 (the hook that "
                          "zeroes a bad micro-batch's gradient needs unpartitioned parameters); "
                          "use stop")
    if t.max_steps > 0 and o.warmup_steps >= t.max_steps:
        raise ConfigError("optim.warmup_steps",
                          f"warmup of {o.warmup_steps} steps is not shorter than training "
                          f"({t.max_steps} steps)")


def check_global_prefix(cfg: RunConfig, spec) -> None:
    """Refuse an LED global prefix (data.global_attention prefix:N) that covers every source
    token kept: each would attend to all the others, LED's sliding window left unused."""
    ga, length = cfg.data.global_attention, cfg.data.max_source_length
    if not (ga.startswith("prefix:") and spec.adapter.reads("data.global_attention")):
        return
    if int(ga[7:]) >= length:
        raise ConfigError("data.global_attention", f"{ga}: every token would be global, as "
                          f"data.max_source_length is {length}; give N below it (or first, "
                          "sentences)")


def _first_non_folder(path: Path) -> Path | None:
    """The first of `path` and its parents that exists and is no folder (a file, or another
    non-folder), or None: a path that exists as a folder, or would be created under one."""
    for place in (path, *path.parents):
        if place.is_dir():
            return None
        if place.exists():
            return place
    return None


def check_folder(key: str, value: str) -> None:
    """Refuse a folder path that is a file, or lies under one, on this machine (a folder that
    does not exist yet is fine: the run creates it). `key` is the config key or the command's
    option (--output-dir), for the error; called before any model loads, as creating the folder
    failed only after the work was done."""
    path = Path(os.path.expanduser(value))
    place = _first_non_folder(path)
    if place is None:
        return
    if place == path:
        raise ConfigError(key, f"{value} is a file; expected a folder (remove the file or give "
                          "another path)")
    raise ConfigError(key, f"{place} is a file, so {value} cannot be a folder under it; give "
                      "another path")


def check_output_file(key: str, value: str) -> None:
    """Refuse an output file path that is a folder, or lies under a file (an existing file is
    replaced, and missing folders above it are created). As check_folder: before the work."""
    path = Path(os.path.expanduser(value))
    if path.is_dir():
        raise ConfigError(key, f"{value} is a folder; expected a file name (e.g. "
                          f"{Path(value) / 'predictions.jsonl'})")
    place = _first_non_folder(path.parent)
    if place is not None:
        raise ConfigError(key, f"{place} is a file, so {value} cannot be written under it; give "
                          "another path")


def check_target_coverage(cfg: RunConfig, target_lengths: list[int], threshold: float = 0.5) -> None:
    """Refuse a target length that cuts most references (a silent quality killer in the old scripts).

    Called by the data pipeline once target lengths are known, still before training starts.
    """
    if not target_lengths:
        return
    from .models import get_model_spec

    cut = sum(1 for n in target_lengths if n > cfg.data.max_target_length)
    at_model_limit = cfg.data.max_target_length >= get_model_spec(cfg.model.name).max_target_positions
    # At the model's own limit there is nothing to raise: the caller reports the cut instead.
    if cut / len(target_lengths) > threshold and not at_model_limit:
        raise ConfigError("data.max_target_length",
                          f"{cfg.data.max_target_length} tokens cuts {cut} of {len(target_lengths)} "
                          f"training targets ({100 * cut / len(target_lengths):.0f}%); raise it")


def dump(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(cfg.to_yaml(), encoding="utf-8")
