"""The harness's one logger: progress lines on stderr, so that stdout stays free for results.

    from esolm.log import log, printer
    log("cached shakespeare at ...", prefix="esolm.data")   # "[esolm.data] cached shakespeare at ..."
    say = printer("score")                                  # a print-like function for ``log=`` hooks
    say("scoring 8 samples")                                # "[score] scoring 8 samples"

Every line goes through the stdlib logger ``esolm.progress`` (child ``esolm.progress.<prefix>``
per prefix), written to whatever ``sys.stderr`` is at that moment (so pytest's capture and
``contextlib.redirect_stderr`` see it) and flushed at once. Silence it with
``logging.getLogger("esolm.progress").setLevel(logging.WARNING)``.
"""
from __future__ import annotations

import logging
import sys
from typing import Callable

ROOT = "esolm.progress"


class _CurrentStderr(logging.Handler):
    """Writes each record to the current ``sys.stderr`` (looked up per line) and flushes."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)


class _Prefixed(logging.Formatter):
    """``[prefix] message``, the prefix being the logger's name below ``ROOT`` (none: the message alone)."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = record.name[len(ROOT) + 1:] if record.name.startswith(ROOT + ".") else ""
        message = record.getMessage()
        return f"[{prefix}] {message}" if prefix else message


def _root() -> logging.Logger:
    root = logging.getLogger(ROOT)
    if not any(isinstance(h, _CurrentStderr) for h in root.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(_Prefixed())
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False  # an application's root handlers do not print each line twice
    return root


def get_logger(prefix: str | None = None) -> logging.Logger:
    """The logger whose lines read ``[prefix] message`` (``prefix`` None: ``message`` alone)."""
    root = _root()
    return root.getChild(prefix) if prefix else root


def log(*parts, prefix: str | None = None) -> None:
    """One progress line: ``parts`` joined by spaces as ``print`` joins them."""
    get_logger(prefix).info("%s", " ".join(str(p) for p in parts))


def printer(prefix: str | None = None) -> Callable[..., None]:
    """A print-like function writing through :func:`log` with ``prefix``."""

    def say(*parts) -> None:
        log(*parts, prefix=prefix)

    return say
