"""Log setup (NEUTRENO_LOG_FORMAT=text|json) and the per-request context every record carries.

`logging_config` is the one `logging.config.dictConfig` for uvicorn's and the service's loggers.
In json, every record is one JSON object on one line with `time`, `level`, `logger`, `message`
and, inside a request, `request_id` (the client's `X-Request-Id` when it is sane, else a new
one), `trace_id` (the W3C trace the request belongs to), `model`, and on the access record
`route`, `method`, `status`, `duration_ms` (plus `error_type`, `error` for error responses).
The request context lives in a `ContextVar`, so records logged anywhere during the request,
in its task or in threads it starts, carry it without being passed along.
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from service.settings import Settings

LogFormat = Literal["text", "json"]
ACCESS_LOGGER = "neutreno.access"
ACCESS = logging.getLogger(ACCESS_LOGGER)
REQUEST_ID_HEADER = "x-request-id"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
# Record attributes a JSON line carries when set (context ones come from ContextFilter).
FIELDS = (
    "request_id",
    "trace_id",
    "model",
    "route",
    "method",
    "status",
    "duration_ms",
    "error_type",
    "error",
)
_SANE_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
# Characters JSON leaves raw that break line-oriented log shippers (NEL, LINE and PARAGRAPH
# SEPARATOR end a line for some) or the UTF-8 stream itself (lone surrogates).
_UNSAFE_IN_LINE = re.compile(r"[\u0085\u2028\u2029\ud800-\udfff]")


@dataclass
class RequestContext:
    """What the records of one request share; routes and error handlers fill in the rest."""

    request_id: str
    trace_id: str | None = None
    model: str | None = None
    error_type: str | None = None
    error: str | None = None


CURRENT: ContextVar[RequestContext | None] = ContextVar("neutreno_request", default=None)


def request_id_from(header: bytes | None) -> str:
    """The client's X-Request-Id when it is 1-128 safe characters, else a fresh one."""
    value = header.decode("latin-1") if header else ""
    return value if _SANE_ID.fullmatch(value) else uuid.uuid4().hex


def trace_id_from(traceparent: bytes | None) -> str | None:
    """The trace id of a W3C `traceparent` header (None when absent or malformed)."""
    match = _TRACEPARENT.fullmatch(traceparent.decode("latin-1").strip()) if traceparent else None
    trace_id = match.group(1) if match else None
    return None if trace_id == "0" * 32 else trace_id


def note_model(name: str) -> None:
    """Record the model the current request is for (routes whose path does not name it)."""
    context = CURRENT.get()
    if context is not None:
        context.model = name


def note_error(type_: str, message: str) -> None:
    """Record the error the current request is answered with (its access record shows it)."""
    context = CURRENT.get()
    if context is not None:
        context.error_type, context.error = type_, message


class ContextFilter(logging.Filter):
    """Copies the request context onto every record (`-` for request_id outside requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = CURRENT.get()
        if context is not None:
            for name in ("request_id", "trace_id", "model"):
                if getattr(record, name, None) is None:
                    setattr(record, name, getattr(context, name))
        if getattr(record, "request_id", None) is None:
            record.request_id = "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": record.processName,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None and value != "-":
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _json_line(line)


def _json_line(fields: dict[str, Any]) -> str:
    """`fields` as one line of JSON, readable UTF-8, with every character that a line-oriented
    reader could take for a line end (or that UTF-8 cannot carry) written as a \\u escape, in
    whichever field it came."""
    text = json.dumps(fields, ensure_ascii=False, default=str)
    return _UNSAFE_IN_LINE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def access_ok_level(log_format: LogFormat) -> int:
    """Level of access records for successful requests: info in json, debug in text."""
    return logging.INFO if log_format == "json" else logging.DEBUG


def log_access(
    ok_level: int,
    context: RequestContext,
    method: str,
    target: str,
    route: str,
    status: int,
    seconds: float,
    model: str | None,
) -> None:
    """The one access record of a request, HTTP or gRPC: warning for 4xx, error for 5xx,
    `ok_level` for the rest. `target` (the client's path) is escaped and cut short."""
    level = logging.ERROR if status >= 500 else logging.WARNING if status >= 400 else ok_level
    if not ACCESS.isEnabledFor(level):
        return
    error = f": {escaped(context.error, 300)}" if context.error else ""
    ACCESS.log(
        level,
        "%s %s %d %.1f ms%s",
        method,
        escaped(target, 200),
        status,
        seconds * 1000,
        error,
        extra={
            "request_id": context.request_id,
            "trace_id": context.trace_id,
            "route": route,
            "method": method,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "model": model,
            "error_type": context.error_type,
            "error": context.error,
        },
    )


def escaped(text: str, limit: int) -> str:
    """Hostile values logged safely: non-ASCII and control characters escaped, cut short."""
    return ascii(text)[1:-1][:limit]


def logging_config(log_format: LogFormat, level: str) -> dict[str, Any]:
    """dictConfig for uvicorn (its `log_config`) and the `neutreno.*` loggers, to stderr."""
    formatter = {"()": JsonFormatter} if log_format == "json" else {"format": TEXT_FORMAT}
    handler = {
        "main": {
            "class": "logging.StreamHandler",
            "formatter": "main",
            "filters": ["context"],
            "stream": "ext://sys.stderr",
        }
    }
    own = {"handlers": ["main"], "level": level.upper(), "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {"main": formatter},
        "handlers": handler,
        "loggers": {"uvicorn": own, "uvicorn.access": own, "neutreno": own},
        "root": {"handlers": ["main"], "level": "WARNING"},
    }


def configure_logging(settings: Settings) -> None:
    """Apply `logging_config` in this process (supervisor, engine; uvicorn applies it in front
    ends through its `log_config`)."""
    logging.config.dictConfig(logging_config(settings.log_format, settings.log_level))
