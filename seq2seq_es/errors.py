"""Errors that reach the user as one clear message instead of a library traceback."""

import difflib
import errno
import json
import os
import sys
import textwrap
import time
import traceback
from typing import Callable


class Seq2SeqEsError(Exception):
    """Base class: the CLI prints these as `error: <message>` and exits with status 2."""


class ConfigError(Seq2SeqEsError):
    """A configuration value that cannot work. The message names the dotted key, or the command
    line argument (`--flag`, or a positional one such as SWEEP) as argparse names it."""

    def __init__(self, key: str, message: str):
        self.key, self.reason = key, message
        argument = key.startswith("-") or key.isupper()
        super().__init__(f"argument {key}: {message}" if argument
                         else f"config key '{key}': {message}")


class DataError(Seq2SeqEsError):
    """Bad input data. The message names the file, and the line (1-based, as an editor shows
    it), row (0-based data row, where no line is known) and column when known."""

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None,
                 column: str | None = None, line: int | None = None):
        self.file, self.row, self.column, self.line = file, row, column, line
        where = []
        if file is not None:
            where.append(f"file {file}")
        if line is not None:  # 1-based, as an editor shows it
            where.append(f"line {line}")
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column '{column}'")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + message)


def close_matches(name: str, known, n: int = 3) -> list[str]:
    """The known names closest to `name` (difflib, case-insensitive), best first; [] if none."""
    by_lower: dict[str, str] = {}
    for candidate in known:
        by_lower.setdefault(str(candidate).lower(), str(candidate))
    found = difflib.get_close_matches(str(name).lower(), list(by_lower), n=n, cutoff=0.6)
    return [by_lower[match] for match in found]


def json_problem(error: json.JSONDecodeError) -> str:
    """json's message with its column: "Unterminated string starting at column 10". Some of
    its messages end in " at" for the position that follows ("... starting at at column 10"
    when a column was appended to them)."""
    return f"{error.msg.removesuffix(' at')} at column {error.colno}"


def did_you_mean(name: str, known, quote: str = "'") -> str:
    """"did you mean 'mlsum'? " (or "'a' or 'b'"), or "" when nothing is close."""
    matches = [f"{quote}{match}{quote}" for match in close_matches(name, known)]
    return f"did you mean {' or '.join(matches)}? " if matches else ""


def comma_names(key: str, text: str) -> list[str]:
    """A comma-separated list's names, stripped. An empty name between names (`rouge,,bleu`, a
    trailing comma) is refused by `key`: a name was lost in typing, and reading it as nothing
    would run without it. A text of commas alone is left to the caller (no names)."""
    items = [item.strip() for item in text.split(",")]
    names = [item for item in items if item]
    if names and len(names) != len(items):
        raise ConfigError(key, f"has an empty name between commas ({text!r}); did you mean "
                          f"'{','.join(names)}'?")
    return names


class UnknownNameError(Seq2SeqEsError):
    """An unknown registry name (model, task, metric); suggests close ones and lists the known
    ones: `unknown task 'mlsun'; did you mean 'mlsum'? known tasks: ...`."""

    def __init__(self, kind: str, name: str, known, hint: str = ""):
        self.kind, self.name = kind, name
        known = [str(k) for k in known]
        self.suggestions = close_matches(name, known)
        super().__init__(f"unknown {kind} '{name}'; {did_you_mean(name, known)}"
                         f"known {kind}s: {', '.join(sorted(known))}"
                         + (f"; {hint}" if hint else ""))


def cache_folder_error(exc: OSError, doing: str, cache_dir: str | None) -> ConfigError:
    """A cache folder that could not be used (a file, read-only, full) while `doing` (reading
    a data file, tokenizing a split): data.cache_dir's fault, not the data's. A compute node's
    read-only or full home (~/.cache) is the usual cause on a cluster."""
    where = ("could not be used" if cache_dir else
             "is not set, and the default cache folders (HF_DATASETS_CACHE, SEQ2SEQ_ES_CACHE, "
             "by default under ~/.cache) could not be used")
    return ConfigError("data.cache_dir",
                       f"{where} while {doing}: {exc}; the data file is not at fault: point "
                       "data.cache_dir to a writable folder with free space")


