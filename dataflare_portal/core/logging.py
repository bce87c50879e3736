"""Log filters and formatters: every line carries the request id, secrets are masked, JSON when LOG_FORMAT=json."""

import json
import logging
import re

from .requestctx import request_id_var

REDACTED = "[redacted]"

# Shapes of secrets that may slip into a message even if their values were never seen here.
_PATTERNS = [
    # key=value / "key": "value" pairs whose key names a secret
    re.compile(
        r"(?i)(?P<k>[\"']?(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key)"
        r"[\w-]*[\"']?\s*[:=]\s*)(?P<q>[\"']?)(?P<v>[^\s\"',;&}]+)"
    ),
    # Authorization headers
    re.compile(r"(?i)(?P<k>\b(?:bearer|token|basic)\s+)(?P<q>)(?P<v>[A-Za-z0-9._~+/=-]{8,})"),
    # credentials inside URLs: scheme://user:password@host
    re.compile(r"(?P<k>[a-z][a-z0-9+.-]*://[^\s:/@]+:)(?P<q>)(?P<v>[^\s@/]+)(?=@)"),
    # Fernet tokens (our ciphertexts) are not secrets, but never useful in a log either
    re.compile(r"(?P<k>)(?P<q>)(?P<v>\bgAAAAA[A-Za-z0-9_-]{40,}={0,2})"),
]


def redact(text: str) -> str:
    """Mask known secret values and secret-looking fragments in a text."""
    if not text:
        return text
    from .secrets import known_secret_values

    for value in sorted(known_secret_values(), key=len, reverse=True):
        if value in text:
            text = text.replace(value, REDACTED)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: f"{m.group('k')}{m.group('q')}{REDACTED}", text)
    return text


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # django.request logs 4xx/5xx after the middleware returned: take the id from the request then.
        request = getattr(record, "request", None)
        record.request_id = request_id_var.get() or getattr(request, "request_id", None) or "-"
        return True


class RedactSecretsFilter(logging.Filter):
    """Mask secrets in the message and the traceback before any handler formats the record."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep the raw template, still redacted
            message = str(record.msg)
        record.msg, record.args = redact(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id_var.get() or "-",
        }
        if record.exc_info or record.exc_text:
            payload["exc_info"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(payload, ensure_ascii=False, default=str)
