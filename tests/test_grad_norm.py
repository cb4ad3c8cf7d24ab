"""train/grad_norm and train/grad_norm_max: the L2 norm of the step's whole gradient before
clipping (averaged over ranks, summed over micro-batches, unscaled), its mean and maximum over a
logging interval, as the Hugging Face Trainer logs grad_norm.

In-process steps compare the logged norm with one computed by plain torch autograd on a copy of
the same model and batches, under every ZeRO stage and precision (DeepSpeed's optimizers compute
it at ZeRO 1-3, TrainStep at ZeRO 0); real runs check that two ranks log what one rank does with
the same global batch, and that a resumed run logs what the uninterrupted one did.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine_runs import base_args, demo_files, run
from seq2seq_es import metrics_log
from seq2seq_es.config import RunConfig
from seq2seq_es.engine.builders import get_collator, get_engine, get_model, get_split
from seq2seq_es.engine.step import TrainStep, train_step
from seq2seq_es.tasks import get_task


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return demo_files(tmp_path_factory.mktemp("grad_norm") / "data", train_size=16)



def engine_reference_and_batches(files, env, *, stage: int, precision: str = "fp32",
                                 grad_accum: int = 2, on_nan: str = "stop",
                                 max_grad_norm: float = 1.0):
    """An engine, an fp32 copy of its model taken before DeepSpeed touched it, and the
    micro-batches of one step."""
    cfg = RunConfig()
    cfg.model.name, cfg.data.task = "barto-tiny", "mlsum"
    cfg.data.train_file = files["train"]
    cfg.data.max_source_length, cfg.data.max_target_length = 64, 32
    cfg.train.batch_size, cfg.train.grad_accum, cfg.train.precision = 2, grad_accum, precision
    cfg.train.on_nan, cfg.dist.zero_stage = on_nan, stage
    cfg.optim.max_grad_norm, cfg.model.dropout = max_grad_norm, 0.0
    model, tokenizer, spec = get_model(cfg)
    reference = copy.deepcopy(model)
    split = get_split(cfg, get_task("mlsum"), tokenizer, model, "train", 8, lambda m: None)
    collate = get_collator(cfg, spec, tokenizer, model)
    batches = [collate([split.tokenized[i] for i in (2 * k, 2 * k + 1)])
               for k in range(grad_accum)]
    engine, *_ = get_engine(model, cfg, env, total_steps=10)
    return cfg, engine, reference, batches


def autograd_norm(model: torch.nn.Module, batches: list[dict]) -> float:
    """The norm of the gradient of the step's loss (summed token cross-entropy over every
    micro-batch, divided by their target tokens), by plain torch: one backward per micro-batch,
    accumulated in .grad; tied parameters count once."""
    model.zero_grad(set_to_none=True)
    tokens = sum(int((batch["labels"] != -100).sum()) for batch in batches)
    for batch in batches:
        inputs = dict(batch)
        labels = inputs.pop("labels")
        logits = model(**inputs).logits.float()
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                               ignore_index=-100, reduction="sum") / tokens
        loss.backward()
    squares = sum(float(p.grad.double().pow(2).sum())
                  for p in model.parameters() if p.grad is not None)
    return squares ** 0.5


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_the_logged_norm_is_the_autograd_norm_of_the_step(files, one_rank, fresh_autocast,
                                                          stage):
    # fp32, one process, two micro-batches: ZeRO 0 computes it (TrainStep), ZeRO 2 and 3 take
    # DeepSpeed's; the first step, before any update, on the same weights as the reference.
    cfg, engine, reference, batches = engine_reference_and_batches(files, one_rank, stage=stage)
    values = train_step(engine, batches, one_rank, cfg, step=0)
    expected = autograd_norm(reference, batches)
    assert expected > 1.0  # clipped at 1.0: the logged norm must be the one before clipping
    assert values["grad_norm"] == pytest.approx(expected, rel=1e-5)
    assert values["grad_norm_max"] == values["grad_norm"]


@pytest.mark.parametrize("stage, precision, max_grad_norm", [
    (1, "fp32", 0.0),    # DeepSpeedZeroOptimizer computes it also without clipping
    (0, "fp32", 0.0),    # DeepSpeed computes none at ZeRO 0 without clipping: TrainStep does
    (1, "bf16", 1.0),    # BF16_Optimizer (bf16 at ZeRO 1, fp32 accumulation)
    (0, "bf16", 1.0),    # torch autocast over fp32 weights
    (0, "fp16", 1.0),    # autocast + GradScaler: the gradients carry the scale (2^16)
])
def test_every_optimizer_path_logs_the_unscaled_norm(files, one_rank, fresh_autocast, stage,
                                                     precision, max_grad_norm):
    cfg, engine, reference, batches = engine_reference_and_batches(
        files, one_rank, stage=stage, precision=precision, max_grad_norm=max_grad_norm)
    values = train_step(engine, batches, one_rank, cfg, step=0)
    # bf16 and fp16 forwards differ from the fp32 reference by far less than a lost scale would
    tolerance = 1e-5 if precision == "fp32" else 3e-2
    assert values["grad_norm"] == pytest.approx(autograd_norm(reference, batches), rel=tolerance)


def test_zero3_fp16_undoes_deepspeeds_division_by_the_grown_scale(files, one_rank,
                                                                 fresh_autocast, monkeypatch):
    # DeepSpeed 0.19.8's stage 3 divides its norm by the loss scale after the step's update
    # (ZeRO 1-2 by the one before): a step that grows the scale reports half the norm.
    from deepspeed.accelerator import get_accelerator

    monkeypatch.setattr(type(get_accelerator()), "is_fp16_supported", lambda self: True)
    cfg, engine, reference, batches = engine_reference_and_batches(
        files, one_rank, stage=3, precision="fp16")
    scaler = engine.optimizer.loss_scaler
    scaler.scale_window, scaler.cur_iter = 1, 1  # this first step grows the scale
    values = train_step(engine, batches, one_rank, cfg, step=0)
    assert values["overflow_skipped"] == 0 and values["loss_scale"] == 2.0 ** 17
    assert values["grad_norm"] == pytest.approx(autograd_norm(reference, batches), rel=3e-2)


def _overflow_next_backward(engine) -> None:
    """Make the next backward's gradients infinite, as an fp16 overflow would."""
    weight = engine.module.get_input_embeddings().weight
    handle = None

    def hook(grad):
        handle.remove()
        return grad * float("inf")
    handle = weight.register_hook(hook)