# errno values of a write that cannot succeed here: no space, a quota, a read-only file system
_CANNOT_WRITE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def run_command(command: Callable[[list[str]], int], argv: list[str]) -> int:
    """Run a CLI command; a Seq2SeqEsError becomes `error: <message>` on stderr and status 2
    (SEQ2SEQ_ES_DEBUG=1 shows the traceback instead)."""
    try:
        return command(argv)
    except Seq2SeqEsError as exc:
        if os.environ.get("SEQ2SEQ_ES_DEBUG"):
            raise
        if getattr(exc, "said_elsewhere", False):
            # Another rank's error, which that rank prints (rank 0's refusal, a node's first
            # rank's failure, the rank of a non-finite batch): here only torchrun's file gets it
            tell_launcher(f"error: {exc}")
        elif _said_by_this_nodes_first_process():
            tell_launcher(f"error: {exc}")
            # Leaving at once, this process could end first: torchrun (or srun's
            # --kill-on-bad-exit) then killed the node's first process before it said the error
            time.sleep(NODE_FIRST_GRACE_S)
        else:
            _say(f"error: {exc}")
        return 2
    except OSError as exc:
        # A full disk, a quota or a read-only file system where a command writes and no
        # StorageError names it: one line, not the traceback of the library that wrote.
        if exc.errno not in _CANNOT_WRITE or os.environ.get("SEQ2SEQ_ES_DEBUG"):
            raise
        where = f"{os.fsdecode(exc.filename)}: " if exc.filename else ""
        message = (f"error: {where}{os.strerror(exc.errno)} (a file could not be written; "
                   "SEQ2SEQ_ES_DEBUG=1 shows which)")
        _say(message)
        return 2


# How long a process that leaves an error to its node's first process waits before it ends.
NODE_FIRST_GRACE_S = 2.0


def _said_by_this_nodes_first_process() -> bool:
    """Whether this process leaves an error to its node's first process: before a process group
    starts (a config mistake, a launcher's missing variable), every process of a node meets the
    same error from the same command line, files and environment, and each printed it (two
    lines under `torchrun --nproc_per_node 2`, eight on a node of eight GPUs). Each node's first
    process still says it, so that every node's log (a SLURM task's file) has it. After the
    process group starts an error is this rank's own, or marked `said_elsewhere`."""
    from .launch_env import launched_ranks
    from .process_exit import must_leave_without_teardown

    return not must_leave_without_teardown() and launched_ranks()[1] > 0


def _say(message: str) -> None:
    """One error line on stderr and in torchrun's error file."""
    write_line(message)
    tell_launcher(message)


def write_line(text: str) -> None:
    """`text` and its newline on stderr in one write. print() writes them apart, which an
    unbuffered stderr (PYTHONUNBUFFERED, as launchers and SLURM scripts often set) sends as two
    writes: two ranks saying a line together on one pipe interleaved as `error: A error: A` and
    then two bare newlines (clean-clone CI)."""
    stream = sys.stderr
    if stream is None:  # a process started without stderr (print() is silent there too)
        return
    stream.write(text + "\n")
    stream.flush()


# What a rank's collective raises when another rank has gone (gloo's TCP pairs, the rendezvous
# store, NCCL), and when one stopped answering; lower case. Only in an error of the
# communication libraries (`_from_communication`): a tracker's "connection reset by peer" is
# its own error, and was said as another rank's.
_LOST_PEER = ("connection closed by peer", "connection reset by peer", "broken pipe",
              "remote process exited or there was a network error",
              "nccl communicator was aborted", "failed to recv, got 0 bytes")
_PEER_TIMEOUT = ("timed out waiting", "operation timed out", "watchdog caught collective")
_COMMUNICATION = ("gloo", "nccl", "processgroup", "disterror", "distnetworkerror",
                  "distbackenderror", "diststoreerror")
