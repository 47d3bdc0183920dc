"""What POST /invocations calls: a `Handler`, built once per worker by a `Load` off the request thread.

The built-in digit model (digits.py) is one implementation; a user's inference module is another. The app
(app.py) knows only this interface: it reads the body, hands it over, and sends back what it gets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from ..errors import ReasonError
from .settings import DEFAULT_INVOCATIONS_ACCEPT


class Handler(Protocol):
    def invoke(self, body: bytes, content_type: str | None, accept: str | None,
               headers: Mapping[str, str] | None = None) -> tuple[bytes, str]:
        """(response body, response Content-Type) for a request body, its Content-Type and Accept headers;
        `headers` are all of the request's (a user's handler reads them through `context`).

        An `http_errors.HttpError` (a client mistake, or a failure in the user's code) is answered with its
        status and message; any other exception is a 500 with the exception's type as the JSON reason, and a
        logged traceback.
        `str(handler)` is logged once it is built.
        """
        ...

    def close(self) -> None:
        """Free what the handler holds (a server of many models unloads it); it answers no more requests."""
        ...


class DefaultAcceptError(ReasonError):
    """SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT names a type that this handler can never answer."""


def require_default_accept(default_accept: str, offered: Sequence[str], who: str, remedy: str = "") -> None:
    """Refuse to build a handler that could not answer a request without Accept (or with */*); `who`: the
    handler and its verb ("the built-in model answers")."""
    if default_accept not in offered:
        raise DefaultAcceptError(f"{DEFAULT_INVOCATIONS_ACCEPT}={default_accept}: {who} "
                                 f"{', '.join(offered)}{remedy}")


# Builds the handler for a model directory; raises with a reason for /ping when the directory cannot serve.
Load = Callable[[Path], Handler]
