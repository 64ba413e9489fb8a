"""One line of an exception's text, for a log line or a one-line error message.

Library errors often carry many lines (a server reply, a worker's whole traceback): a log line or
a CLI error shows one of them, and the same rule everywhere.
"""

from __future__ import annotations

import re

# The line of a Python traceback that names the exception: `storytune.train.data.DataError: only 40 stories ...`
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit|Refused)\b.*")


def first_line(err: BaseException) -> str:
    """The first line of `err`'s message (where libraries put the summary), or its type name when
    the message is empty."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def last_line(err: BaseException) -> str:
    """The line of `err`'s message that names the underlying exception: a failed submitit job's
    error carries the worker's traceback followed by the paths of its logs, so the last line that
    looks like `SomeError: message` is the one to show; else the last line, or the type name."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    named = [line for line in lines if _EXCEPTION_LINE.match(line)]
    return (named or lines or [type(err).__name__])[-1]


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be found; the message says what to do.

    Lives here (the facts layer) so that both `storytune.train.model` and the pretrained presets
    (`storytune.train.pretrained`, which model.py builds on) can raise it without an import cycle;
    `storytune.train.model.ModelLoadError` is the same class.
    """
