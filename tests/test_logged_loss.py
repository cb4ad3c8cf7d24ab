"""The logged train/loss is the logging interval's loss per target token (the Trainer logs an
interval's mean, not its last step's), and a resume goes on from the interval's sums saved in the
checkpoint, so its logged losses are those of an uninterrupted run."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from engine_runs import base_args, demo_files, kill_group, run, start, step_losses, wait_for

pytestmark = pytest.mark.slow

# Steps 1 and the last are logged (and every 1000th): the last log covers every step after the
# first. A constant rate: a run's schedule does not depend on its length.
SPARSE_LOG = ["--train.log_every", "1000", "--optim.schedule", "constant",
              "--train.save_every", "2", "--train.resume", "auto"]


def test_the_logged_loss_is_the_intervals_and_survives_a_resume(tmp_path):
    files = demo_files(tmp_path / "data", train_size=16)
    every = tmp_path / "every"  # each step's loss, to check the interval's against
    run("none", 1, base_args(files, every, steps=8, extra=["--optim.schedule", "constant"]))
    each = step_losses(every)
    sparse = tmp_path / "sparse"
    run("none", 1, base_args(files, sparse, steps=8, extra=SPARSE_LOG))
    logged = step_losses(sparse)
    assert sorted(logged) == [1, 8] and logged[1] == pytest.approx(each[1], rel=1e-6)
    # steps 2-8 weighted by their target tokens: between their smallest and largest, and not
    # the last step's alone
    assert min(each[s] for s in range(2, 9)) < logged[8] < max(each[s] for s in range(2, 9))
    assert logged[8] != pytest.approx(each[8], rel=1e-4)

    stopped = tmp_path / "stopped"
    proc = start("none", 1, base_args(files, stopped, steps=400, extra=SPARSE_LOG))
    try:
        wait_for(lambda: (stopped / "checkpoints" / "step_00000002").is_dir()
                 or proc.poll() is not None)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
    finally:
        kill_group(proc)
    state = json.loads(sorted((stopped / "checkpoints").glob("step_*"))[-1]
                       .joinpath("trainer_state.json").read_text())
    at = state["step"]
    assert 2 <= at < 398 and state["loss_window"][2] > 0  # a window the log has not read
    uninterrupted = tmp_path / "uninterrupted"
    run("none", 1, base_args(files, uninterrupted, steps=at + 3, extra=SPARSE_LOG))
    run("none", 1, base_args(files, stopped, steps=at + 3, extra=SPARSE_LOG))
    resumed, reference = step_losses(stopped), step_losses(uninterrupted)
    assert sorted(resumed) == sorted(reference) == [1, at + 3]
    assert resumed[at + 3] == pytest.approx(reference[at + 3], rel=1e-6, abs=0)
    assert torch.isfinite(torch.tensor(resumed[at + 3]))


def test_label_smoothing_reaches_the_step_on_both_loss_paths(tmp_path):
    files = demo_files(tmp_path / "data", train_size=16)
    first = {}
    for name, extra in (("plain", ["--model.lean_ce", "false"]),
                        ("smoothed", ["--model.lean_ce", "false", "--optim.label_smoothing", "0.3"]),
                        ("smoothed_lean", ["--model.lean_ce", "true",
                                           "--optim.label_smoothing", "0.3"])):
        run("none", 1, base_args(files, tmp_path / name, steps=2, extra=extra))
        first[name] = step_losses(tmp_path / name)[1]
    # an untrained model predicts near-uniformly, so the smoothed term is close to the plain
    # cross-entropy; the same run without smoothing logs the same loss to ~1e-7
    assert abs(first["smoothed"] - first["plain"]) > 1e-3
    assert first["smoothed_lean"] == pytest.approx(first["smoothed"], rel=1e-5)