def test_skipped_steps_do_not_enter_the_mean(files, one_rank, fresh_autocast):
    # fp16 at ZeRO 0: an overflowing step updates nothing (GradScaler), and its norm (inf) is
    # left out; a window of only such steps logs no norm.
    cfg, engine, _, batches = engine_reference_and_batches(files, one_rank, stage=0,
                                                           precision="fp16", grad_accum=1)
    stepper = TrainStep(engine, one_rank, cfg)
    try:
        _overflow_next_backward(engine)
        overflowed = stepper(batches, 0)
        assert overflowed.fp16["overflow_skipped"] == 1 and overflowed.grad_norm is None
        assert "grad_norm" not in stepper.read(overflowed)
        _overflow_next_backward(engine)
        stepper(batches, 1)
        healthy = stepper(batches, 2)
        values = stepper.read(healthy)
    finally:
        stepper.close()
    assert values["grad_norm"] == values["grad_norm_max"] == healthy.grad_norm.item()
    # the overflow of step 2 counts in the interval read after step 3 (it was the last step's)
    assert values["overflow_skipped"] == 1 and healthy.fp16["overflow_skipped"] == 0

    # on_nan=skip: a step whose every micro-batch was skipped trained on a zero gradient
    cfg, engine, _, batches = engine_reference_and_batches(files, one_rank, stage=0,
                                                           on_nan="skip", grad_accum=1)
    calls = []

    def poison_first(module, inputs, output):
        calls.append(1)
        return output * float("nan") if len(calls) == 1 else output
    handle = engine.module.lm_head.register_forward_hook(poison_first)
    stepper = TrainStep(engine, one_rank, cfg)
    try:
        skipped = stepper(batches, 0)
        kept = stepper(batches, 1)
        values = stepper.read(kept)
    finally:
        stepper.close()
        handle.remove()
    # the interval's count: the first step's skip (it was the last step's, 0)
    assert values["skipped_micro_batches"] == 1 and skipped.skipped.item() == 1
    assert kept.grad_norm.item() > 0
    assert values["grad_norm"] == values["grad_norm_max"] == kept.grad_norm.item()


