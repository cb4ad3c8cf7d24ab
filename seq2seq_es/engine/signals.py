"""Stop requests (Ctrl-C, SIGTERM, SLURM's pre-emption signal SIGUSR2) handled at step boundaries.

A signal only sets a flag; the loop all-reduces the flag at the next step boundary (signals do not
reach every rank at the same moment), and then every rank saves the same checkpoint together,
because DeepSpeed's save is collective.

Ctrl-C is also a person waiting at a terminal: a validation, the test scoring or the export can run
for minutes before the next boundary. So the first SIGINT says what will happen, and a second one
stops at once, without a checkpoint (`InterruptedNow`, a KeyboardInterrupt: library code that
catches Exception does not swallow it). SIGTERM and SIGUSR2 never escalate: SLURM and launchers send
them again on their own, and a second one must not lose the save the first one asked for.
"""

from __future__ import annotations

import os
import signal
import sys

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)

FIRST_SIGINT = ("\nCtrl-C: the run stops at the end of this step (or of the evaluation "
                "under way) and saves a checkpoint; Ctrl-C again stops at once, without saving\n")
# After the last step's save, while the run scores the test split and exports (Trainer.finish).
FIRST_SIGINT_FINISHING = ("\nCtrl-C: the run is finishing (test scoring, export) and its last "
                          "step is saved; it ends when that is done. Ctrl-C again stops at "
                          "once; --train.resume auto then finishes it\n")


class InterruptedNow(KeyboardInterrupt):
    """A second Ctrl-C: the run stopped where it was, with nothing saved since the last checkpoint.
    `reports`: this rank says so (every rank of a terminal's run gets the Ctrl-C)."""

    def __init__(self, reports: bool = True):
        super().__init__()
        self.reports = reports

    def __str__(self) -> str:
        return ("interrupted by a second Ctrl-C: stopped at once, nothing saved since the last "
                "complete checkpoint; --train.resume auto continues from it (a run with none "
                "starts again)")


class StopRequest:
    """The stop flag (`signum`, 0 when none) while installed; `announce`: this process tells the
    terminal about the first Ctrl-C (rank 0 only, so that it is said once)."""

    def __init__(self, announce: bool = True):
        self.signum = 0
        self.announce = announce
        self.finishing = False  # set by the trainer once the last step is saved
        self.interrupts = 0
        self._previous = {}

    def install(self) -> "StopRequest":
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:
                raise InterruptedNow(self.announce)
            if self.announce:
                # os.write, not print: a handler can run inside a print to the same stream, and
                # a buffered stream refuses that reentrant call.
                try:
                    message = FIRST_SIGINT_FINISHING if self.finishing else FIRST_SIGINT
                    os.write(sys.stderr.fileno(), message.encode())
                except (OSError, ValueError):
                    pass
        if not self.signum:  # the first signal names the stop (a later SIGTERM keeps SIGINT's)
            self.signum = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @staticmethod
    def name(signum: int) -> str:
        return signal.Signals(signum).name if signum else ""
