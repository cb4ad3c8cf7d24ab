"""Whether progress can be redrawn (a terminal, a Jupyter cell) or goes to a log file, and the
libraries' own bars hidden in a log file."""

from __future__ import annotations

import sys


def quiet_library_progress() -> None:
    """Hide datasets', transformers' and the hub's own progress bars (generating, mapping,
    filtering, writing shards) where stderr is not a terminal: in a log file each is a run of
    carriage returns, and the run's own lines say what was loaded and saved."""
    if is_terminal(sys.stderr):
        return
    import datasets
    import huggingface_hub.utils
    import transformers.utils.logging

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()


def is_terminal(stream) -> bool:
    """A terminal, or a Jupyter kernel's output (which says it is no tty, yet redraws a bar in
    its cell: tqdm.auto draws a widget there)."""
    if type(stream).__module__.startswith("ipykernel"):
        return True
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced by an object without it, or closed
        return False
