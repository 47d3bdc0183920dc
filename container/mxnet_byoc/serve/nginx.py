"""nginx in front of gunicorn: its configuration, written from `serve`'s settings, and its command line.

nginx owns the clients' connections: it keeps them open between requests (MXNET_BYOC_KEEP_ALIVE_S), parses
HTTP (chunked bodies, `Expect`, `Host`), enforces the size and time limits, and waits for slow clients, none of
which ever holds a worker. It hands each whole request to a gunicorn worker over a unix socket (in the uwsgi
protocol: worker.py), one request per connection, so a request waiting for a worker waits in the socket's
backlog, which belongs to no worker: a worker that dies (killed, out of memory, past
SAGEMAKER_MODEL_SERVER_TIMEOUT) loses only the request it was serving. This is the layout of AWS's reference
container. nginx's own answers (a request it refuses, a worker that died) are in the project's error form,
`{"error": "..."}` (error_response.py), with the reason.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
from pathlib import Path

from . import settings

PROGRAM = "nginx"  # Debian's package of the same name, in both images
CONFIG_FILE = "nginx.conf"
HEADER_BUFFER_KIB = 8  # the request line and each header line must fit in one buffer of this size
HEADER_BUFFERS = 4  # all header lines together must fit in this many
QUEUE_TIMEOUTS = 2  # nginx waits for an answer this many SAGEMAKER_MODEL_SERVER_TIMEOUTs (see the template)
# Which of nginx's own statuses are answered with which reason; 494 is nginx's name for headers too large,
# answered as RFC 6585's 431. A status from gunicorn or the app passes through as the app wrote it.
REASONS = {
    400: "the request is not valid HTTP/1.1: a malformed request line, header, Host, Content-Length, "
         "Transfer-Encoding or chunk (RFC 9112)",
    404: "not found",  # only nginx's own pages: the app answers every path a client may ask for
    405: "the TRACE method is not served",  # the one method nginx refuses itself, whatever the path
    411: "the request has a body but neither Content-Length nor chunked Transfer-Encoding",
    413: "the body is larger than the limit of {max_payload_mb} MB (" + settings.MAX_PAYLOAD_IN_MB + ")",
    414: f"the request line is longer than {HEADER_BUFFER_KIB} KiB",
    431: f"the request's headers are too large: each line must fit in {HEADER_BUFFER_KIB} KiB, all of them in "
         f"{HEADER_BUFFERS * HEADER_BUFFER_KIB} KiB",
    500: "internal error in the HTTP front end (nginx); the server log has the details",
    501: "this Transfer-Encoding is not supported: send the body as it is, or chunked",
    502: "the model server closed the connection without an answer: the worker serving this request died "
         "(killed, out of memory, or stopped for running past " + settings.MODEL_SERVER_TIMEOUT + "), or the model "
         "server is not running; the server log says which",
    504: "no answer within {queue_timeout_s} s: every worker was busy with other requests for that long (twice "
         + settings.MODEL_SERVER_TIMEOUT + ")",
    505: "only HTTP/1.0 and HTTP/1.1 are served",
}
NGINX_STATUS = {431: 494}  # the status nginx raises for what is answered as the key
ERROR_PAGES = "/.mxnet-byoc/error/"  # where nginx's own answers live (internal: a client asking gets 404)

# The request's WSGI variables, and every header as HTTP_*, as a location sends them to a uwsgi server (worker.py).
REQUEST_PARAMS = """\
            uwsgi_param REQUEST_METHOD $request_method;
            uwsgi_param REQUEST_URI $request_uri;
            uwsgi_param PATH_INFO $uri;
            uwsgi_param QUERY_STRING $query_string;
            uwsgi_param CONTENT_TYPE $content_type;
            uwsgi_param CONTENT_LENGTH $content_length;
            uwsgi_param SERVER_PROTOCOL $server_protocol;
            uwsgi_param SERVER_NAME $host;
            uwsgi_param SERVER_PORT $server_port;
            uwsgi_param REMOTE_ADDR $remote_addr;
            uwsgi_param REMOTE_PORT $remote_port;
            # Headers that no longer describe what the worker receives: left out.
            uwsgi_param HTTP_CONTENT_TYPE "" if_not_empty;
            uwsgi_param HTTP_CONTENT_LENGTH "" if_not_empty;
            uwsgi_param HTTP_TRANSFER_ENCODING "" if_not_empty;
            uwsgi_param HTTP_EXPECT "" if_not_empty;"""

TEMPLATE = """\
# Written by mxnet_byoc/serve/nginx.py from serve's settings; nginx runs with it while serve runs.
daemon off;
worker_processes {worker_processes};
pid {run_dir}/nginx.pid;
error_log stderr warn;
# Requests still in flight when serve stops get this long to finish (serve stops gunicorn after nginx).
worker_shutdown_timeout {shutdown_s}s;

