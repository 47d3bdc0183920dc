#!/usr/bin/env python3
"""Load and worker-kill benchmark: the real `serve` (gunicorn, production settings) on 127.0.0.1 under `wrk`.

Two runs of --seconds each at --concurrency connections, one-image application/json (an MNIST test digit):
1. steady: requests/s, p50, p99 and max latency, errors (target: none);
2. kills: the same while one gunicorn worker (a child of the master) gets SIGKILL every --kill-every
   seconds. A thread polls GET /ping every --ping-interval seconds (2 s timeout, as SageMaker's health
   check) and counts every answer that is not 200. gunicorn must replace each killed worker, and only
   requests on a killed worker's connections may fail: the one it was serving, and those its clients had
   already sent on the other connections it kept open (keep-alive; the bench counts them just before each
   kill), so at most one failed request per connection it held. With --keep-alive-s 0 a worker holds only the
   connection it serves: at most one failed request per kill.

Errors are counted by wrk: socket errors (connect, read, write), timeouts, and answers that are not 2xx/3xx.
Latency is wrk's, over the requests that were answered. Prints a table; exits 1 when a check fails:
any error in the steady run, a /ping that is not 200, more failed requests than the killed workers held
connections, a worker that was not replaced (and loaded its model) in time.

The model is trained by `container/train` (a 1-epoch MLP) unless --model-dir names one.
Usage: .venv/bin/python bench/load_bench.py [--seconds 60] [--concurrency 32] [--kill-every 10] [--workers 2]
       [--keep-alive-s 5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from devkit.datasets import find_mnist as mnist_dir
from devkit.servers import Server
from mxnet_byoc.serve import settings  # the standard library only
from mxnet_byoc.train import data as idx  # numpy only
from serving.rig import INVOCATIONS, ensure_wrk, serve_process, train_model

# Per-status counts come from the response() callback of every thread; wrk's summary has the rest.
WRK_SCRIPT = """
wrk.method = "POST"
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json"
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  statuses = {}
end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH_RESULT %d %d %d %d %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      io.write(string.format("BENCH_STATUS %d %d\\n", status, count))
    end
  end
