"""Where a worker's CPU goes per one-image request: py-spy samples of one worker under wrk at concurrency 8, in
stages (gunicorn, request log, body read, JSON parse, pixels to float32, predict, encode), ours beside the plain
endpoint's. A stage's microseconds per request are its share of the samples times the server CPU per request."""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from devkit.servers import Server

from .rig import Bench, wrk_command, wrk_result

# py-spy stacks to stages: the innermost frame that matches a rule names the stage of a sample.
STAGES = [  # (stage, the end of the frame's file path, its function names or None for any)
    ("idle", "/gunicorn/workers/sync.py", {"SyncWorker.wait"}),  # gunicorn's worker (the plain endpoint)
    ("idle", "/serve/worker.py", {"SyncWorker.wait"}),
    ("predict (forward pass)", "/serve/cpredict.py", None),
    ("predict (forward pass)", "/serve/network.py", None),
    ("user script: MXNet's Python (NDArray, Gluon)", "/mxnet/", None),  # the built-in path has no such frame
    ("user script: its own lines, json, numpy", "/inference.py", None),
    ("script mode: our handler wrapper", "/serve/script.py", None),
    ("encode the answer", "/serve/codecs.py", {"encode", "_label_pieces"}),
    ("JSON parse", "/serve/codecs.py", {"_parse_json"}),
    ("pixels to float32", "/serve/codecs.py", {"_stack", "_pixels", "_to_unit_range", "_one_to_unit_range",
                                               "_each_to_unit_range", "_to_batch"}),
    ("decode, other", "/serve/codecs.py", None),
    ("body read", "/serve/app.py", {"_read_body"}),
    ("body read", "/serve/worker.py", {"Body.readinto"}),
    ("uwsgi request read, answer written", "/serve/worker.py", None),  # serve's worker, behind nginx
    ("request log", "/gunicorn/glogging.py", None),
    ("app, other (dispatch, handler)", "/serve/", None),
    ("app, other (dispatch, handler)", "/trivial_app.py", None),
    ("Flask and werkzeug", "/flask/", None),
    ("Flask and werkzeug", "/werkzeug/", None),
    ("gunicorn: read and parse the request", "/gunicorn/http/message.py", None),
    ("gunicorn: read and parse the request", "/gunicorn/http/parser.py", None),
    ("gunicorn: read and parse the request", "/gunicorn/http/unreader.py", None),
    ("gunicorn: read and parse the request", "/gunicorn/http/body.py", None),
    ("gunicorn: environ, send the answer", "/gunicorn/http/wsgi.py", None),
    ("gunicorn: environ, send the answer", "/gunicorn/util.py", {"write"}),
    ("gunicorn: accept, close, loop", "/gunicorn/", None),
]


def py_spy() -> str | None:
    found = shutil.which("py-spy") or Path(sys.executable).with_name("py-spy")
    return str(found) if Path(found).exists() else None


def stage_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        function, _, where = frame.rpartition(" (")
        where = "/" + where  # py-spy writes paths from the import root: flask/app.py, mxnet_byoc/serve/app.py
        for stage, path, functions in STAGES:
            if path in where and (functions is None or function in functions):
                return stage
    return "other (Python's runtime)"


def sample(bench: Bench, server: Server, body: Path) -> collections.Counter | str:
    """py-spy samples of one worker, by stage, for --profile-seconds while wrk sends `body` at concurrency 8; a
    string saying why when py-spy cannot run."""
    spy, seconds = py_spy(), bench.args.profile_seconds
    if spy is None:
        return "py-spy is not installed (requirements-dev.txt has it)"
    worker = server.worker_pids()[0]
    env = {**os.environ, "BENCH_BODY": str(body), "BENCH_CONTENT_TYPE": "application/json"}
    load = subprocess.Popen(wrk_command(bench.wrk, bench.script, server, 8, seconds + 2), env=env,
                            stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    raw = bench.work / "py-spy.txt"
    # --nonblocking: the worker is never paused to be sampled, so it runs as it would unwatched.
    spied = subprocess.run([spy, "record", "--pid", str(worker), "--duration", str(int(seconds)), "--rate", "1000",
                            "--nonblocking", "--format", "raw", "-o", str(raw)], capture_output=True, text=True)
    wrk_result(load.communicate()[0])
    if spied.returncode != 0 or not raw.exists():
        return f"py-spy failed: {(spied.stderr or spied.stdout or 'no output').strip().splitlines()[0]}"
    stages: collections.Counter = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():  # py-spy may add a line of its own (a warning) to the samples
            stages[stage_of(stack.split(";"))] += int(count)
    stages.pop("idle", None)
    return stages


def report(ours: collections.Counter | str, plain: collections.Counter | str, cpu_us: tuple[float, float],
           workers: int) -> None:
    print(f"\nwhere a worker's CPU goes, one-image JSON at concurrency 8 (py-spy samples of 1 of {workers} workers; "
          f"us per request: a stage's share of the samples x the server's CPU time per request at concurrency 8)")
    if isinstance(ours, str) or isinstance(plain, str):
        print(f"  skipped: {ours if isinstance(ours, str) else plain}")
        return
    print(f"  {'stage':46} {'ours':>6} {'us/req':>7} | {'plain':>6} {'us/req':>7}")
    for name, _ in (ours + plain).most_common():
        cells = []
        for stages, cpu in zip((ours, plain), cpu_us):
            share = stages[name] / max(1, sum(stages.values()))
            cells.append(f"{share * 100:>5.1f}% {share * cpu:>7.0f}" if stages[name] else f"{'-':>6} {'-':>7}")
        print(f"  {name:46} {cells[0]} | {cells[1]}")
    print(f"  {'all (server CPU per request)':46} {'':>6} {cpu_us[0]:>7.0f} | {'':>6} {cpu_us[1]:>7.0f}")
