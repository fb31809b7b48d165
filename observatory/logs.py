"""Structured logs: one JSON object per line in $PANDIR/logs/unit.jsonl.

Each actor process configures structlog for itself after it starts (loggers
made before the fork would skip Thespian's forwarding), binding its own name.
Every process appends whole lines with O_APPEND, so lines never interleave.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import structlog


class _LineAppender:
    """A structlog logger that writes each rendered event as one os.write()."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.dropped = 0

    def msg(self, message: str) -> None:
        # A log line must never stop the work it describes: on a full disk (or
        # any write error) the line is counted as dropped, and the next line
        # that can be written says how many were lost.
        try:
            if self.dropped:
                os.write(self._fd, (json.dumps({"event": "log_lines_dropped", "count": self.dropped,
                                                "level": "error"}) + "\n").encode())
                self.dropped = 0
            os.write(self._fd, (message + "\n").encode())
        except OSError:
            self.dropped += 1

    log = debug = info = warning = warn = error = critical = exception = msg


def configure(pandir: str | Path, actor: str) -> structlog.typing.FilteringBoundLogger:
    appender = _LineAppender(Path(pandir) / "logs" / "unit.jsonl")
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(default=str),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=lambda *args: appender,
        cache_logger_on_first_use=False,
    )
    return structlog.get_logger().bind(actor=actor, pid=os.getpid())


def thespian_log_defs(pandir: str | Path) -> dict:
    """Thespian's own logging (a dictConfig dict; False crashes multiproc bases)."""
    logdir = Path(pandir) / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    return {
        "version": 1,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(actorAddress)s %(message)s"}},
        "filters": {"isActorLog": {"()": _ActorLogFilter}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(logdir / "thespian.log"),
                              "formatter": "plain", "filters": ["isActorLog"], "level": logging.WARNING}},
        "root": {"handlers": ["file"], "level": logging.WARNING},
    }


class _ActorLogFilter(logging.Filter):
    def filter(self, record):
        if not hasattr(record, "actorAddress"):
            record.actorAddress = "-"
        return True
