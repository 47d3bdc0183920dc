"""The one form of every error `serve` answers: JSON `{"error": "..."}`, whoever answers (the /invocations
callable, Flask's error handlers, gunicorn's own answers to requests it cannot parse)."""

from __future__ import annotations

from http import HTTPStatus

import orjson

from .mediatypes import JSON

Headers = list[tuple[str, str]]


def render(status: int, message: str, headers: Headers | None = None, reason: str | None = None
           ) -> tuple[str, Headers, bytes]:
    """The status line (`404 Not Found`), headers and body of an error answer; `reason` replaces the
    standard phrase (gunicorn gives its own)."""
    body = orjson.dumps({"error": message})
    phrase = reason or HTTPStatus(status).phrase
    return (f"{status} {phrase}",
            [("Content-Type", JSON), ("Content-Length", str(len(body))), *(headers or [])],
            body)


def internal_error(e: BaseException) -> str:
    """What a client is told about a server fault: its kind, never the traceback (that goes to the log)."""
    return f"internal error ({type(e).__name__}); the server log has the traceback"
