"""On a CUDA device (benchmarks/gpu_all.sh, section 4): a training run logs the interval's peak
GPU memory and gradient norm, and train.deterministic repeats a run bit for bit."""

from __future__ import annotations

import json

import pytest
import torch

from engine_runs import base_args, demo_files, run, step_losses

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _train_records(out):
    return [record for record in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if "train/loss" in record]


def test_a_gpu_run_logs_its_memory_and_gradient_norm(tmp_path):
    files = demo_files(tmp_path / "data", train_size=16)
    out = tmp_path / "run"
    run("none", 1, base_args(files, out, steps=3, extra=["--train.precision", "bf16"]))
    records = _train_records(out)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(0 < r["train/memory_gib"] < 80 for r in records)
    assert all(r["train/grad_norm"] > 0 for r in records)


def test_deterministic_gpu_runs_repeat_bit_for_bit(tmp_path):
    files = demo_files(tmp_path / "data", train_size=16)
    first, second = tmp_path / "first", tmp_path / "second"
    for out in (first, second):
        run("none", 1, base_args(files, out, steps=4, extra=["--train.deterministic", "true"]))
    assert step_losses(first) == step_losses(second)
