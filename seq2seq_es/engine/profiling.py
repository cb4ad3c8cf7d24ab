"""train.profile_steps: a torch.profiler trace of chosen training steps, per rank.

Where a step's time goes (data movement, kernels, the optimizer, DeepSpeed's reductions) is what a
throughput question needs first; torchtitan and the Trainer's callbacks offer the same. The
profiler runs only around the chosen steps (never around validation or saving), and writes
for each rank a Chrome trace (chrome://tracing, Perfetto) and a table of the operators that
took the most time, so a cluster user without a trace viewer can read it in the log folder.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

import torch

TABLE_ROWS = 30
# libkineto's C++ start and stop lines ("USDT:2026-... SyncActivityProfilerHandler.cpp:52]
# profiler_start"), written to the process's stderr whatever KINETO_LOG_LEVEL says.
KINETO_LINE_PREFIX = b"USDT:"


@contextlib.contextmanager
def _kineto_lines_dropped():
    """File descriptor 2 into a temporary file while the profiler starts or stops; what was
    written there comes back to stderr, less libkineto's own lines. Python's sys.stderr is
    flushed first, so nothing of ours is reordered. A process without a stderr (`2>&-`) has
    nothing to keep clean: the block runs as it is."""
    try:
        if sys.stderr is None:
            raise OSError("no stderr")
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # closed: fd 2 or sys.stderr
        yield
        return
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [line for line in caught.read().splitlines(keepends=True)
                    if not line.startswith(KINETO_LINE_PREFIX)]
            if kept:
                os.write(2, b"".join(kept))


class StepProfiler:
    """Profiles training steps start..end (1-based) of this rank: `before(step)` and
    `after(step)` around each step of the loop, with the number the step will have."""

    def __init__(self, steps: tuple[int, int] | None, out: Path, rank: int,
                 device: torch.device, say):
        self.steps, self.out, self.rank, self.device, self.say = steps, out, rank, device, say
        self.profiler = None

    def before(self, step: int) -> None:
        if self.steps is None or step != self.steps[0]:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(activities=activities, record_shapes=True,
                                               profile_memory=True)
        with _kineto_lines_dropped():
            self.profiler.start()

    def after(self, step: int) -> None:
        if self.profiler is None or step != self.steps[1]:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the steps' kernels belong in the trace
        with _kineto_lines_dropped():
            self.profiler.stop()
        start, end = self.steps
        self.out.mkdir(parents=True, exist_ok=True)
        name = f"rank{self.rank}_steps{start}-{end}"
        trace = self.out / f"{name}.json"
        self.profiler.export_chrome_trace(str(trace))
        sort = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        table = self.profiler.key_averages().table(sort_by=sort, row_limit=TABLE_ROWS)
        (self.out / f"{name}.txt").write_text(table + "\n", encoding="utf-8")
        self.profiler = None
        self.say(f"profiled steps {start}-{end}: {trace} (chrome://tracing or ui.perfetto.dev) "
                 f"and {self.out / f'{name}.txt'}")

    def close(self) -> None:
        """A run that ends inside the range (a stop signal, the last step) drops the trace."""
        if self.profiler is not None:
            with _kineto_lines_dropped():
                self.profiler.stop()
            self.profiler = None
