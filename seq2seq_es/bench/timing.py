"""Step clocks and peak memory for the benchmark rows.

A step's time is the interval from the end of the previous step to the end of this one, so it
includes fetching and collating the batch, the way a training run pays for it (the first step
starts at its own begin mark). The compute part alone (begin to end) is kept beside it.

On a GPU the marks are CUDA events recorded on the stream, read once at the end: nothing
synchronises inside the timed steps, so the routes keep whatever overlap of CPU and GPU work they
have. On the CPU the marks are wall-clock readings.
"""

from __future__ import annotations

import gc
import resource
import sys
import time
from pathlib import Path

import torch


class StepClock:
    def __init__(self, device: torch.device):
        self.device = device
        self._begins: list = []
        self._ends: list = []

    def _mark(self):
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def begin(self) -> None:
        self._begins.append(self._mark())

    def end(self) -> None:
        self._ends.append(self._mark())

    @property
    def steps(self) -> int:
        return len(self._ends)

    def _seconds(self, start, stop) -> float:
        if self.device.type == "cuda":
            return start.elapsed_time(stop) / 1000.0
        return stop - start

    def intervals(self) -> tuple[list[float], list[float]]:
        """(step seconds end-to-end, compute seconds begin-to-end), one entry per ended step."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if len(self._begins) < len(self._ends):
            raise RuntimeError("a step ended without a begin mark")
        step_s, compute_s = [], []
        for k, stop in enumerate(self._ends):
            compute_s.append(self._seconds(self._begins[k], stop))
            step_s.append(self._seconds(self._ends[k - 1] if k else self._begins[0], stop))
        return step_s, compute_s


def free_memory(device: torch.device) -> None:
    """Drop what the previous row left behind and restart the peak counters."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        _reset_cpu_peak()


def _reset_cpu_peak() -> None:
    # Linux resets the peak resident size (VmHWM) when 5 is written to clear_refs.
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _cpu_peak_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    if sys.platform.startswith("linux"):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return None


def peak_memory_gib(device: torch.device) -> float | None:
    """GPU: torch.cuda.max_memory_allocated; CPU: peak resident size of the process (or None)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    peak = _cpu_peak_bytes()
    return None if peak is None else peak / 2 ** 30