events {{
    worker_connections {worker_connections};
}}

http {{
    # One line per request on stdout: client, request line, status, body bytes sent, seconds.
    log_format serve '$remote_addr "$request" $status $body_bytes_sent ${{request_time}}s';
    access_log /dev/stdout serve;
    server_tokens off;
    default_type application/json;

    client_body_temp_path {run_dir}/client_body;
    proxy_temp_path {run_dir}/proxy;
    fastcgi_temp_path {run_dir}/fastcgi;
    uwsgi_temp_path {run_dir}/uwsgi;
    scgi_temp_path {run_dir}/scgi;

    keepalive_timeout {keep_alive_s};
    client_header_timeout {read_timeout};
    client_body_timeout {read_timeout};
    send_timeout {timeout_s}s;
    large_client_header_buffers {header_buffers} {header_buffer_kib}k;
    # A body over the limit is refused by its Content-Length, before any of it is read (413). Bodies up to the
    # limit are held in memory, never in a temporary file.
    client_max_body_size {max_payload_bytes};
    client_body_buffer_size {max_payload_bytes};

    # The methods of the app's paths, for the Allow header of nginx's own 405 (RFC 9110 requires it).
    map $request_uri $allowed_methods {{
        default "";
        ~^/invocations(?:\\?|$) "POST";
        ~^/(?:ping|execution-parameters)(?:\\?|$) "GET, HEAD, OPTIONS";
    }}

    upstream model_server {{
        server unix:{socket} max_fails=0;
    }}
{models_upstream}
    server {{
        listen {listen} backlog={backlog};

        location / {{
            # The request goes to a worker whole, in the uwsgi protocol (worker.py), with these WSGI variables
            # and every header as HTTP_*; the body has been read whole, so it is sent with its length.
            uwsgi_pass model_server;
{request_params}
            # gunicorn ends a request that runs past SAGEMAKER_MODEL_SERVER_TIMEOUT (it kills the worker: 502 here);
            # nginx waits longer, so that requests queued behind it are still answered by the worker that
            # replaces it.
            uwsgi_read_timeout {queue_timeout_s}s;
            uwsgi_send_timeout {timeout_s}s;
            # A request is never sent twice: it may be the one that killed its worker.
            uwsgi_next_upstream off;
        }}
{models_location}
{error_pages}
    }}
}}
"""


# A multi-model server's management API (multimodel/manager.py, in gunicorn's master): GET and POST /models, GET
# and DELETE /models/<name>. A load waits for every worker to load the model. POST /models/<name>/invoke goes to the
# workers, as /invocations does.
MODELS_UPSTREAM = """\
    upstream models_api {{
        server unix:{socket} max_fails=0;
    }}
"""
MODELS_LOCATION = """\
        location ~ ^/models(/[^/]+)?$ {{
            uwsgi_pass models_api;
{request_params}
            uwsgi_read_timeout {load_timeout_s}s;
            uwsgi_next_upstream off;
        }}
