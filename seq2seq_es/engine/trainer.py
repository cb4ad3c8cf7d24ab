"""The training loop: build, (resume,) train, evaluate, checkpoint, export. Read top to bottom.

Loss normalisation: a step's loss is the sum of token cross-entropies over all its micro-batches
on all ranks, divided by the number of target tokens in all of them. DeepSpeed divides each
backward by the accumulation steps and averages gradients over ranks, so each micro-batch's
token-summed loss is multiplied by `world_size * grad_accum / tokens_in_step` before backward;
the resulting update does not depend on how the step is split (1x4x2 = 2x1x4 = 1x1x8).

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
from pathlib import Path

import numpy as np
import torch

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


def zero_loss(module: torch.nn.Module) -> torch.Tensor:
    """A loss of exactly 0 that touches every trainable parameter (zero gradients everywhere).

    Used to skip a micro-batch whose loss is not finite while keeping DeepSpeed's per-backward
    gradient bookkeeping (reductions at the accumulation boundary) intact.
    """
    return sum((p * 0).sum() for p in module.parameters() if p.requires_grad)


def train_step(engine, micro_batches: list[dict], env: D.DistEnv, cfg: RunConfig,
               step: int) -> dict[str, float]:
    device = env.device
    local_target = sum(int((b["labels"] != -100).sum()) for b in micro_batches)
    local_source = sum(int(b["attention_mask"].sum()) for b in micro_batches)
    local_padded = sum(b["labels"].numel() + b["input_ids"].numel() for b in micro_batches)
    target_tokens, source_tokens, padded_tokens = D.all_reduce_sum(
        [local_target, local_source, local_padded], device)
    scale = env.world_size * len(micro_batches) / max(target_tokens, 1.0)
    ce_total, skipped = 0.0, 0
    # fp16: the loss scale in force for this step, and DeepSpeed's count of skipped steps, to
    # tell after the optimizer step whether overflowing gradients made it skip (see optim.py).
    scale_before, skipped_before = loss_scale(engine), engine.skipped_steps
    for k, batch in enumerate(micro_batches):
        batch = {key: value.to(device) for key, value in batch.items()}
        labels = batch.pop("labels")
        shape = f"source {tuple(batch['input_ids'].shape)}, target {tuple(labels.shape)}"
        try:
            if cfg.model.lean_ce:  # through engine(...): DeepSpeed hooks its forward output
                ce = engine(**batch, lean_ce_labels=labels)
            else:
                ce = token_ce_sum(engine(**batch).logits, labels)
            # One collective and one read-back per micro-batch: how many ranks have a non-finite
            # loss, and the loss summed over the ranks (a non-finite rank adds 0; the micro-batch
            # is then skipped on every rank anyway).
            ce_value = ce.detach().double()
            nonfinite = ~torch.isfinite(ce_value)
            bad_ranks, ce_sum = D.all_reduce_sum(
                torch.stack([nonfinite.double(), torch.where(nonfinite, 0.0, ce_value)]), device)
            if bad_ranks == 0:
                loss = ce * scale
                ce_total += ce_sum
            elif cfg.train.on_nan == "stop":
                raise NonFiniteLoss(f"non-finite loss at step {step + 1}, micro-batch {k} "
                                    f"(batch {shape}) on at least one rank; set "
                                    "train.on_nan=skip to skip such batches")
            else:
                skipped += 1
                loss = zero_loss(engine.module)
            engine.backward(loss)
            engine.step()
        except torch.OutOfMemoryError as exc:
            raise Seq2SeqEsError(
                f"out of memory at step {step + 1} on batch {shape}: lower train.batch_size "
                "(and raise train.grad_accum to keep the step size), lower "
                "data.max_source_length, or set model.gradient_checkpointing=true") from exc
    result = {"loss": ce_total / max(target_tokens, 1.0), "target_tokens": target_tokens,
              "tokens": target_tokens + source_tokens, "padded_tokens": padded_tokens,
              "skipped_micro_batches": skipped}
    if scale_before is not None:  # fp16: the scale the next step uses; 1 if this one was skipped
        result["overflow_skipped"] = int(fp16_step_skipped(engine, scale_before, skipped_before))
        result["loss_scale"] = loss_scale(engine)
    return result


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

    def run_eval(step: int, data=eval_data, prefix: str = "eval") -> dict:
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
        window_start, window_tokens, window_padded = time.perf_counter(), 0.0, 0.0
        while state["step"] < total_steps:
            epoch, step_in_epoch, micro_indices = next(steps)
            micro = [collator([train_data.tokenized[i] for i in idx]) for idx in micro_indices]
            # The rate this step's update uses: the scheduler advances inside engine.step().
            lr = scheduler.get_last_lr()[0]
            result = train_step(engine, micro, env, cfg, state["step"])
            state = {"step": state["step"] + 1, "epoch": epoch, "step_in_epoch": step_in_epoch + 1,
                     "world_size": env.world_size}
            step = state["step"]
            window_tokens += result["tokens"]
            window_padded += result["padded_tokens"]
            if step % max(cfg.train.log_every, 1) == 0 or step == total_steps or step == 1:
                elapsed = time.perf_counter() - window_start
                tokens_per_s = window_tokens / max(elapsed, 1e-9)
                log.log(step, {"train/loss": result["loss"], "train/lr": lr,
                               "train/tokens_per_s": tokens_per_s, "train/epoch": epoch,
                               "train/padded_fraction": 1.0 - window_tokens / max(window_padded, 1),
                               "train/skipped_micro_batches": result["skipped_micro_batches"],
                               **{f"train/{key}": result[key] for key in
                                  ("loss_scale", "overflow_skipped") if key in result}})
                log.progress(step, result["loss"], lr, tokens_per_s)
                window_start, window_tokens, window_padded = time.perf_counter(), 0.0, 0.0
            # The last step is validated (or not) by train.eval_at_end below, whatever the epoch.
            epoch_end = step_in_epoch + 1 == plan.steps_per_epoch
            eval_due = step < total_steps and (
                (cfg.train.eval_every and step % cfg.train.eval_every == 0)
                or (cfg.train.eval_per_epoch and epoch_end))
            improved = track_best(step, run_eval(step)) if eval_due else False
            # One collective per step for both: a stop signal on any rank, and rank 0's clock
            # saying a save is due. DeepSpeed's save is collective: every rank must save at the
            # same step, and rank clocks disagree.
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
        stop.restore()
        log.close()
