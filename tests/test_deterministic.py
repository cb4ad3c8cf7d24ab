"""train.deterministic: deterministic kernels only (torch.use_deterministic_algorithms, cuDNN
without timing-based choices, a fixed cuBLAS workspace), as torchtitan's debug.deterministic;
an op without a deterministic implementation stops the run with an error naming the key."""

from __future__ import annotations

import os

import pytest
import torch

from engine_runs import base_args, demo_files, run, step_losses
from seq2seq_es.engine.trainer import (CUBLAS_WORKSPACE, deterministic_refusal,
                                       use_deterministic_kernels)


@pytest.fixture
def restored(monkeypatch):
    """Leave torch's global switches as they were for the other tests of this worker."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1:]


def test_the_switches_are_set(restored):
    use_deterministic_kernels()
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE


def test_an_op_without_a_deterministic_kernel_is_said_by_the_key(restored):
    use_deterministic_kernels()
    with pytest.raises(RuntimeError) as raised:  # one of torch's refusals on the CPU too
        torch.zeros(3).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))
    refusal = deterministic_refusal(raised.value)
    assert refusal is not None and refusal.key == "train.deterministic"
    assert str(refusal).startswith("config key 'train.deterministic': put_ does not have a "
                                   "deterministic implementation, so this run cannot be "
                                   "deterministic on this device; set train.deterministic false")
    assert deterministic_refusal(RuntimeError("CUDA out of memory")) is None


@pytest.mark.slow
def test_a_deterministic_run_trains_as_the_default_one_on_the_cpu(tmp_path):
    files = demo_files(tmp_path / "data", train_size=8)
    plain, fixed = tmp_path / "plain", tmp_path / "fixed"
    run("none", 1, base_args(files, plain, steps=3))
    proc = run("none", 1, base_args(files, fixed, steps=3,
                                    extra=["--train.deterministic", "true"]))
    assert "train.deterministic: deterministic kernels only" in proc.stdout
    assert step_losses(fixed) == step_losses(plain)  # CPU kernels were deterministic already
