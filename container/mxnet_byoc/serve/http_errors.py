"""The errors a request is answered with, by whose doing they are: each carries its HTTP status, and its
message is the JSON reason the client reads.

- `ClientMistake` (4xx): the request is wrong; the message says what to fix.
- `ServerLimit` (413, 408): the request exceeded what this server accepts or waits for (settings.py).
- `UserCodeFailure` (500, or the status the user's exception carries): the inference script raised while
  answering; its traceback is logged where it was raised.

Any other exception while answering is a fault of the server itself: a 500 naming only its type.
"""

from __future__ import annotations


class HttpError(Exception):
    """An answer with `status` and this message as its reason."""

    status = 500


class ClientMistake(HttpError):
    status = 400


class BadRequest(ClientMistake):
    status = 400


class UnsupportedMediaType(ClientMistake):
    status = 415


class NotAcceptable(ClientMistake):
    status = 406


class ServerLimit(HttpError):
    status = 413


class PayloadTooLarge(ServerLimit):
    status = 413


class RequestTimeout(ServerLimit):
    status = 408


class UserCodeFailure(HttpError):
    """The reason names the user's function; `status` is 500 unless the exception carried a 4xx or 5xx."""

    def __init__(self, message: str, status: int = 500):
        super().__init__(message)
        self.status = status
