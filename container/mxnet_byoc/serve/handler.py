"""What POST /invocations calls: a `Handler`, built once per worker by a `Load` off the request thread.

The built-in digit model (digits.py) is one implementation; a user's inference module is another. The app
(app.py) knows only this interface: it reads the body, hands it over, and sends back what it gets.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol


class Handler(Protocol):
    def invoke(self, body: bytes, content_type: str | None, accept: str | None) -> tuple[bytes, str]:
        """(response body, response Content-Type) for a request body, its Content-Type and Accept headers.

        An `http_errors.HttpError` (a client mistake, or a failure in the user's code) is answered with its
        status and message; any other exception is a 500 with the exception's type as the JSON reason, and a
        logged traceback.
        `str(handler)` is logged once it is built.
        """
        ...


# Builds the handler for a model directory; raises with a reason for /ping when the directory cannot serve.
Load = Callable[[Path], Handler]
