"""The training loop: build, (resume,) train, evaluate, checkpoint, export. Read top to bottom.

Loss normalisation: a step's loss is the sum of token cross-entropies over all its micro-batches
on all ranks, divided by the number of target tokens in all of them. DeepSpeed divides each
backward by the accumulation steps and averages gradients over ranks, so each micro-batch's
token-summed loss is multiplied by `world_size * grad_accum / tokens_in_step` before backward;
the resulting update does not depend on how the step is split (1x4x2 = 2x1x4 = 1x1x8).

Host read-backs (TrainStep): none per micro-batch. The scale is computed on the device, the
logged loss and the non-finite flags are accumulated there and read once per logging interval
(and the flags before every evaluation and save); the stop/save agreement between ranks runs
every `train.stop_check_every` steps.

The best checkpoint: every validation (each epoch end, every `eval_every` steps, the end)
compares `train.best_metric`; a new best is saved at once and named in the trainer state of
every later checkpoint, so rotation keeps it and a resume remembers it. At the end the run goes
back to it (`load_best_at_end`), scores the test split, exports `final/` and writes
`final_results.json`.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .. import run_files
from ..config import RunConfig
from ..errors import ConfigError, Seq2SeqEsError
from ..run_files import INTERRUPTED_EXIT_CODE, PREEMPTED_EXIT_CODE
from . import distributed as D
from .builders import (check_targets, get_collator, get_engine, get_generation_config, get_model,
                       get_split, get_step_plan, get_test_split)
from .checkpoint import Checkpointer
from .evaluation import evaluate
from .loss import token_ce_sum
from .optim import fp16_step_skipped, loss_scale, use_bf16
from .run_dir import RunLog, check_before_training, write_json_atomic
from .signals import StopRequest


class NonFiniteLoss(Seq2SeqEsError):
    pass


class Stopped(Seq2SeqEsError):
    """Raised after a stop signal was handled and a checkpoint saved; carries the exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code



def find_resume_checkpoint(cfg: RunConfig, ckpt: Checkpointer) -> Path | None:
    resume = cfg.train.resume
    latest = ckpt.latest()
    if resume == "none":
        if latest is not None:
            raise ConfigError("train.resume", f"{cfg.train.output_dir} already holds checkpoint "
                              f"{latest.name}; pass --train.resume auto to continue it, or choose "
                              "another train.output_dir")
        return None
    if resume == "auto":
        return latest
    if resume == "must":
        if latest is None:
            raise ConfigError("train.resume", f"no complete checkpoint in {ckpt.root}")
        return latest
    path = Path(resume)
    if not (path / run_files.TRAINER_STATE).is_file():
        raise ConfigError("train.resume", f"{path} is not a complete checkpoint folder")
    return path


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def host_token_counts(micro_batches: list[dict]) -> list[float]:
    """This rank's target, source and padded tokens, from the CPU batches (numpy: host memory,
    no device involved)."""
    target = source = padded = 0
    for batch in micro_batches:
        labels = batch["labels"].numpy()
        target += int((labels != -100).sum())
        source += int(batch["attention_mask"].numpy().sum())
        padded += labels.size + batch["input_ids"].numel()
    return [float(target), float(source), float(padded)]


def all_reduce_(tensor: torch.Tensor, op=None) -> torch.Tensor:
    """In-place all-reduce of a device tensor, never read back: on a GPU the host does not wait."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op is None else op)
    return tensor


@dataclass
class StepResult:
    """One step's numbers, left on the device until `TrainStep.read` reads them."""
    step: int                      # 1-based number of the step
    counts: torch.Tensor           # [target, source, padded] tokens over all ranks (float64)
    ce: torch.Tensor               # this rank's token-summed loss of the kept micro-batches
    skipped: torch.Tensor          # micro-batches skipped (non-finite on any rank), all ranks agree
    fp16: dict = field(default_factory=dict)  # overflow_skipped, loss_scale (host values)


