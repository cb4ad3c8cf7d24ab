"""The learning-rate schedule without an engine: warmup length, the rate of each step, and what
a resume takes from a checkpoint's schedule state (its position, not its peak rate)."""

from __future__ import annotations

import pytest
import torch

from seq2seq_es.config import RunConfig
from seq2seq_es.engine.optim import apply_schedule, build_scheduler, lr_factor, warmup_steps


def _cfg(**optim) -> RunConfig:
    cfg = RunConfig()
    for key, value in optim.items():
        setattr(cfg.optim, key, value)
    return cfg


@pytest.mark.parametrize("ratio, total, expected",
                         [(0.1, 15, 2), (0.1, 10, 1), (0.05, 1, 1), (0.0, 15, 0)])
def test_warmup_ratio_rounds_the_warmup_steps_up(ratio, total, expected):
    # 10% of 15 steps is 1.5: rounded down, a short run warms up for fewer steps than asked
    # (a ratio on a one-step run would have none at all).
    assert warmup_steps(_cfg(warmup_ratio=ratio), total) == expected


def test_warmup_steps_override_the_ratio():
    assert warmup_steps(_cfg(warmup_ratio=0.5, warmup_steps=3), 100) == 3


def test_linear_schedule_rates_by_step():
    # Warmup reaches the peak at its last step; the decay then runs over the steps after it.
    assert [lr_factor(s, 6, 2, "linear") for s in range(7)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25,
                                                                0.0]
    assert [lr_factor(s, 4, 0, "constant") for s in range(4)] == [1.0] * 4
    assert lr_factor(2, 4, 0, "cosine") == pytest.approx(0.5)


def _optimizer(lr: float) -> torch.optim.AdamW:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def test_a_resume_with_a_new_peak_rate_uses_it_and_keeps_the_position():
    # A run resumed with another --optim.lr must follow the new peak: the checkpoint's
    # base_lrs would silently keep training at the old one.
    saved = build_scheduler(_optimizer(1e-3), _cfg(lr=1e-3, schedule="linear"), total_steps=10)
    for _ in range(4):
        saved.optimizer.step()
        saved.step()
    state = saved.state_dict()
    assert state["base_lrs"] == [1e-3] and state["last_epoch"] == 4

    resumed = build_scheduler(_optimizer(2e-3), _cfg(lr=2e-3, schedule="linear"), total_steps=10)
    resumed.load_state_dict(state)
    assert resumed.base_lrs == [2e-3]
    assert resumed.last_epoch == 4
    assert apply_schedule(resumed) == [pytest.approx(2e-3 * 0.6)]
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(2e-3 * 0.6)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_after_warmup_the_schedule_is_the_trainers(schedule):
    # README: warmup's first step runs at lr/warmup where the Trainer's runs at 0; from the end
    # of warmup on, the rates are the Trainer's (transformers' schedule functions).
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    total, warmup = 20, 4
    make = {"linear": get_linear_schedule_with_warmup,
            "cosine": get_cosine_schedule_with_warmup}[schedule]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    trainers = make(optimizer, warmup, total)
    theirs = []
    for _ in range(total):
        theirs.append(trainers.get_last_lr()[0])
        optimizer.step()
        trainers.step()
    ours = [lr_factor(step, total, warmup, schedule) for step in range(total)]
    assert ours[warmup:] == pytest.approx(theirs[warmup:], abs=1e-12)
    assert theirs[0] == 0.0 and ours[0] == 1 / warmup