_COMMUNICATION_CODE = ("/torch/distributed/", "/deepspeed/comm/")


def _from_communication(error: BaseException | str) -> bool:
    """Whether the error is torch.distributed's (or DeepSpeed's comm layer's): by its type, the
    innermost frame that raised it, or gloo's and NCCL's names in its text (the only evidence
    in a text, e.g. the last line of a pickled traceback)."""
    if any(mark in str(error).lower() for mark in _COMMUNICATION):
        return True
    if isinstance(error, str):
        return False
    if type(error).__module__.startswith("torch.distributed"):
        return True
    frames = traceback.extract_tb(error.__traceback__) if error.__traceback__ else []
    return bool(frames) and any(code in frames[-1].filename.replace("\\", "/")
                                for code in _COMMUNICATION_CODE)


def _first_line(error: BaseException | str) -> str:
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    first = first.removeprefix("RuntimeError: ")
    # gloo starts with its source file's path; its advice runs on: cut at a word, and say so
    # (a long unbroken path would leave nothing but the placeholder: cut it where it is)
    text = first.split("] ", 1)[-1]
    short = textwrap.shorten(text, 160, placeholder=" ...")
    return short if len(short) > 80 or len(text) <= 160 else text[:157] + "..."


def lost_contact(error: BaseException | str) -> str | None:
    """The one line a rank says when its collective failed because another rank ended, or None
    for any other error (an exception, or its text). That rank's own error is the cause: each
    surviving rank's 30-line traceback of a closed socket buried it (N - 1 of them on N ranks),
    and torchrun named one of them as the root cause."""
    lowered = str(error).lower()
    if not any(sign in lowered for sign in _LOST_PEER) or not _from_communication(error):
        return None
    return (f"error: lost contact with another rank ({_first_line(error)}); that rank ended "
            "first, and its own error, in its output or log, is the cause")


def waited_too_long(error: BaseException | str) -> str | None:
    """The line a rank says when its collective timed out (dist.timeout_min): another rank
    stopped answering, or the ranks wait in different collectives; None for any other error.
    The traceback follows it: where this rank waited is the clue."""
    lowered = str(error).lower()
    if not any(sign in lowered for sign in _PEER_TIMEOUT) or \
            not ("recv" in lowered or "collective" in lowered) or not _from_communication(error):
        return None
    return (f"error: another rank did not answer within dist.timeout_min ({_first_line(error)}): "
            "it stopped, hangs, is far slower, or waits in another collective (this rank's "
            "traceback below says where it waited)")


def tell_launcher(message: str, callstack: str | None = None, after_others: bool = False) -> None:
    """Leave `message` where torchrun looks for a failed rank's error (also `accelerate launch`
    and its torchrun-based launchers): the file TORCHELASTIC_ERROR_FILE names, in the layout of
    torch.distributed.elastic's own ErrorHandler. Its closing summary then shows our one line
    (or `callstack`, a crash's traceback) under the failed rank's `traceback :` where it said
    "To enable traceback see ...": on a cluster that summary is the end of the log, the part
    read first, and each rank's `error:` line sits somewhere above it. Best effort, no torch
    import: `score` does not load torch.

    `after_others`: a consequence of another rank's failure (`lost_contact`), stamped a second
    later. torchrun names the failure of the earliest stamp the root cause, by whole seconds
    and the lowest rank on a tie: the rank that lost contact in the same second as the failing
    rank reported was named instead of it."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    record = {"message": {"message": message,
                          "extraInfo": {"py_callstack": callstack or message,
                                        "timestamp": str(int(time.time()) + after_others)}}}
    # Whole or not at all: torchrun's agent json.loads the file, and a half-written one (a
    # full disk, the very error being told) ended its summary in a JSONDecodeError traceback.
    partial = f"{path}.{os.getpid()}.partial"
    try:
        with open(partial, "w", encoding="utf-8") as file:
            json.dump(record, file)
        os.replace(partial, path)
    except OSError:
        try:
            os.remove(partial)
        except OSError:
            pass  # never created
        # the launcher then says what it says without it
