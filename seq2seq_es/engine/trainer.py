"""The training loop: build, (resume,) train, evaluate, checkpoint, export. Read top to bottom.

Loss normalisation: a step's loss is the sum of token cross-entropies over all its micro-batches
on all ranks, divided by the number of target tokens in all of them. DeepSpeed divides each
backward by the accumulation steps and averages gradients over ranks, so each micro-batch's
token-summed loss is multiplied by `world_size * grad_accum / tokens_in_step` before backward;
the resulting update does not depend on how the step is split (1x4x2 = 2x1x4 = 1x1x8).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from ..config import RunConfig
from ..errors import ConfigError, Seq2SeqEsError
from . import distributed as D
from .builders import (check_targets, get_collator, get_engine, get_generation_config, get_model,
                       get_split, get_step_plan)
from .checkpoint import Checkpointer
from .evaluation import evaluate
from .loss import token_ce_sum
from .optim import use_bf16
from .run_dir import RunLog
from .signals import StopRequest


class NonFiniteLoss(Seq2SeqEsError):
    pass


class Stopped(Seq2SeqEsError):
    """Raised after a stop signal was handled and a checkpoint saved; carries the exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


PREEMPTED_EXIT_CODE = 3


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
    if not (path / "trainer_state.json").is_file():
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
    return {"loss": ce_total / max(target_tokens, 1.0), "target_tokens": target_tokens,
            "tokens": target_tokens + source_tokens, "padded_tokens": padded_tokens,
            "skipped_micro_batches": skipped}


def export_hf(engine, tokenizer, generation_config, out: Path, zero_stage: int,
              env: D.DistEnv) -> None:
    """Write a Hugging Face checkpoint (safetensors, tokenizer, generation config)."""
    state_dict = engine._zero3_consolidated_16bit_state_dict() if zero_stage == 3 else None
    if env.is_main:
        from ..models import save_model
        save_model(engine.module, out, state_dict=state_dict)
        tokenizer.save_pretrained(out)
        generation_config.save_pretrained(out)
    D.barrier()


def train(cfg: RunConfig) -> dict:
    env = D.read_env()
    D.init(env, cfg.dist.backend, cfg.dist.timeout_min)
    out = Path(cfg.train.output_dir)
    ckpt = Checkpointer(out / "checkpoints", env, cfg.train.keep_last)
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
    collator = get_collator(cfg, spec, tokenizer, model)
    generation_config = get_generation_config(cfg, spec, tokenizer)
    plan, total_steps = get_step_plan(cfg, env, train_data, collator.pad_to_multiple_of)
    if plan.dropped_per_epoch:
        say(f"{plan.dropped_per_epoch} training examples per epoch do not fill a last step and "
            "are left out of that epoch (the order changes each epoch)")
    if hasattr(plan, "padded_fraction"):
        say(f"token-budget batches: {plan.padded_fraction(0):.1%} padding in epoch 0 "
            f"(random order with the same budget: {plan.random_order_padded_fraction(0):.1%})")
    engine, _, scheduler, ds_config = get_engine(model, cfg, env, total_steps)

    state = {"step": 0, "epoch": 0, "step_in_epoch": 0, "world_size": env.world_size}
    if resume_from is not None:
        state = ckpt.load(engine, resume_from)
        say(f"resumed from {resume_from} at step {state['step']}")
    log = RunLog(out, cfg, env.is_main, total_steps, state["step"])
    if env.is_main:
        (out / "deepspeed_config.json").write_text(json.dumps(ds_config, indent=1))
    bf16 = use_bf16(cfg)
    eval_batch = cfg.train.eval_batch_size or cfg.train.batch_size

    def run_eval(step: int) -> dict:
        results = evaluate(engine.module, tokenized=eval_data.tokenized,
                           examples=eval_data.examples, collator=collator, tokenizer=tokenizer,
                           generation_config=generation_config, task=task, env=env,
                           batch_size=eval_batch, zero_stage=cfg.dist.zero_stage, bf16=bf16,
                           step=step, out_dir=out / "eval")
        log.log(step, results)
        log.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
        return results

    def save() -> None:
        ckpt.save(engine, state)

    stop = StopRequest().install()
    try:
        if cfg.train.eval_at_start and state["step"] == 0:
            run_eval(0)
        steps = plan.iter_steps(state["epoch"], state["step_in_epoch"], env.rank)
        window_start, window_tokens, window_padded = time.perf_counter(), 0.0, 0.0
        while state["step"] < total_steps:
            epoch, step_in_epoch, micro_indices = next(steps)
            micro = [collator([train_data.tokenized[i] for i in idx]) for idx in micro_indices]
            result = train_step(engine, micro, env, cfg, state["step"])
            state = {"step": state["step"] + 1, "epoch": epoch, "step_in_epoch": step_in_epoch + 1,
                     "world_size": env.world_size}
            step = state["step"]
            window_tokens += result["tokens"]
            window_padded += result["padded_tokens"]
            if step % max(cfg.train.log_every, 1) == 0 or step == total_steps or step == 1:
                elapsed = time.perf_counter() - window_start
                lr = scheduler.get_last_lr()[0]
                tokens_per_s = window_tokens / max(elapsed, 1e-9)
                log.log(step, {"train/loss": result["loss"], "train/lr": lr,
                               "train/tokens_per_s": tokens_per_s, "train/epoch": epoch,
                               "train/padded_fraction": 1.0 - window_tokens / max(window_padded, 1),
                               "train/skipped_micro_batches": result["skipped_micro_batches"]})
                log.progress(step, result["loss"], lr, tokens_per_s)
                window_start, window_tokens, window_padded = time.perf_counter(), 0.0, 0.0
            if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < total_steps:
                run_eval(step)
            if cfg.train.save_every and step % cfg.train.save_every == 0 and step < total_steps:
                save()
            signum = int(D.all_reduce_max(float(stop.signum), env.device))
            if signum and step < total_steps:
                save()
                name = StopRequest.name(signum)
                if env.is_main:
                    (out / "PREEMPTED").write_text(json.dumps({"step": step, "signal": name}))
                code = 130 if name == "SIGINT" else PREEMPTED_EXIT_CODE
                raise Stopped(f"{name} received: saved a checkpoint at step {step}; resume with "
                              "--train.resume auto", code)
        last_eval = run_eval(state["step"]) if cfg.train.eval_at_end else {}
        save()
        if cfg.train.export:
            export_hf(engine, tokenizer, generation_config, out / "final", cfg.dist.zero_stage, env)
        if env.is_main:
            (out / "PREEMPTED").unlink(missing_ok=True)
            (out / "DONE").write_text(json.dumps({"step": state["step"], **last_eval}))
        return {"step": state["step"], **last_eval}
    finally:
        stop.restore()
        log.close()
