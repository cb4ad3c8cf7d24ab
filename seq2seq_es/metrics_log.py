"""metrics.jsonl, the training's metrics log, and `read`, the one reader of it.

A run folder's ``metrics.jsonl`` holds one JSON object per line, written by rank 0 (`RunLog`):

- ``step``: the number of optimizer steps done when the values were taken (an int; 0 for a
  validation before the first step, `train.eval_at_start`), and ``time`` (Unix seconds).
- training records, every `train.log_every` steps, the first and the last step:
  ``train/loss`` (the logging interval's loss per target token), ``train/lr`` (the learning
  rate of this step's own update, i.e. the schedule's value before the scheduler advanced),
  ``train/tokens_per_s`` (non-pad source and target tokens of all ranks per second of this
  process, over the interval), ``train/epoch`` (epochs done, a fraction: 1.0 at the end of the
  first), ``train/padded_fraction``,
  ``train/skipped_micro_batches`` (over the interval), ``train/grad_norm`` and
  ``train/grad_norm_max`` (the mean and
  the largest L2 norm of the whole gradient before clipping over the interval's optimizer steps,
  leaving out fp16 overflow steps and on_nan=skip steps that skipped every micro-batch; absent
  when that leaves none), under fp16 ``train/loss_scale`` (the last step's) and
  ``train/overflow_skipped`` (steps skipped over the interval), and
  on GPUs ``train/memory_gib`` (the most memory any rank's tensors held during the interval);
- validation records: ``eval/loss`` and ``eval/<metric>`` for each metric of the task;
- test records: ``test/loss`` and ``test/<metric>``, once, at the step of the best checkpoint.

A step can appear on several lines, so **a reader must keep the last record per step**:

- the training and the validation values of one step are two records (two lines);
- a run resumed from a checkpoint older than its last logged step logs the steps after that
  checkpoint again (the file is appended to, never rewritten), and the later lines are the ones
  that lead to the run's weights;
- a run killed while writing leaves a half-written last line.

A resumed run first writes ``{"step": N, "resumed": true, "time": ...}``, N its checkpoint's
step: every record before it of a step after N belongs to the abandoned segment (the killed process logged past
its last checkpoint; a resume may log at another cadence and never log that step again), and
is dropped. A half-written last line is cut off before the resumed run appends.

`read` does all of this: records of one step are merged into one, at the place of the step's
first line, keeping the last value of every key; a resume marker drops the abandoned segment's
later steps (the marker itself is not returned); a broken last line is skipped (the run may be
writing it) and a broken line elsewhere is an error naming the file and line. Everything that
reads metrics.jsonl (`slurm status`/`collect`, the demo, the tests) goes through it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import run_files
from .errors import DataError


def read(path: str | Path, merge_steps: bool = True) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (a file, or a run folder holding one), in file order;
    [] when there is no file.

    With `merge_steps` (the default) each step gives one record, at the place of its first line,
    holding the last value of every key over the step's lines (see the module docstring for why
    a step is logged more than once), and a resume marker drops the records of later steps
    written before it (and is not returned itself). `merge_steps=False` gives the lines as they
    are. A record without an int ``step`` is kept as it is. A broken line in the middle raises
    DataError (file and line); a broken last line is skipped.
    """
    path = Path(path)
    if path.is_dir():
        path = path / run_files.METRICS
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records: list[dict[str, Any]] = []
    by_step: dict[int, dict[str, Any]] = {}
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if line_number == len(lines):
                break  # the run is writing it, or was killed while writing it
            raise DataError(f"not valid JSON ({exc.msg})", file=str(path),
                            line=line_number) from None
        if not isinstance(record, dict):
            raise DataError("expected a JSON object", file=str(path), line=line_number)
        step = record.get("step")
        if merge_steps and record.get(RESUMED) is True and _is_step(step):
            records = [kept for kept in records
                       if not (_is_step(kept.get("step")) and kept["step"] > step)]
            for dropped in [known for known in by_step if known > step]:
                del by_step[dropped]
            continue
        if merge_steps and _is_step(step):
            if step in by_step:
                by_step[step].update(record)
                continue
            by_step[step] = record
        records.append(record)
    return records


# The key that marks a resumed run's first line, whose step is the checkpoint's.
RESUMED = "resumed"


def _is_step(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def resume_marker(step: int, time: float) -> dict[str, Any]:
    """The line a resumed run writes before its first record (see the module docstring)."""
    return {"step": step, RESUMED: True, "time": round(time, 3)}


def cut_partial_line(path: Path) -> None:
    """End the file at its last newline: a process killed while writing left a part of a line,
    which the next appended record would glue onto (one broken line in the middle, which makes
    the whole file unreadable)."""
    if not path.is_file():
        return
    with open(path, "rb+") as file:
        end = file.seek(0, 2)
        if end == 0:
            return
        file.seek(end - 1)
        if file.read(1) == b"\n":
            return
        position = end  # back, a block at a time, to the last newline (a long run's file)
        while position > 0:
            start = max(0, position - 65536)
            file.seek(start)
            block = file.read(position - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                file.truncate(start + newline + 1)
                return
            position = start
        file.truncate(0)  # no whole line at all


def by_step(path: str | Path, key: str) -> dict[int, dict[str, Any]]:
    """{step: merged record} for the steps whose record has `key` (e.g. "eval/loss" for the
    validations, "test/loss" for the test scoring, "train/loss" for the logged steps)."""
    # Not a bool step: True == 1 as a key, and its record would replace step 1's
    return {record["step"]: record for record in read(path)
            if key in record and _is_step(record.get("step"))}
