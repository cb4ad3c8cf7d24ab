"""Guards from the mutation audit of the training step and the optimizer (engine/step.py,
engine/optim.py): behaviour that no other fast test pinned down, each compared with an
independent reference (a plain PyTorch loop, torch.optim.AdamW, torch's clip_grad_norm_,
transformers' schedule and decay rule), never with numbers the code under test produced.

The end-to-end tests train barto-tiny at ZeRO 0 on one process with AdamW's eps at 1.0: the first
steps' updates are then nearly proportional to the gradient (Adam's usual eps normalises a
gradient's scale away), so a wrong loss normalisation, clip or decay group moves the weights
visibly differently from the reference.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine_runs import demo_files, free_port
from seq2seq_es.config import RunConfig
from seq2seq_es.engine import distributed as D
from seq2seq_es.engine.step import NonFiniteLoss, TrainStep

TOTAL_STEPS = 10


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return demo_files(tmp_path_factory.mktemp("step_guards") / "data", train_size=16)



def _engine(files, env, *, precision: str = "fp32", grad_accum: int = 2,
            max_grad_norm: float = 0.5, on_nan: str = "stop", lr: float = 1e-2,
            eps: float = 1.0, weight_decay: float = 0.1, stage: int = 0):
    """cfg, an engine (ZeRO 0 unless `stage`) on barto-tiny (no dropout, plain loss path, linear
    schedule without warmup over TOTAL_STEPS), an untouched fp32 copy of its model, and four
    micro-batches of 2."""
    from seq2seq_es.engine.builders import get_collator, get_engine, get_model, get_split
    from seq2seq_es.tasks import get_task

    cfg = RunConfig()
    cfg.model.name, cfg.data.task = "barto-tiny", "mlsum"
    cfg.data.train_file = files["train"]
    cfg.data.max_source_length, cfg.data.max_target_length = 64, 32
    cfg.train.batch_size, cfg.train.grad_accum, cfg.train.precision = 2, grad_accum, precision
    cfg.train.on_nan, cfg.dist.zero_stage = on_nan, stage
    cfg.model.dropout, cfg.model.lean_ce = 0.0, False
    o = cfg.optim
    o.lr, o.eps, o.weight_decay, o.max_grad_norm = lr, eps, weight_decay, max_grad_norm
    o.betas, o.schedule, o.warmup_steps, o.warmup_ratio = (0.9, 0.999), "linear", 0, 0.0
    model, tokenizer, spec = get_model(cfg)
    reference = copy.deepcopy(model)
    split = get_split(cfg, get_task("mlsum"), tokenizer, model, "train", 8, lambda m: None)
    collate = get_collator(cfg, spec, tokenizer, model)
    batches = [collate([split.tokenized[i] for i in (2 * k, 2 * k + 1)]) for k in range(4)]
    engine, *_ = get_engine(model, cfg, env, total_steps=TOTAL_STEPS)
    return cfg, engine, reference, batches


def _step_loss(model, micro: list[dict], tokens: int) -> list[torch.Tensor]:
    """Each micro-batch's summed token cross-entropy over the step's target tokens (plain
    torch), backpropagated into .grad; the losses."""
    losses = []
    for batch in micro:
        inputs = dict(batch)
        labels = inputs.pop("labels")
        logits = model(**inputs).logits.float()
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                               ignore_index=-100, reduction="sum") / tokens
        loss.backward()
        losses.append(loss.detach())
    return losses


def _plain_torch_training(model, steps: list[list[dict]], cfg: RunConfig) -> None:
    """The reference: the Hugging Face Trainer's recipe written out. AdamW with weight decay on
    all but biases and LayerNorm weights (transformers' own rule), the step's loss as token-summed
    cross-entropy over the step's target tokens, torch's clip_grad_norm_, transformers' linear
    schedule (no warmup: ours differs from it only during warmup)."""
    from transformers import get_linear_schedule_with_warmup
    from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS
    from transformers.trainer_pt_utils import get_parameter_names

    o = cfg.optim
    decayed = {n for n in get_parameter_names(model, ALL_LAYERNORM_LAYERS) if "bias" not in n}
    named = dict(model.named_parameters())
    groups = [{"params": [p for n, p in named.items() if n in decayed],
               "weight_decay": o.weight_decay},
              {"params": [p for n, p in named.items() if n not in decayed], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    schedule = get_linear_schedule_with_warmup(optimizer, 0, TOTAL_STEPS)
    model.train()
    for micro in steps:
        optimizer.zero_grad(set_to_none=True)
        _step_loss(model, micro, sum(int((b["labels"] != -100).sum()) for b in micro))
        if o.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.max_grad_norm)
        optimizer.step()
        schedule.step()


def _worst_relative_difference(engine, reference, start) -> float:
    """max |ours - reference| over every weight, relative to the largest reference update."""
    ours = dict(engine.module.named_parameters())
    theirs = dict(reference.named_parameters())
    assert ours.keys() == theirs.keys()
    largest = max((theirs[n].detach() - start[n]).abs().max().item() for n in theirs)
    assert largest > 0
    return max((ours[n].detach().float() - theirs[n].detach()).abs().max().item()
               for n in theirs) / largest


# Guards: the loss divided by grad_accum twice or not at all, averaged per micro-batch instead of
# per target token, clipping skipped, applied with max_grad_norm 0 (zeroing the gradient) or at
# the wrong place, weight decay on the wrong group, a schedule a step off.
@pytest.mark.parametrize("max_grad_norm", [0.0, 0.5])
def test_zero0_steps_train_as_a_plain_torch_loop(files, one_rank, fresh_autocast, max_grad_norm):
    cfg, engine, reference, batches = _engine(files, one_rank, max_grad_norm=max_grad_norm)
    start = {n: p.detach().clone() for n, p in reference.named_parameters()}
    steps = [batches[0:2], batches[2:4], batches[0:2]]
    # the first step's unclipped norm is well above 0.5: the clipped run does clip
    probe = copy.deepcopy(reference)
    _step_loss(probe, steps[0], sum(int((b["labels"] != -100).sum()) for b in steps[0]))
    assert torch.nn.utils.get_total_norm([p.grad for p in probe.parameters()
                                          if p.grad is not None]) > 1.0
    stepper = TrainStep(engine, one_rank, cfg)
    try:
        for number, micro in enumerate(steps):
            stepper(micro, number)
    finally:
        stepper.close()
    _plain_torch_training(reference, steps, cfg)
    assert _worst_relative_difference(engine, reference, start) < 1e-4


# Guards: under fp16 at ZeRO 0 the gradient clipped while it still carries the GradScaler's
# scale (2^16): the update then shrinks by the scale. (fp16 autocast's rounding: ~4e-4.)
def test_fp16_at_zero0_clips_the_unscaled_gradient(files, one_rank, fresh_autocast):
    cfg, engine, reference, batches = _engine(files, one_rank, precision="fp16")
    start = {n: p.detach().clone() for n, p in reference.named_parameters()}
    steps = [batches[0:2], batches[2:4]]
    stepper = TrainStep(engine, one_rank, cfg)
    try:
        results = [stepper(micro, number) for number, micro in enumerate(steps)]
    finally:
        stepper.close()
    assert [r.fp16["overflow_skipped"] for r in results] == [0, 0]
    _plain_torch_training(reference, steps, cfg)
    assert _worst_relative_difference(engine, reference, start) < 1e-2


# Guards: under fp16 at ZeRO 0 the norm unscaled by the scale read after the step (the
# GradScaler's update) instead of the one the backward used: a step that grows the scale (every
# 2000 clean steps) logged half its norm.
def test_fp16_at_zero0_logs_the_norm_of_a_step_that_grows_the_scale(files, one_rank,
                                                                   fresh_autocast):
    cfg, engine, reference, batches = _engine(files, one_rank, precision="fp16")
    scaler = engine.torch_autocast_z0_gradscaler
    scaler._growth_interval = 1  # this first clean step doubles the scale
    stepper = TrainStep(engine, one_rank, cfg)
    try:
        values = stepper.read(stepper(batches[0:2], 0))
    finally:
        stepper.close()
    assert values["overflow_skipped"] == 0 and values["loss_scale"] == 2.0 ** 17
    assert values["grad_norm"] == pytest.approx(_autograd_norm(reference, batches[0:2]), rel=3e-2)


# Guards: under DeepSpeed's fp16 (ZeRO 1-3) a step's overflow judged by the run's skipped-step
# count rather than this step's change of it: after the first overflow every step was logged as
# skipped, without its gradient norm.
def test_after_an_fp16_overflow_under_zero_a_clean_step_is_not_skipped(files, one_rank,
                                                                     fresh_autocast,
                                                                     monkeypatch):
    from deepspeed.accelerator import get_accelerator

    monkeypatch.setattr(type(get_accelerator()), "is_fp16_supported", lambda self: True)
    cfg, engine, _, batches = _engine(files, one_rank, precision="fp16", stage=2)
    weight = engine.module.get_input_embeddings().weight
    handle = weight.register_hook(lambda grad: grad * float("inf"))  # as an overflow would
    stepper = TrainStep(engine, one_rank, cfg)
    try:
        overflowed = stepper(batches[0:2], 0)
        handle.remove()
        before = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
        clean = stepper(batches[2:4], 1)
    finally:
        stepper.close()
    assert overflowed.fp16["overflow_skipped"] == 1 and engine.skipped_steps == 1
    assert any(not torch.equal(before[n], p.detach())
               for n, p in engine.module.named_parameters())  # the clean step did update
    assert clean.fp16["overflow_skipped"] == 0 and clean.grad_norm is not None


def _ce_per_token(model, batches: list[dict]) -> tuple[float, int]:
    """The token-summed cross-entropy of `batches` under `model` as it is now, and their target
    tokens (plain torch, no gradient)."""
    ce, tokens = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            inputs = dict(batch)
            labels = inputs.pop("labels")
            logits = model(**inputs).logits.float()
            ce += F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                                  ignore_index=-100, reduction="sum").item()
            tokens += int((labels != -100).sum())
    return ce, tokens


def _tokens(batches: list[dict]) -> tuple[int, int]:
    """Target plus unpadded source tokens, and every slot of both tensors (padding included)."""
    tokens = sum(int((b["labels"] != -100).sum()) + int(b["attention_mask"].sum())
                 for b in batches)
    return tokens, sum(b["labels"].numel() + b["input_ids"].numel() for b in batches)


def _autograd_norm(model, batches: list[dict]) -> float:
    model.zero_grad(set_to_none=True)
    _step_loss(model, batches, sum(int((b["labels"] != -100).sum()) for b in batches))
    return torch.nn.utils.get_total_norm(
        [p.grad for p in model.parameters() if p.grad is not None]).item()


# Guards: a logging interval's loss divided by its last step's target tokens instead of the
# interval's, its loss or norm sums holding the last step only, its norm maximum the last step's,
# and the gradient norm's (or the loss's) sums not reset when an interval is read
# (every later log then averaged over the whole run so far), nor the token window (the padded
# fraction and tokens per second).
def test_the_second_logging_interval_covers_its_own_steps_only(files, one_rank, fresh_autocast):
    cfg, engine, reference, batches = _engine(files, one_rank)
    steps = [batches[0:2], batches[2:4], batches[2:4], batches[0:2]]
    assert (sum(int((b["labels"] != -100).sum()) for b in steps[1])
            != sum(int((b["labels"] != -100).sum()) for b in steps[3]))
    expected = []  # (ce, tokens, norm) of each step, on the weights it starts from
    stepper = TrainStep(engine, one_rank, cfg)
    reads = []
    try:
        for number, micro in enumerate(steps):
            reference.load_state_dict(engine.module.state_dict())
            ce, tokens = _ce_per_token(reference, micro)
            expected.append((ce, tokens, _autograd_norm(reference, micro)))
            result = stepper(micro, number)
            if number in (1, 3):
                reads.append(stepper.read(result))
    finally:
        stepper.close()
    # some interval's maximum is not its last step's norm (a "maximum" of the last would pass)
    assert expected[0][2] > expected[1][2] or expected[2][2] > expected[3][2]
    for values, (a, b) in zip(reads, [(0, 1), (2, 3)]):
        window = [expected[a], expected[b]]
        assert values["loss"] == pytest.approx(sum(w[0] for w in window)
                                               / sum(w[1] for w in window), rel=1e-5)
        assert values["grad_norm"] == pytest.approx((window[0][2] + window[1][2]) / 2, rel=1e-4)
        assert values["grad_norm_max"] == pytest.approx(max(window[0][2], window[1][2]),
                                                        rel=1e-4)
        assert values["target_tokens"] == window[1][1]
        tokens = [_tokens(steps[a]), _tokens(steps[b])]
        assert (values["window_tokens"], values["window_padded"]) == (
            tokens[0][0] + tokens[1][0], tokens[0][1] + tokens[1][1])
        assert values["new_tokens"] == values["window_tokens"]


# Guards: a restored window's tokens (trained by the process before a resume) counted as this
# process's (its tokens per second), or dropped from the window (the padded fraction).
def test_a_restored_windows_tokens_are_not_this_processs(files, one_rank, fresh_autocast):
    cfg, engine, _, batches = _engine(files, one_rank)
    stepper = TrainStep(engine, one_rank, cfg)
    try:
        stepper.restore_loss_window([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1000.0, 1500.0])
        first = stepper.read(stepper(batches[0:2], 0))
        second = stepper.read(stepper(batches[2:4], 1))
    finally:
        stepper.close()
    (tokens, padded), (later, _) = _tokens(batches[0:2]), _tokens(batches[2:4])
    assert (first["window_tokens"], first["window_padded"]) == (1000 + tokens, 1500 + padded)
    assert first["new_tokens"] == tokens
    assert second["new_tokens"] == second["window_tokens"] == later


# Guards: a non-finite check that looks for NaN only (torch.isnan): a loss of +inf (an fp16
# logit overflowing to -inf at the target) trained on, or was logged, as if finite.
@pytest.mark.parametrize("on_nan", ["stop", "skip"])
def test_an_infinite_loss_is_non_finite(files, one_rank, fresh_autocast, monkeypatch, on_nan):
    from seq2seq_es.engine import step as step_module

    cfg, engine, _, batches = _engine(files, one_rank, on_nan=on_nan)
    original, calls = step_module.token_ce_sum, []

    def infinite_first(*args, **kwargs):
        calls.append(1)
        ce = original(*args, **kwargs)
        return ce * float("inf") if len(calls) == 1 else ce
    monkeypatch.setattr(step_module, "token_ce_sum", infinite_first)
    stepper = TrainStep(engine, one_rank, cfg)
    try:
        result = stepper(batches[:2], 0)
        assert len(calls) == 2
        if on_nan == "stop":
            with pytest.raises(NonFiniteLoss, match="at step 1, micro-batch 0"):
                stepper.check_finite()
            return
        values = stepper.read(result)
    finally:
        stepper.close()
    assert values["skipped_micro_batches"] == 1 and math.isfinite(values["loss"])
    assert all(torch.isfinite(p).all() for p in engine.module.parameters())


# Guards: the micro-batch counter that indexes the unchecked batches not advancing (the error
# then named the last micro-batch run before the check, not the first non-finite one), and the
# unchecked steps not reset by a check (the error's range began at step 1, the dict grew all run).
def test_a_deferred_check_names_the_first_non_finite_micro_batch(files, one_rank,
                                                                 fresh_autocast):
    cfg, engine, _, batches = _engine(files, one_rank)
    calls = []

    def nan_at_fifth(module, inputs, output):  # step 3, micro-batch 0
        calls.append(1)
        return output * float("nan") if len(calls) == 5 else output
    handle = engine.module.lm_head.register_forward_hook(nan_at_fifth)
    stepper = TrainStep(engine, one_rank, cfg)
    try:
        stepper(batches[0:2], 0)
        stepper.check_finite()  # step 1 was finite
        for number in range(1, 4):  # steps 2-4, checked at once (a logging interval)
            stepper(batches[2 * (number % 2):2 * (number % 2) + 2], number)
        with pytest.raises(NonFiniteLoss,
                           match=r"at step 3, micro-batch 0 .*\(steps 2-4 checked at once; "
                                 r"nothing after step 2 was saved\)"):
            stepper.check_finite()
    finally:
        stepper.close()
        handle.remove()


# Guards: the fused AdamW kernel chosen under ZeRO-Offload (whose optimizer steps CPU copies) or
# although optim.fused is false.
def test_fused_adamw_only_on_a_gpu_without_offload_and_when_asked(monkeypatch):
    from seq2seq_es.engine.optim import build_optimizer

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    fused = {}
    for name, fused_key, offload in (("gpu", True, False), ("offload", True, True),
                                     ("not asked", False, False)):
        cfg = RunConfig()
        cfg.optim.fused, cfg.dist.offload_optimizer = fused_key, offload
        fused[name] = bool(build_optimizer(model, cfg).defaults["fused"])
    assert fused == {"gpu": True, "offload": False, "not asked": False}


# Guards: TrainStep not deriving the CUDA-graph gradient copies from model.compile_mode
# reduce-overhead (test_compile_static sets the flag by hand): with gradient accumulation a
# graph's replay overwrote the first micro-batch's gradients, and the step trained on 2 x the
# last one's. The CPU stands in for a graph's memory as test_compile_static does.
def test_reduce_overhead_at_zero0_moves_accumulated_gradients_out(files, one_rank,
                                                                   fresh_autocast):
    from torch.nn.utils.parametrize import register_parametrization

    from test_compile_static import _GraphPoolGradient, _ThroughGraphPool

    def trained(through_pool: bool) -> dict[str, torch.Tensor]:
        cfg, engine, reference, batches = _engine(files, one_rank, max_grad_norm=0.0)
        if through_pool:
            _GraphPoolGradient.pool = None
            register_parametrization(engine.module.model.encoder.layers[0].self_attn.q_proj,
                                     "weight", _ThroughGraphPool())
            cfg.model.compile, cfg.model.compile_mode = True, "reduce-overhead"
        stepper = TrainStep(engine, one_rank, cfg)
        try:
            stepper(batches[:2], 0)
        finally:
            stepper.close()
        return {name.replace("parametrizations.weight.original", "weight"): p.detach().clone()
                for name, p in engine.module.named_parameters()}

    plain, graphed = trained(False), trained(True)
    assert plain.keys() == graphed.keys()
    assert all(torch.equal(plain[name], graphed[name]) for name in plain)


def _two_rank_worker(rank: int, port: int, folder: str) -> None:
    """One of two gloo ranks: two ZeRO-0 steps of one micro-batch each (global micro-batches
    0+1, then 2+3), then a third that is non-finite on rank 1; each rank saves the weights after
    step 2, the loss window saved after step 1 and what the non-finite check raised."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from seq2seq_es.process_exit import leave

    env = D.read_env()
    D.init(env, "gloo")
    files = {split: str(Path(folder, "data", f"{split}.jsonl"))
             for split in ("train", "validation", "test")}
    cfg, engine, _, batches = _engine(files, env, grad_accum=1, max_grad_norm=0.0)
    stepper = TrainStep(engine, env, cfg)
    stepper([batches[rank]], 0)
    saved = stepper.loss_window_sums()  # what a checkpoint after step 1 holds (collective)
    stepper([batches[2 + rank]], 1)
    weights = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
    if rank == 1:  # step 3's micro-batch is non-finite on rank 1 only
        engine.module.lm_head.register_forward_hook(lambda m, i, output: output * float("nan"))
    stepper([batches[rank]], 2)
    try:
        stepper.check_finite()
        said = None
    except NonFiniteLoss as error:
        said = (str(error), error.said_elsewhere)
    stepper.close()
    torch.save({"weights": weights, "saved": saved, "said": said}, Path(folder, f"rank{rank}.pt"))
    D.close()
    leave(0)


# Guards: the loss scale without the world size (DeepSpeed averages gradients over ranks): on two
# ranks each step trained on half the gradient (hidden by Adam's usual eps, by clipping and by the
# logged loss), so the split of a step changed the update. And a checkpoint's loss window saved
# with rank 0's cross-entropy only (not summed over ranks): the first loss logged after a
# multi-rank resume was too low. And the earliest non-finite micro-batch over ranks encoded
# without the rank count (index + rank): a later micro-batch's error named another step or rank.
@pytest.mark.slow  # two processes
def test_two_ranks_train_as_a_plain_torch_loop_over_the_global_batch(tmp_path, one_rank,
                                                                     fresh_autocast):
    files = demo_files(tmp_path / "data", train_size=16)
    cfg, _, reference, batches = _engine(files, one_rank, grad_accum=1, max_grad_norm=0.0)
    start = {n: p.detach().clone() for n, p in reference.named_parameters()}
    ce, targets = _ce_per_token(reference, batches[0:2])
    torch.multiprocessing.spawn(_two_rank_worker, args=(free_port(), str(tmp_path)), nprocs=2)
    saved, other = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert saved["saved"][0] == pytest.approx(ce, rel=1e-5) and saved["saved"][2] == targets
    # both ranks stop, naming rank 1's micro-batch of step 3; rank 1 says it
    for said in (saved["said"], other["said"]):
        assert said is not None and "at step 3, micro-batch 0 of rank 1" in said[0], said
    assert saved["said"][1] and not other["said"][1]
    _plain_torch_training(reference, [batches[0:2], batches[2:4]], cfg)
    ours = saved["weights"]
    theirs = dict(reference.named_parameters())
    largest = max((theirs[n].detach() - start[n]).abs().max().item() for n in theirs)
    worst = max((ours[n] - theirs[n].detach()).abs().max().item() for n in theirs) / largest
    assert worst < 1e-4


# Guards: the schedule's warmup taken from warmup_ratio of one step fewer than the run's total
# (10% of 11 steps is 1.1: two warmup steps, as transformers' ceil(ratio x steps) gives, not one).
def test_the_schedule_warms_up_over_the_ratio_of_the_runs_steps():
    from seq2seq_es.engine.optim import build_scheduler

    cfg = RunConfig()
    cfg.optim.lr, cfg.optim.warmup_ratio, cfg.optim.schedule = 1.0, 0.1, "linear"
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = build_scheduler(optimizer, cfg, total_steps=11)
    rates = []
    for _ in range(4):
        rates.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert rates == pytest.approx([1 / 2, 1.0, 1.0, 1 - 1 / 9], abs=1e-12)