def test_a_window_is_saved_and_restored_and_old_checkpoints_load(files, one_rank):
    cfg, engine, _, batches = engine_reference_and_batches(files, one_rank, stage=0)
    stepper = TrainStep(engine, one_rank, cfg)
    try:
        first = stepper(batches, 0)
        second = stepper(batches, 1)
        saved = stepper.loss_window_sums()
        norms = [first.grad_norm.item(), second.grad_norm.item()]
        assert saved[3:6] == [sum(norms), 2.0, max(norms)]
        # the padded fraction's window too: the first logged after a resume covered the
        # resumed steps only
        tokens = [first.counts[0] + first.counts[1], second.counts[0] + second.counts[1]]
        assert saved[6:] == [sum(tokens).item(), (first.counts[2] + second.counts[2]).item()]
        assert saved[7] > 0  # the batches are padded
        stepper.restore_loss_window([1.0, 0.0, 4.0])  # a checkpoint from before the norm
        assert stepper.grad_norm_window.tolist() == [sum(norms), 2.0, max(norms)]
        stepper.grad_norm_window.zero_()
        stepper.window.zero_()
        stepper.restore_loss_window(saved[:6])  # from before the token counts: they stay
        assert stepper.window.tolist() == [0.0, 0.0]
        stepper.restore_loss_window(saved)
        values = stepper.read(second)
    finally:
        stepper.close()
    assert values["grad_norm"] == pytest.approx(sum(norms) / 2, rel=1e-12)
    assert values["grad_norm_max"] == max(norms)
    assert (values["window_tokens"], values["window_padded"]) == (saved[6], saved[7])


# ---------------------------------------------------------------------------------------------
# Real runs: ranks and resume


def _norms(out: Path, key: str = "train/grad_norm") -> dict[int, float]:
    return {step: record[key] for step, record in metrics_log.by_step(out, key).items()}


def _stage2(extra=()) -> list[str]:
    return ["--dist.zero_stage", "2", "--model.dropout", "0", "--optim.schedule", "constant",
            *extra]


@pytest.mark.slow
def test_two_ranks_log_the_norm_of_one_rank_and_a_resume_logs_the_same(tmp_path):
    # A stale lock of an interrupted build makes DeepSpeed wait for ever; a fresh one is another
    # process's (the other test worker building or loading the extension): removing that one
    # failed its release ("No such file or directory: .../deepspeed_shm_comm/lock" in CI).
    from torch.utils.cpp_extension import _get_build_directory

    from seq2seq_es.engine.distributed import CPU_EXTENSION, STALE_LOCK_S

    lock = Path(_get_build_directory(CPU_EXTENSION, verbose=False)) / "lock"
    with contextlib.suppress(FileNotFoundError):
        if time.time() - lock.stat().st_mtime > STALE_LOCK_S:
            os.remove(lock)
    files = demo_files(tmp_path / "data", train_size=24)
    # The same global batch of 4: one rank accumulating 2 micro-batches, two ranks 1 each.
    one = tmp_path / "one"
    run("none", 1, base_args(files, one, steps=5, extra=_stage2(["--train.grad_accum", "2"])))
    two = tmp_path / "two"
    run("torchrun", 2, base_args(files, two, steps=5, extra=_stage2()))
    per_step, split = _norms(one), _norms(two)
    assert sorted(per_step) == sorted(split) == [1, 2, 3, 4, 5]
    # clipped at 1.0, the logged norms are the unclipped ones; step 1 is on the same weights,
    # later steps after updates that differ by float rounding only
    assert min(per_step.values()) > 1.0
    for step in per_step:
        assert split[step] == pytest.approx(per_step[step], rel=1e-5), step

    # Logged at steps 1 and 5 only, saved every 2: step 5's record is the mean and the maximum
    # over steps 2-5 of the run above.
    sparse = ["--train.grad_accum", "2", "--train.log_every", "1000", "--train.save_every", "2",
              "--train.resume", "auto"]
    cut = tmp_path / "cut"
    args = base_args(files, cut, steps=5, extra=_stage2(sparse))
    run("none", 1, args)
    uninterrupted = metrics_log.by_step(cut, "train/grad_norm")
    assert sorted(uninterrupted) == [1, 5]
    window = [per_step[step] for step in (2, 3, 4, 5)]
    assert uninterrupted[5]["train/grad_norm"] == pytest.approx(sum(window) / 4, rel=1e-12)
    assert uninterrupted[5]["train/grad_norm_max"] == max(window)
    # As if killed after step 4's checkpoint (its window: steps 2-4, not yet logged): the
    # resumed run's step 5 record covers steps 2-5, exactly as the uninterrupted one's.
    shutil.rmtree(cut / "checkpoints" / "step_00000005")
    for name in ("DONE", "final_results.json"):
        (cut / name).unlink(missing_ok=True)
    run("none", 1, args)
    records = [r for r in metrics_log.read(cut, merge_steps=False) if r.get("step") == 5
               and "train/grad_norm" in r]
    assert len(records) == 2  # the uninterrupted run's and the resumed run's
    for key in ("train/grad_norm", "train/grad_norm_max", "train/loss"):
        assert records[1][key] == records[0][key], key