"""
LOAD_TIMEOUT_S = 660  # beyond the manager's own limit on a load (multimodel/manager.py), which answers first


class NotInstalled(RuntimeError):
    """No nginx on this machine; the message says what to install."""


def executable() -> str:
    found = shutil.which(PROGRAM) or shutil.which(PROGRAM, path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise NotInstalled("nginx is not installed: serve needs it in front of gunicorn "
                           "(Debian: apt-get install nginx)")
    return found


def command(run_dir: Path) -> list[str]:
    """nginx in the foreground with the configuration that `write_config` put in `run_dir`; `-e stderr`: its
    messages before the configuration is read go where the configuration's go."""
    return [executable(), "-e", "stderr", "-p", str(run_dir), "-c", str(run_dir / CONFIG_FILE)]


def write_config(config: settings.ServerConfig, run_dir: Path, socket: Path, models_socket: Path | None = None
                 ) -> Path:
    path = run_dir / CONFIG_FILE
    path.write_text(render(config, run_dir, socket, models_socket))
    return path


def render(config: settings.ServerConfig, run_dir: Path, socket: Path, models_socket: Path | None = None) -> str:
    """nginx's configuration; `models_socket`: a multi-model server's management API."""
    return TEMPLATE.format(
        request_params=REQUEST_PARAMS,
        models_upstream=MODELS_UPSTREAM.format(socket=models_socket) if models_socket else "",
        models_location=MODELS_LOCATION.format(load_timeout_s=LOAD_TIMEOUT_S, request_params=REQUEST_PARAMS)
        if models_socket else "",
        worker_processes=worker_processes(config.workers),
        run_dir=run_dir,
        shutdown_s=settings.FRONT_END_SHUTDOWN_S,
        worker_connections=1024,
        keep_alive_s=config.keep_alive_s,
        read_timeout=_milliseconds(config.read_timeout_s),
        timeout_s=config.timeout_s,
        queue_timeout_s=QUEUE_TIMEOUTS * config.timeout_s,
        header_buffers=HEADER_BUFFERS,
        header_buffer_kib=HEADER_BUFFER_KIB,
        max_payload_bytes=config.max_payload_bytes,
        socket=socket,
        listen=listen_address(config.host, config.port),
        backlog=settings.BACKLOG,
        error_pages=error_pages(config),
    )


def worker_processes(model_workers: int) -> int:
    """One nginx process per eight model workers: proxying costs a small part of what a request costs."""
    return max(1, -(-model_workers // 8))


def listen_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def error_pages(config: settings.ServerConfig) -> str:
    lines = []
    for status, reason in REASONS.items():
        text = json.dumps({"error": reason.format(max_payload_mb=config.max_payload_mb,
                                                  queue_timeout_s=QUEUE_TIMEOUTS * config.timeout_s)},
                          separators=(",", ":"))
        assert "$" not in text, text  # nginx would read it as a variable
        quoted = "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
        raised = NGINX_STATUS.get(status, status)
        answer = f"={status} " if raised != status else ""
        allow = "add_header Allow $allowed_methods always; " if status == 405 else ""
        # A URI, not a named location: nginx cannot redirect a request whose line it could not parse to a name.
        lines += [f"        error_page {raised} {answer}{ERROR_PAGES}{status};",
                  f"        location = {ERROR_PAGES}{status} {{ internal; {allow}return 200 {quoted}; }}"]
    return "\n".join(lines)


def _milliseconds(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"  # nginx takes whole numbers of a unit only


def share_output() -> None:
    """nginx opens /dev/stdout anew for its access log: where serve's output is a regular file, that file is put
    in append mode, or the Python processes' writes (at their own offset) would overwrite nginx's lines."""
    for fd in (1, 2):
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
        except OSError:
            pass


def environment() -> dict[str, str]:
    """nginx's environment: none of serve's (LD_PRELOAD's allocator is for the Python processes)."""
    return {name: os.environ[name] for name in ("PATH", "TZ") if name in os.environ}
