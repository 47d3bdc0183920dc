"""Reading request bodies: straight from gunicorn's socket when gunicorn serves, limits either way."""

from __future__ import annotations

import io
import os
import socket
import threading

import pytest
from gunicorn.http.body import Body, LengthReader
from gunicorn.http.unreader import SocketUnreader

from mxnet_byoc.serve import app as predictor
from mxnet_byoc.serve import codecs

LIMIT = 8 * 1024 * 1024


def gunicorn_body(sock: socket.socket, already_received: bytes, length: int) -> Body:
    """What gunicorn's sync worker puts in wsgi.input: bytes received with the headers sit in the unreader."""
    unreader = SocketUnreader(sock)
    unreader.unread(already_received)
    return Body(LengthReader(unreader, length))


def read(stream, length: int) -> bytes:
    return predictor._read_body({"wsgi.input": stream, "CONTENT_LENGTH": str(length)}, LIMIT, "8 MB")


@pytest.mark.parametrize("with_headers", [0, 5000, 3_000_000 + 4])
def test_a_gunicorn_body_is_received_into_one_buffer_and_gunicorn_keeps_what_follows(with_headers):
    payload, following = os.urandom(3_000_000), b"NEXT"
    wire = payload + following
    ours, theirs = socket.socketpair()
    with ours, theirs:
        stream = gunicorn_body(ours, wire[:with_headers], len(payload))
        sender = threading.Thread(target=theirs.sendall, args=(wire[with_headers:],))
        sender.start()
        body = read(stream, len(payload))
        sender.join()
        assert isinstance(body, bytearray), "gunicorn's own readers were used, not the socket"
        assert body == payload
        assert stream.read(10) == b""  # gunicorn agrees that the body has been read
        assert stream.reader.unreader.read() == following


def test_a_body_that_ends_early_is_400():
    ours, theirs = socket.socketpair()
    with ours:
        stream = gunicorn_body(ours, b"abc", 100)
        theirs.sendall(b"defg")
        theirs.close()
        with pytest.raises(codecs.BadRequest, match="ended after 7 of its 100 bytes"):
            read(stream, 100)


def test_other_servers_streams_are_read_as_files():
    assert read(io.BytesIO(b"0123456789"), 10) == b"0123456789"


def test_declared_length_above_the_limit_is_refused_before_reading():
    class Untouchable(io.RawIOBase):
        def read(self, size=-1):
            raise AssertionError("the body was read")

    with pytest.raises(predictor.PayloadTooLarge, match=f"the body has {LIMIT + 1} bytes; the limit is 8 MB"):
        read(Untouchable(), LIMIT + 1)


def test_chunked_bodies_are_counted_as_they_arrive():
    environ = {"wsgi.input": io.BytesIO(b"x" * (LIMIT + 1))}
    with pytest.raises(predictor.PayloadTooLarge, match="larger than the limit of 8 MB"):
        predictor._read_body(environ, LIMIT, "8 MB")
    environ = {"wsgi.input": io.BytesIO(b"x" * LIMIT)}
    assert len(predictor._read_body(environ, LIMIT, "8 MB")) == LIMIT


@pytest.mark.parametrize("length", [0, 1, 1500, 3_136_128])
def test_the_socket_read_gives_what_gunicorns_own_reader_gives(length):
    # _read_from_socket is a fast path around gunicorn's Body.read: the same bytes, the same state after.
    payload = os.urandom(length) + b"NEXT"
    found = []
    for reader in (lambda stream: read(stream, length), lambda stream: stream.read(length)):
        ours, theirs = socket.socketpair()
        with ours, theirs:
            stream = gunicorn_body(ours, payload[:100], length)
            sender = threading.Thread(target=theirs.sendall, args=(payload[100:],))
            sender.start()
            body = bytes(reader(stream))
            sender.join()
            found.append((body, stream.read(10), stream.reader.unreader.read()))
    assert found[0] == found[1] and found[0][0] == payload[:length]
