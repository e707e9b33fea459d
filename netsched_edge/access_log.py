"""The edge's logs: one access line per request, and the process's log setup.

Access lines (nginx's `access_log`, Envoy's access logs) go to the logger
`netsched.edge.access` at INFO, one per request stream whatever its end:

    service=api backend=api-a status=200 bytes_in=5 bytes_out=120 latency_ms=3.2
    deadline_ms=200 deadline=met paths=2 protocol=netsched/1 stream=4 end=complete

`deadline` is met when the whole response was handed to QUIC within the
request's deadline with a status other than 504, missed otherwise, none without
a deadline. `end` says how the stream ended: complete, reset (by the edge: the
response broke after its head, or the client acknowledged nothing for
send_timeout_s), cancelled (the client reset the stream or the connection
ended), refused (after a drain's GOAWAY, unprocessed), shed (503 over the memory
budget), rejected (a head the edge could not take: 400/422). Values a client
chose (the service name) are quoted when they hold spaces or control
characters, so a line is always one line.

`configure_logging` sets up the process: `text` lines
(`time LEVEL logger: message`) or `json` (one object per line: time, level,
logger, message, and an access line's fields as keys). aioquic's own loggers
(`quic`, `http3`: every frame at DEBUG) stay at WARNING unless the level is
`debug-quic`.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Final, TextIO

ACCESS_LOGGER: Final = "netsched.edge.access"
LOG_LEVELS: Final = ("debug-quic", "debug", "info", "warning", "error")
LOG_FORMATS: Final = ("text", "json")
# What `netsched-edge serve` takes when --log-level / --log-format are not given; the
# CLI sets them for its workers, which set up their logging from them.
LEVEL_VARIABLE: Final = "NETSCHED_EDGE_LOG_LEVEL"
FORMAT_VARIABLE: Final = "NETSCHED_EDGE_LOG_FORMAT"
DEFAULT_LEVEL: Final = "info"
DEFAULT_FORMAT: Final = "text"
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_AIOQUIC_LOGGERS: Final = ("quic", "http3")

_access = logging.getLogger(ACCESS_LOGGER)


@dataclass(frozen=True, slots=True)
class Access:
    """One request as the access log tells it (_ORDER is the order of the line); the
    defaults are those of a request refused before it was served."""

    service: str
    status: int  # the response status sent; 0 when the stream ended before any
    paths: int  # the connection's usable paths when the request ended
    protocol: str  # the connection's ALPN
    stream: int
    end: str  # complete, reset, cancelled, refused, shed, rejected (see the module)
    backend: str | None = None  # None: no backend answered (an edge decision or failure)
    bytes_in: int = 0  # request body bytes received
    bytes_out: int = 0  # response body bytes handed to QUIC
    latency_ms: float = 0.0  # from the request head to the response's end (or the stream's)
    deadline_ms: int | None = None

    @property
    def deadline(self) -> str:
        if self.deadline_ms is None:
            return "none"
        in_time = self.latency_ms <= self.deadline_ms
        return "met" if in_time and self.end == "complete" and self.status != 504 else "missed"

    def fields(self) -> dict[str, object]:
        values = asdict(self) | {"latency_ms": round(self.latency_ms, 3), "deadline": self.deadline}
        return {key: values[key] for key in _ORDER}

    def text(self) -> str:
        return " ".join(f"{key}={_shown(value)}" for key, value in self.fields().items())


_ORDER: Final = (
    "service",
    "backend",
    "status",
    "bytes_in",
    "bytes_out",
    "latency_ms",
    "deadline_ms",
    "deadline",
    "paths",
    "protocol",
    "stream",
    "end",
)


def log_access(access: Access) -> None:
    if _access.isEnabledFor(logging.INFO):
        _access.info("%s", access.text(), extra={"access": access})


def _shown(value: object) -> str:
    if value is None:
        return "-"
    text = str(value)
    if not text or any(not c.isprintable() or c.isspace() or c in '"=' for c in text):
        return json.dumps(text)  # quoted and escaped: still one line, still one field
    return text


class JsonFormatter(logging.Formatter):
    """Every record as one JSON object on one line; an access line's fields as keys."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        out: dict[str, object] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        access = getattr(record, "access", None)
        if isinstance(access, Access):
            out["message"] = "access"
            out.update(access.fields())
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(
    level: str = DEFAULT_LEVEL, log_format: str = DEFAULT_FORMAT, stream: TextIO | None = None
) -> None:
    """Log to `stream` (stderr) at `level` (LOG_LEVELS) in `log_format` (LOG_FORMATS)."""
    if level not in LOG_LEVELS or log_format not in LOG_FORMATS:
        raise ValueError(f"log level {level!r} / format {log_format!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if level.startswith("debug") else level.upper())
    for name in _AIOQUIC_LOGGERS:
        logging.getLogger(name).setLevel(
            logging.DEBUG if level == "debug-quic" else logging.WARNING
        )


def logging_from_environment(environ: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """(level, format) from NETSCHED_EDGE_LOG_LEVEL / _FORMAT; the defaults for what is
    unset or not one of the choices."""
    level = environ.get(LEVEL_VARIABLE, DEFAULT_LEVEL)
    log_format = environ.get(FORMAT_VARIABLE, DEFAULT_FORMAT)
    return (
        level if level in LOG_LEVELS else DEFAULT_LEVEL,
        log_format if log_format in LOG_FORMATS else DEFAULT_FORMAT,
    )