def _weights_after_steps(files, env, *, stage: int, max_grad_norm: float, steps: int = 2):
    """The parameters' updates after `steps` steps from the same start, and whether the engine
    left clipping to TrainStep."""
    import deepspeed.runtime.torch_autocast as ds_autocast

    ds_autocast.TORCH_AUTOCAST_INITIALIZED = False
    torch.manual_seed(0)
    cfg, engine, reference, batches = engine_reference_and_batches(files, env, stage=stage,
                                                                   max_grad_norm=max_grad_norm)
    start = dict(reference.named_parameters())
    step = TrainStep(engine, env, cfg)
    for number in range(steps):
        step(batches, number)
    updates = {name: (p.detach().float() - start[name].detach().float())
               for name, p in engine.module.named_parameters()}
    clips_itself = engine.gradient_clipping() == 0.0
    step.close()
    engine.destroy()
    return updates, clips_itself


def test_zero0_clips_on_the_device_as_deepspeed_clips_at_zero1(files, one_rank):
    # ZeRO 0 clips in TrainStep (DeepSpeed's stage-0 clipping syncs the host and loops over the
    # parameters); ZeRO 1 clips in DeepSpeed's optimizer: the same update, to float rounding.
    # A norm of 1e-6 clips every step, to gradients below AdamW's eps: the update then scales with
    # the clipping coefficient (with a coarse norm Adam would normalise the clipping away).
    at_zero0, zero0_own = _weights_after_steps(files, one_rank, stage=0, max_grad_norm=1e-6)
    at_zero1, zero1_own = _weights_after_steps(files, one_rank, stage=1, max_grad_norm=1e-6)
    unclipped, _ = _weights_after_steps(files, one_rank, stage=0, max_grad_norm=0.0)
    assert zero0_own and not zero1_own
    largest = max(u.abs().max().item() for u in at_zero0.values())

    def worst(other):
        return max((at_zero0[k] - other[k]).abs().max().item() for k in at_zero0) / largest

    assert worst(at_zero1) <= 1e-3 and worst(unclipped) > 0.5


def test_clipping_scales_only_gradients_above_the_limit():
    """min(1, max_norm / (norm + 1e-6)), as torch's clip_grad_norm_: a gradient under the limit
    is left as it is. The clipping tests above always clip (max_grad_norm 1e-6), so a factor
    without the min(1, .) scaled small gradients up to the limit and passed them."""
    from types import SimpleNamespace

    from seq2seq_es.engine.step import TrainStep

    step = SimpleNamespace(clip_norm=1.0)
    small = [torch.tensor([0.1, 0.2]), torch.tensor([[0.05]])]
    norm = torch.sqrt(sum((g ** 2).sum() for g in small))
    kept = [g.clone() for g in small]
    TrainStep._clip(step, small, norm)
    assert all(torch.equal(g, k) for g, k in zip(small, kept))
    large = [torch.tensor([3.0, 4.0])]                   # norm 5: scaled to norm 1
    TrainStep._clip(step, large, torch.tensor(5.0))
    torch.testing.assert_close(large[0], torch.tensor([0.6, 0.8]), rtol=1e-5, atol=0)
