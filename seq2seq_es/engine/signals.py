"""Stop requests (Ctrl-C, SIGTERM, SLURM's pre-emption signal SIGUSR2) handled at step boundaries.

A signal only sets a flag; the loop all-reduces the flag at the next step boundary (signals do not
reach every rank at the same moment), and then every rank saves the same checkpoint together,
because DeepSpeed's save is collective.
"""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


class StopRequest:
    def __init__(self):
        self.signum = 0
        self._previous = {}

    def install(self) -> "StopRequest":
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @staticmethod
    def name(signum: int) -> str:
        return signal.Signals(signum).name if signum else ""
