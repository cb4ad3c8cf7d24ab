"""train/memory_gib: the most GPU memory any rank's tensors held in a logging interval. This
machine has no GPU, so the CUDA counters are stood in for here (their values are the only thing
faked); benchmarks/gpu_all.sh checks the real ones on a lent GPU."""

from __future__ import annotations

import torch

from seq2seq_es.engine import trainer


def test_no_gpu_no_memory_record():
    assert trainer.peak_memory_gib(torch.device("cpu")) is None


def test_the_interval_peak_in_gib_and_the_counter_starts_again(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                        lambda device: calls.append(("reset", device)))
    reduced = []

    def all_reduce_max(value, device):  # one process: the maximum over ranks is its own value
        reduced.append(value)
        return value

    monkeypatch.setattr(trainer.D, "all_reduce_max", all_reduce_max)
    device = torch.device("cuda", 0)
    assert trainer.peak_memory_gib(device) == 3.0
    assert reduced == [3.0] and calls == [("reset", device)]