class TrainStep:
    """The training step: what the trainer and the bench's loop rows call for each step.

    Nothing is read back from the device per micro-batch. The loss is normalised on the device
    (the step's target tokens over all ranks come from the CPU labels, summed by one on-device
    all-reduce), the logged loss and the non-finite flags are accumulated on the device, and
    `read` (once per logging interval) and `check_finite` (also before every save and
    evaluation) are the only read-backs. Micro-batches go to the GPU from pinned memory without
    blocking the host.

    Non-finite losses (train.on_nan):
    - stop: each rank keeps a device count of its non-finite micro-batches and the first one's
      index; `check_finite` all-reduces them and raises NonFiniteLoss naming the step and this
      rank's batch shape. Until then training goes on (at most train.log_every steps), and
      nothing is saved, evaluated or exported from weights a non-finite step touched.
    - skip: one on-device all-reduce per micro-batch (a collective, no read-back) tells every
      rank whether any rank's loss is non-finite; a gradient hook on every trainable parameter
      then replaces that micro-batch's gradient by exact zeros (masked_fill: NaN-free, unlike a
      device-side choice between the loss and a zero loss, whose NaN branch still sends
      0 * NaN = NaN through the graph's backward). Healthy micro-batches' gradients pass
      unchanged. The hooks run before the gradient is accumulated, so DeepSpeed's accumulation
      and reduction hooks (after accumulation) see zeros. ZeRO-3 is refused (config.py).
    fp16 at ZeRO 0 reads the GradScaler's scale after each optimizer step (twice: in
    optim.fp16_step_skipped and for the next step's comparison): a skipped optimizer step must
    take the learning-rate schedule back before the next step; torch's GradScaler itself reads
    its inf flag once per optimizer step. Per step, never per micro-batch.
    """

    def __init__(self, engine, env: D.DistEnv, cfg: RunConfig):
        self.engine, self.env, self.cfg = engine, env, cfg
        self.device = env.device
        self.pin = self.device.type == "cuda"
        self.skip = cfg.train.on_nan == "skip"
        self.fp16 = getattr(engine, "torch_autocast_z0_gradscaler", None) is not None \
            or engine.fp16_enabled()
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        self.bad = zero.clone()                              # stop: non-finite since the check
        self.first_bad = torch.full((), float("inf"), dtype=torch.float64, device=self.device)
        self.window = torch.zeros(2, dtype=torch.float64, device=self.device)  # tokens, padded
        self.micro_seen = 0                                  # micro-batches run by this object
        self.unchecked: dict[int, tuple[int, int, str]] = {}  # index -> (step, k, batch shape)
        self.unchecked_steps: list[int] = []
        self.skip_now = torch.zeros((), dtype=torch.bool, device=self.device)
        self.scale = None                                    # fp16: the loss scale in force
        self.hooks = []
        if self.skip:
            for p in engine.module.parameters():
                if p.requires_grad:
                    self.hooks.append(p.register_hook(self._mask_grad))

    def _mask_grad(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.masked_fill(self.skip_now, 0)

    def close(self) -> None:
        for handle in self.hooks:
            handle.remove()
        self.hooks = []

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.pin:
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def __call__(self, micro_batches: list[dict], step: int) -> StepResult:
        """Run step `step + 1` (forward, backward and DeepSpeed's step per micro-batch)."""
        engine, device = self.engine, self.device
        counts = all_reduce_(self._to_device(
            torch.tensor(host_token_counts(micro_batches), dtype=torch.float64)))
        # world_size * grad_accum / target tokens of the step (see the module docstring), in the
        # loss's fp32 as a Python float scale would be
        scale = (self.env.world_size * len(micro_batches) / counts[0].clamp(min=1.0)).float()
        self.window += torch.stack([counts[0] + counts[1], counts[2]])
        ce_total = torch.zeros((), dtype=torch.float64, device=device)
        skipped = torch.zeros((), dtype=torch.float64, device=device)
        if not self.skip:
            self.unchecked_steps.append(step + 1)
        fp16 = {}
        if self.fp16:  # see optim.py: was the optimizer step skipped for overflowing gradients?
            if self.scale is None:  # afterwards, the scale read at the end of the last step
                self.scale = loss_scale(engine)
            scale_before, skipped_before = self.scale, engine.skipped_steps
        for k, batch in enumerate(micro_batches):
            batch = {key: self._to_device(value) for key, value in batch.items()}
            labels = batch.pop("labels")
            shape = f"source {tuple(batch['input_ids'].shape)}, target {tuple(labels.shape)}"
            try:
                if self.cfg.model.lean_ce:  # through engine(...): DeepSpeed hooks its output
                    ce = engine(**batch, lean_ce_labels=labels)
                else:
                    ce = token_ce_sum(engine(**batch).logits, labels)
                value = ce.detach().double()
                bad = ~torch.isfinite(value)
                if self.skip:  # every rank skips a micro-batch that is bad on any rank
                    bad = all_reduce_(bad.double(), dist.ReduceOp.MAX) > 0
                    self.skip_now = bad
                    skipped += bad.double()
                else:
                    self.bad += bad.double()
                    self.first_bad = torch.minimum(self.first_bad, torch.where(
                        bad, float(self.micro_seen), float("inf")))
                    self.unchecked[self.micro_seen] = (step + 1, k, shape)
                self.micro_seen += 1
                ce_total += torch.where(bad, 0.0, value)
                engine.backward(ce * scale)
                engine.step()
            except torch.OutOfMemoryError as exc:
                raise Seq2SeqEsError(
                    f"out of memory at step {step + 1} on batch {shape}: lower train.batch_size "
                    "(and raise train.grad_accum to keep the step size), lower "
                    "data.max_source_length, or set model.gradient_checkpointing=true") from exc
        if self.fp16:  # the scale the next step uses; 1 if this one was skipped
            fp16["overflow_skipped"] = int(fp16_step_skipped(engine, scale_before, skipped_before))
            fp16["loss_scale"] = self.scale = loss_scale(engine)
        return StepResult(step + 1, counts, ce_total, skipped, fp16)

    def check_finite(self) -> None:
        """on_nan=stop: raise NonFiniteLoss if any rank had a non-finite loss since the last
        check. Collective: every rank calls it at the same step (the steps run are the same)."""
        if self.skip or not self.unchecked_steps:
            return
        first, last = self.unchecked_steps[0], self.unchecked_steps[-1]
        flags = all_reduce_(torch.stack([(self.bad > 0).double(), -self.first_bad]),
                            dist.ReduceOp.MAX)
        any_bad, minus_first = flags.tolist()
        self.bad.zero_()
        self.first_bad.fill_(float("inf"))
        unchecked, self.unchecked, self.unchecked_steps = self.unchecked, {}, []
        if not any_bad:
            return
        bad_step, k, shape = unchecked[int(-minus_first)]
        raise NonFiniteLoss(
            f"non-finite loss at step {bad_step}, micro-batch {k} (this rank's batch {shape}) on "
            f"at least one rank (steps {first}-{last} checked at once; nothing after step "
            f"{bad_step - 1} was saved); set train.on_nan=skip to skip such batches")

    def read(self, result: StepResult) -> dict[str, float]:
        """The step's logged numbers, and the tokens since the last read (one read-back)."""
        self.check_finite()
        ce = all_reduce_(result.ce.clone())
        values = torch.cat([ce.view(1), result.counts, result.skipped.view(1),
                            self.window]).tolist()
        self.window.zero_()
        ce_sum, target, source, padded, skipped, window_tokens, window_padded = values
        return {"loss": ce_sum / max(target, 1.0), "target_tokens": target,
                "tokens": target + source, "padded_tokens": padded,
                "skipped_micro_batches": int(skipped), "window_tokens": window_tokens,
                "window_padded": window_padded, **result.fp16}


def train_step(engine, micro_batches: list[dict], env: D.DistEnv, cfg: RunConfig,
               step: int) -> dict[str, float]:
    """One step read back at once (tests, scripts): TrainStep without the deferred reads."""
    runner = TrainStep(engine, env, cfg)
    try:
        return runner.read(runner(micro_batches, step))
    finally:
        runner.close()


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


def export_hf(engine, tokenizer, generation_config, out: Path, zero_stage: int,
              env: D.DistEnv, dtype: str = "fp32") -> None:
    """Write a Hugging Face checkpoint (safetensors in `dtype`, tokenizer, generation config).

    `dtype` is train.export_dtype, whatever the training precision (see export_state_dict).
    """
    state_dict = export_state_dict(engine, dtype, env.is_main)
    if env.is_main:
        from ..models import save_model
        save_model(engine.module, out, state_dict=state_dict, dtype=dtype)
        tokenizer.save_pretrained(out)
        generation_config.save_pretrained(out)
    D.barrier()


def is_better(value: float, best: dict | None, metric: str) -> bool:
    """Lower is better for the loss, higher for every other metric; NaN never wins."""
    if value != value:
        return False
    if best is None:
        return True
    return value < best["value"] if metric == "loss" else value > best["value"]


def without_prefix(results: dict, prefix: str) -> dict:
    return {k.split("/", 1)[1]: v for k, v in results.items() if k.startswith(prefix + "/")}


class SaveClock:
    """Rank 0's wall clock for time-based saves (train.save_every_min; 0 = off)."""

    def __init__(self, minutes: float, is_main: bool):
        self.seconds, self.is_main = minutes * 60, is_main
        self.last = time.monotonic()

    def due(self) -> bool:
        return self.is_main and self.seconds > 0 and time.monotonic() - self.last >= self.seconds

    def reset(self) -> None:
        self.last = time.monotonic()


def train(cfg: RunConfig) -> dict:
    env = D.read_env()
    D.init(env, cfg.dist.backend, cfg.dist.timeout_min)
    check_before_training(cfg, env)  # trackers installed; push_to_hub: hub reachable, logged in
    out = Path(cfg.train.output_dir)
    ckpt = Checkpointer(out / run_files.CHECKPOINTS, env, cfg.train.keep_last)
    resume_from = find_resume_checkpoint(cfg, ckpt)
    seed_everything(cfg.train.seed)

    def say(message: str) -> None:
        if env.is_main:
            print(message, flush=True)

    from ..tasks import get_task
    task = get_task(cfg.data.task)
    model, tokenizer, spec = get_model(cfg)
    # flex attention cannot drop attention probabilities: refuse such a model now, not at the
    # first training forward after the data is loaded (evaluate/predict need no such check).
    spec.adapter.check_flex_dropout(model, cfg.model.attention)
    train_data = get_split(cfg, task, tokenizer, model, "train", cfg.data.max_train_samples, say)
    check_targets(cfg, train_data)
    eval_data = get_split(cfg, task, tokenizer, model, "validation", cfg.data.max_eval_samples, say)
    test_data = get_test_split(cfg, task, tokenizer, model, say)  # None: no test split
    collator = get_collator(cfg, spec, tokenizer, model)
    generation_config = get_generation_config(cfg, spec, tokenizer)
    # The collator is passed on: bucketed plans set the lengths it pads to.
    plan, total_steps = get_step_plan(cfg, env, train_data, collator.pad_to_multiple_of,
                                      collator=collator)
    if hasattr(plan, "describe"):
        say(plan.describe())
    if plan.dropped_per_epoch:
        say(f"{plan.dropped_per_epoch} training examples per epoch do not fill a last step and "
            "are left out of that epoch (the order changes each epoch)")
    if hasattr(plan, "padded_fraction"):
        say(f"token-budget batches: {plan.padded_fraction(0):.1%} padding in epoch 0 "
            f"(random order with the same budget: {plan.random_order_padded_fraction(0):.1%})")
    engine, _, scheduler, ds_config = get_engine(model, cfg, env, total_steps)

    state = {"step": 0, "epoch": 0, "step_in_epoch": 0, "world_size": env.world_size}
    # The best validation so far: {"step", "metric", "value", "validation": {name: value}}.
    # It travels in every checkpoint's trainer state, so a resumed run keeps it.
    best = None
    if resume_from is not None:
        state = ckpt.load(engine, resume_from)
        best = state.pop("best", None)
        say(f"resumed from {resume_from} at step {state['step']}")
    log = RunLog(out, cfg, env.is_main, total_steps, state["step"])
    if env.is_main:
        (out / run_files.DEEPSPEED_CONFIG).write_text(json.dumps(ds_config, indent=1))
        # The skip report of bad rows and the truncation counts, kept with the run rather than
        # only printed: a reader of the results can see what data the scores rest on.
        splits = {"train": train_data, "validation": eval_data, "test": test_data}
        write_json_atomic(out / run_files.DATA_REPORT, {name: data.data_report()
                                                     for name, data in splits.items() if data})
    bf16 = use_bf16(cfg)
    eval_batch = cfg.train.eval_batch_size or cfg.train.batch_size
    best_metric = cfg.train.best_metric or task.main_metric
    # The step of the newest checkpoint: a step is never saved twice (e.g. a time-based save
    # and the save of a new best at the same step).
    saved_step = state["step"] if resume_from is not None else None
    clock = SaveClock(cfg.train.save_every_min, env.is_main)

    # The step (read back once per logging interval) and the non-finite check: never evaluate,
    # save or export weights that a non-finite loss reached (on_nan=stop).
    stepper = TrainStep(engine, env, cfg)

    def run_eval(step: int, data=eval_data, prefix: str = "eval") -> dict:
        stepper.check_finite()
        results = evaluate(engine.module, tokenized=data.tokenized, examples=data.examples,
                           collator=collator, tokenizer=tokenizer,
                           generation_config=generation_config, task=task, env=env,
                           batch_size=eval_batch, zero_stage=cfg.dist.zero_stage, bf16=bf16,
                           step=step, out_dir=out / prefix, prefix=prefix)
        log.log(step, results)
        log.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
        return results

    def track_best(step: int, results: dict) -> bool:
        """True when this validation is the best so far (its step must then be saved)."""
        nonlocal best
        key = f"eval/{best_metric}"
        if key not in results:
            raise ConfigError("train.best_metric", f"'{best_metric}' is not among the validation "
                              f"results; available: {', '.join(without_prefix(results, 'eval'))}")
        if not is_better(results[key], best, best_metric):
            return False
        best = {"step": step, "metric": best_metric, "value": results[key],
                "validation": without_prefix(results, "eval")}
        return True

    def save(step: int) -> None:
        nonlocal saved_step
        if saved_step == step:
            return
        stepper.check_finite()
        path = ckpt.save(engine, {**state, "best": best})
        log.write(f"saved checkpoint {path.name}")
        saved_step = step
        clock.reset()
        if env.is_main and best is not None and best["step"] == step:
            write_json_atomic(ckpt.root / run_files.BEST,
                              {**best, "checkpoint": ckpt.path(step).name})

    stop = StopRequest().install()
    try:
        if cfg.train.eval_at_start and state["step"] == 0 and track_best(0, run_eval(0)):
            save(0)
        steps = plan.iter_steps(state["epoch"], state["step_in_epoch"], env.rank)
        window_start = time.perf_counter()
        stop_every = max(cfg.train.stop_check_every, 1)
        while state["step"] < total_steps:
            epoch, step_in_epoch, micro_indices = next(steps)
            micro = [collator([train_data.tokenized[i] for i in idx]) for idx in micro_indices]
            # The rate this step's update uses: the scheduler advances inside engine.step().
            lr = scheduler.get_last_lr()[0]
            result = stepper(micro, state["step"])
            state = {"step": state["step"] + 1, "epoch": epoch, "step_in_epoch": step_in_epoch + 1,
                     "world_size": env.world_size}
            step = state["step"]
            if step % max(cfg.train.log_every, 1) == 0 or step == total_steps or step == 1:
                # The one read-back of the interval (the host waits for the device here, so the
                # time is taken after it): the logged step's loss, the tokens since the last log.
                values = stepper.read(result)
                window_tokens, window_padded = values["window_tokens"], values["window_padded"]
                elapsed = time.perf_counter() - window_start
                tokens_per_s = window_tokens / max(elapsed, 1e-9)
                log.log(step, {"train/loss": values["loss"], "train/lr": lr,
                               "train/tokens_per_s": tokens_per_s, "train/epoch": epoch,
                               "train/padded_fraction": 1.0 - window_tokens / max(window_padded, 1),
                               "train/skipped_micro_batches": values["skipped_micro_batches"],
                               **{f"train/{key}": values[key] for key in
                                  ("loss_scale", "overflow_skipped") if key in values}})
                log.progress(step, values["loss"], lr, tokens_per_s)
                window_start = time.perf_counter()
            # The last step is validated (or not) by train.eval_at_end below, whatever the epoch.
            epoch_end = step_in_epoch + 1 == plan.steps_per_epoch
            eval_due = step < total_steps and (
                (cfg.train.eval_every and step % cfg.train.eval_every == 0)
                or (cfg.train.eval_per_epoch and epoch_end))
            improved = track_best(step, run_eval(step)) if eval_due else False
            # One collective every train.stop_check_every steps for both: a stop signal on any
            # rank, and rank 0's clock saying a save is due. DeepSpeed's save is collective:
            # every rank must save at the same step, and rank clocks disagree. After the last
            # step neither matters (the run saves and ends anyway).
            signum = time_due = 0.0
            if step % stop_every == 0 and step < total_steps:
                signum, time_due = D.all_reduce_max([float(stop.signum), float(clock.due())],
                                                    env.device)
            by_steps = cfg.train.save_every and step % cfg.train.save_every == 0
            if step < total_steps and (improved or time_due or by_steps or signum):
                save(step)
            if signum and step < total_steps:
                name = StopRequest.name(int(signum))
                if env.is_main:
                    write_json_atomic(out / run_files.PREEMPTED, {"step": step, "signal": name})
                code = INTERRUPTED_EXIT_CODE if name == "SIGINT" else PREEMPTED_EXIT_CODE
                raise Stopped(f"{name} received: saved a checkpoint at step {step}; resume with "
                              "--train.resume auto", code)
        # End of run: validate and save the last step, then go back to the best checkpoint, so
        # that the test scores and final/ come from the model chosen on validation (the last
        # step is often past the best one when a run overfits).
        step = state["step"]
        end_eval = run_eval(step) if cfg.train.eval_at_end else {}
        if end_eval:
            track_best(step, end_eval)
        save(step)
        chosen = best if cfg.train.load_best_at_end else None
        if chosen is not None and chosen["step"] != step:
            say(f"best checkpoint: step {chosen['step']} ({best_metric} {chosen['value']:.4f}); "
                "its weights are scored on test and exported")
            if not ckpt.has(chosen["step"]):
                raise Seq2SeqEsError(f"the best checkpoint {ckpt.path(chosen['step'])} is gone; "
                                     "set train.load_best_at_end=false to keep the last weights")
            ckpt.load_weights(engine, ckpt.path(chosen["step"]))
        final_step = chosen["step"] if chosen else step
        validation = chosen["validation"] if chosen else without_prefix(end_eval, "eval")
        test = None
        if test_data is not None and best is None:
            say("no validation ran (train.eval_at_end=false and no epoch or eval_every "
                "evaluation): the test split is not scored")
        elif test_data is not None:
            test = without_prefix(run_eval(final_step, test_data, "test"), "test")
        if cfg.train.export:
            export_hf(engine, tokenizer, generation_config, out / run_files.FINAL,
                      cfg.dist.zero_stage, env, dtype=cfg.train.export_dtype)
        if env.is_main:
            write_json_atomic(out / run_files.FINAL_RESULTS, {
                "task": task.name, "model": cfg.model.name, "main_metric": best_metric,
                "best_step": final_step, "steps": step, "validation": validation, "test": test})
            (out / run_files.PREEMPTED).unlink(missing_ok=True)
            (out / run_files.DONE).write_text(json.dumps({"step": step, **end_eval,
                                                  "best_step": final_step}))
            if cfg.train.push_to_hub:  # after DONE: a failed upload does not redo the run
                from .hub import push_final
                say(f"uploaded final/ to {push_final(out, cfg)}")
        return {"step": step, **end_eval, "best_step": final_step}
    finally:
        stepper.close()
        stop.restore()
        log.close()
