"""Files of one item a line, as `predict` reads its input and `score` its files.

Only "\\n" ends a line. str.splitlines() also breaks at U+2028, U+0085, form feeds and the like,
which json.dumps(ensure_ascii=False) leaves raw inside a JSON string and which a document may
hold: it split one JSON row in two, and gave a text file more predictions than `score` counts.
"""

from __future__ import annotations


def split_lines(text: str) -> list[str]:
    """The lines of a file's text: a leading BOM, the "\\r" of Windows line ends and the empty
    line after a final newline are dropped; every other line is kept, empty ones included."""
    lines = text.removeprefix("\ufeff").split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def has_cr_line_ends(text: str) -> bool:
    """Whether the text's lines end in "\\r" alone (classic Mac line ends): no "\\n" anywhere,
    and a "\\r" before the last character. `predict` reads such a file line by line (Python's
    text mode turns each "\\r" into a line end); `score` read it as one line, one prediction,
    and the error was a count mismatch that said nothing of why."""
    return "\n" not in text and "\r" in text.rstrip("\r")
