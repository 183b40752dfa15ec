"""Logging: structlog, JSON lines in the cluster, readable lines on a terminal.

Cloud Logging parses JSON lines from stdout and reads `severity`, so the
cluster format carries it; a TTY gets colourless key=value console output.
Progress bars (tqdm) show only on a TTY, so pod logs stay clean.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog

_configured = False


def _severity(_, method_name: str, event_dict: dict) -> dict:
    event_dict["severity"] = {"warn": "WARNING", "exception": "ERROR"}.get(method_name, method_name.upper())
    return event_dict


class _CurrentStderr:
    """Whatever sys.stderr is when a line is written, not when logging was configured: a stream
    swapped out and closed later (a test's capture, a redirect) must not break every later log line."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(json_lines: bool | None = None, level: str | None = None) -> None:
    """Set up structlog once; `json_lines` None means: JSON unless stderr is a TTY."""
    global _configured
    if json_lines is None:
        json_lines = os.environ.get("SHOWWORK_LOG_FORMAT", "") == "json" or not sys.stderr.isatty()
    level_name = (level or os.environ.get("SHOWWORK_LOG_LEVEL", "INFO")).upper()
    processors = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json_lines:
        processors += [_severity, structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=False)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level_name, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),
        cache_logger_on_first_use=False,
    )
    # absl/jax chatter goes through the stdlib logger; keep it at warnings.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    _configured = True


def get(name: str = "showwork", **context):
    if not _configured:
        configure()
    return structlog.get_logger(name).bind(**context)


def progress(iterable=None, *, total: int | None = None, desc: str = ""):
    """A progress bar on a terminal, a silent passthrough elsewhere."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not sys.stderr.isatty(), leave=False, dynamic_ncols=True)