end
"""


REPLACEMENT_LIMIT_S = 15  # from SIGKILL to a new worker with its model loaded


@dataclass
class LoadResult:
    name: str
    seconds: float
    requests: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    socket_errors: dict[str, int]
    statuses: dict[int, int]
    kills: int = 0
    held: list[int] = field(default_factory=list)  # connections each killed worker held when it was killed
    replaced: int = 0
    slowest_replacement_s: float = 0.0
    pings: int = 0
    ping_failures: list[str] = field(default_factory=list)

    @property
    def bad_statuses(self) -> int:
        return sum(count for status, count in self.statuses.items() if not 200 <= status < 400)

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values()) + self.bad_statuses

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def run_wrk(wrk: str, script: Path, body: Path, url: str, concurrency: int, seconds: int) -> LoadResult:
    env = {**os.environ, "BENCH_BODY": str(body)}
    result = subprocess.run([wrk, "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script),
                             url], env=env, capture_output=True, text=True, check=True)
    line = next(x for x in result.stdout.splitlines() if x.startswith("BENCH_RESULT"))
    requests, micros, connect, read, write, status, timeout, p50, p99, top = map(int, line.split()[1:])
    statuses: dict[int, int] = {}
    for x in result.stdout.splitlines():
        if x.startswith("BENCH_STATUS"):
            code, count = map(int, x.split()[1:])
            statuses[code] = statuses.get(code, 0) + count
    # wrk's own count of answers outside 2xx/3xx must agree with the per-status counts.
    assert status == sum(c for s, c in statuses.items() if not 200 <= s < 400), result.stdout
    return LoadResult("", micros / 1e6, requests, p50 / 1000, p99 / 1000, top / 1000,
                      {"connect": connect, "read": read, "write": write, "timeout": timeout}, statuses)


def worker_pids(master: int) -> list[int]:
    try:
        return sorted(int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split())
    except OSError:
        return []


class LoadedWorkers:
    """The pids that have logged their model loaded, read from the server's log as it grows (the access
    log makes it large: reading it whole while polling would take CPU from the server)."""

    def __init__(self, log: Path):
        self.log, self.offset, self.pids = log, 0, set()

    def __call__(self) -> set[int]:
        with open(self.log, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        found = re.findall(rb"model loaded from .* \(pid (\d+)\)", complete)
        self.pids.update(int(pid) for pid in found)
        return self.pids


class PingPoller(threading.Thread):
    """GET /ping every `interval` seconds on a fresh connection; records every answer that is not 200."""

    def __init__(self, port: int, interval: float):
        super().__init__(name="ping-poller", daemon=True)
        self.port, self.interval = port, interval
        self.stop = threading.Event()
        self.count = 0
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            began = time.monotonic()
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                connection.request("GET", "/ping")
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    self.failures.append(f"{time.strftime('%H:%M:%S')} status {response.status}")
            except (OSError, http.client.HTTPException) as e:
                self.failures.append(f"{time.strftime('%H:%M:%S')} {type(e).__name__}: {e}")
            finally:
                connection.close()
            self.count += 1
            self.stop.wait(max(0.0, self.interval - (time.monotonic() - began)))


class Killer(threading.Thread):
    """SIGKILL to one worker every `every` seconds; times how long gunicorn takes to put a worker with
    its model loaded in its place."""

    def __init__(self, server: Server, every: float, workers: int):
        super().__init__(name="worker-killer", daemon=True)
        self.server, self.every, self.workers = server, every, workers
        self.stop = threading.Event()
        self.kills = 0
        self.held: list[int] = []
        self.replacements: list[float] = []
        self.problems: list[str] = []
        self.loaded = LoadedWorkers(server.log)

    def run(self) -> None:
        master = self.server.process.pid
        next_kill = time.monotonic() + self.every
        while not self.stop.wait(max(0.0, next_kill - time.monotonic())):
            next_kill += self.every
            before = worker_pids(master)
            if len(before) != self.workers:
                self.problems.append(f"{len(before)} workers instead of {self.workers} before a kill")
                continue
            victim = before[self.kills % len(before)]
            held = self.server.connections_held(victim)
            os.kill(victim, signal.SIGKILL)
            self.held.append(held)
            killed_at = time.monotonic()
            self.kills += 1
            replaced = self._wait_replaced(master, victim, killed_at + REPLACEMENT_LIMIT_S)
            if replaced is None:
                self.problems.append(f"worker {victim} was not replaced by one with its model loaded "
                                     f"within {REPLACEMENT_LIMIT_S} s")
            else:
                self.replacements.append(replaced - killed_at)

    def _wait_replaced(self, master: int, victim: int, deadline: float) -> float | None:
        """The time at which the master again has its number of workers, every one with its model loaded."""
        while time.monotonic() < deadline:
            now = worker_pids(master)
            if len(now) == self.workers and victim not in now and set(now) <= self.loaded():
                return time.monotonic()
            time.sleep(0.01)
        return None


def steady(wrk: str, script: Path, body: Path, server: Server, args: argparse.Namespace) -> LoadResult:
    result = run_wrk(wrk, script, body, server.url(INVOCATIONS), args.concurrency, args.seconds)
    result.name = "steady"
    return result


def with_kills(wrk: str, script: Path, body: Path, server: Server, args: argparse.Namespace) -> LoadResult:
    poller = PingPoller(server.port, args.ping_interval)
    killer = Killer(server, args.kill_every, args.workers)
    poller.start()
    killer.start()
    try:
        result = run_wrk(wrk, script, body, server.url(INVOCATIONS), args.concurrency, args.seconds)
    finally:
        killer.stop.set()
        killer.join()
        poller.stop.set()
        poller.join()
    result.name = f"SIGKILL a worker every {args.kill_every:g} s"
    result.kills, result.held, result.replaced = killer.kills, killer.held, len(killer.replacements)
    result.slowest_replacement_s = max(killer.replacements, default=0.0)
    result.pings, result.ping_failures = poller.count, poller.failures + killer.problems
    return result


def print_table(results: list[LoadResult], args: argparse.Namespace) -> None:
    print(f"\none-image application/json, concurrency {args.concurrency}, {args.workers} sync workers, "
          f"{len(os.sched_getaffinity(0))} CPUs, wrk -t1 (127.0.0.1)")
    header = (f"{'run':<28} {'s':>4} {'requests':>8} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
              f"{'errors':>6} {'kills':>5} {'replaced':>8} {'slowest':>7} {'/ping !200':>10}")
    print(header)
    print("-" * len(header))
    for r in results:
        kills = f"{'-':>5} {'-':>8} {'-':>7}"
        if r.kills:
            kills = f"{r.kills:>5} {r.replaced:>8} {r.slowest_replacement_s:>6.2f}s"
        pings = f"{len(r.ping_failures)}/{r.pings}" if r.pings else "-"
        print(f"{r.name:<28} {r.seconds:>4.0f} {r.requests:>8} {r.rps:>7.0f} {r.p50_ms:>7.2f} {r.p99_ms:>7.2f} "
              f"{r.max_ms:>7.1f} {r.errors:>6} {kills} {pings:>10}")
    for r in results:
        detail = ", ".join(f"{k} {v}" for k, v in r.socket_errors.items() if v)
        statuses = ", ".join(f"{s}: {c}" for s, c in sorted(r.statuses.items()))
        print(f"  {r.name}: statuses {{{statuses}}}; socket errors: {detail or 'none'}")
        if r.kills:
            print(f"    connections each killed worker held: {', '.join(map(str, r.held))}")
        for failure in r.ping_failures:
            print(f"    {failure}")
    print("  (errors: socket errors, timeouts and answers outside 2xx/3xx; slowest: SIGKILL to a new worker "
          "with its model loaded; /ping !200: polls not answered 200 within 2 s / polls)")


def check(results: list[LoadResult]) -> list[str]:
    problems = []
    for r in results:
        if not r.requests:
            problems.append(f"{r.name}: no request answered")
        if r.kills == 0 and r.errors:
            problems.append(f"{r.name}: {r.errors} errors without any kill")
        if r.kills and r.errors > sum(max(held, 1) for held in r.held):
            problems.append(f"{r.name}: {r.errors} failed requests for {r.kills} kills of workers that held "
                            f"{sum(r.held)} connections (at most one per connection)")
        if r.kills != r.replaced:
            problems.append(f"{r.name}: {r.kills - r.replaced} killed workers not replaced in time")
        if r.ping_failures:
            problems.append(f"{r.name}: {len(r.ping_failures)} problems with /ping or the workers")
    return problems


def one_image_json(path: Path) -> None:
    digit = idx.read_idx(mnist_dir() / "t10k-images-idx3-ubyte.gz")[:1].reshape(28, 28)
    path.write_text(json.dumps({"instances": [digit.tolist()]}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="length of each run")
    parser.add_argument("--concurrency", type=int, default=32, help="wrk connections")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--kill-every", type=float, default=10.0, help="seconds between two SIGKILLs")
    parser.add_argument("--ping-interval", type=float, default=0.1, help="seconds between two /ping polls")
    parser.add_argument("--runs", choices=("both", "steady", "kills"), default="both")
    parser.add_argument("--model-dir", type=Path, help="serve this model directory instead of training one")
    parser.add_argument("--keep-alive-s", type=int, help="serve's MXNET_BYOC_KEEP_ALIVE_S (default: serve's)")
    args = parser.parse_args()

    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="load-bench-"))
    server = None
    try:
        base = work / "ml"
        if args.model_dir:
            base.mkdir()
            shutil.copytree(args.model_dir, base / "model")
        else:
            train_model(base, "mlp", 1)
        script, body = work / "post.lua", work / "one.json"
        script.write_text(WRK_SCRIPT)
        one_image_json(body)
        env = {} if args.keep_alive_s is None else {settings.KEEP_ALIVE_S: str(args.keep_alive_s)}
        server = serve_process(base, args.workers, work / "serve.log", env)
        server.wait_loaded()
        results = []
        if args.runs in ("both", "steady"):
            results.append(steady(wrk, script, body, server, args))
        if args.runs in ("both", "kills"):
            results.append(with_kills(wrk, script, body, server, args))
        print_table(results, args)
        problems = check(results)
        if server.process.poll() is not None:
            problems.append(f"serve exited with {server.process.returncode}")
        for problem in problems:
            print(f"FAILED: {problem}")
        if problems:
            print(server.log.read_text(errors="replace")[-3000:])
        return 1 if problems else 0
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
