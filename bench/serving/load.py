"""Load and worker deaths: the real `serve` under wrk's keep-alive connections, steady, then with a worker killed
every --kill-every seconds.

1. steady: one-image JSON at --load-concurrency connections for --duration seconds: requests/s, p50, p99 and max
   latency, errors (target: none);
2. kills: the same while one of gunicorn's workers gets SIGKILL every --kill-every seconds. A thread polls GET /ping
   every 0.1 s on a fresh connection (2 s timeout, as SageMaker's health check). gunicorn must replace each killed
   worker; a kill may fail only the request that worker was serving (target: at most 2 failed requests per kill,
   /ping polls included).

With --load-against COMMIT the same two runs are made first on `serve` at that commit (a git worktree), so that the
failures per kill and the rates stand side by side. Errors are counted by wrk (socket errors, timeouts, answers
outside 2xx/3xx, each status by a Lua response() hook); latency is wrk's.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from devkit.project import ROOT
from devkit.servers import Server
from figures import Figure
from mxnet_byoc.serve import settings

from .rig import INVOCATIONS, Bench

REPLACEMENT_LIMIT_S = 15  # from SIGKILL to a new worker with its model loaded
TARGET_FAILED_PER_KILL = 2
PING_INTERVAL_S = 0.1

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
  io.write(string.format("LOAD_RESULT %d %d %d %d %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      io.write(string.format("LOAD_STATUS %d %d\\n", status, count))
    end
  end
end
"""


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
    replaced: int = 0
    slowest_replacement_s: float = 0.0
    pings: int = 0
    ping_failures: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        bad = sum(count for status, count in self.statuses.items() if not 200 <= status < 400)
        return sum(self.socket_errors.values()) + bad

    @property
    def failed(self) -> int:
        """Failed requests, /ping polls included."""
        return self.errors + len(self.ping_failures)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def run_wrk(bench: Bench, script: Path, body: Path, server: Server, concurrency: int, seconds: int) -> LoadResult:
    env = {**os.environ, "BENCH_BODY": str(body)}
    result = subprocess.run([bench.wrk, "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s", "-s",
                             str(script), server.url(INVOCATIONS)], env=env, capture_output=True, text=True, check=True)
    line = next(x for x in result.stdout.splitlines() if x.startswith("LOAD_RESULT"))
    requests, micros, connect, read, write, status, timeout, p50, p99, top = map(int, line.split()[1:])
    statuses: dict[int, int] = {}
    for x in result.stdout.splitlines():
        if x.startswith("LOAD_STATUS"):
            code, count = map(int, x.split()[1:])
            statuses[code] = statuses.get(code, 0) + count
    # wrk's own count of answers outside 2xx/3xx must agree with the per-status counts.
    assert status == sum(c for s, c in statuses.items() if not 200 <= s < 400), result.stdout
    return LoadResult("", micros / 1e6, requests, p50 / 1000, p99 / 1000, top / 1000,
                      {"connect": connect, "read": read, "write": write, "timeout": timeout}, statuses)


class LoadedWorkers:
    """The pids that have logged their model loaded, read from the server's log as it grows (the access log makes
    it large: reading it whole while polling would take CPU from the server)."""

    def __init__(self, log: Path):
        self.log, self.offset, self.pids = log, 0, set()

    def __call__(self) -> set[int]:
        with open(self.log, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        self.pids.update(int(pid) for pid in re.findall(rb"model loaded from .* \(pid (\d+)\)", complete))
        return self.pids


class PingPoller(threading.Thread):
    """GET /ping every PING_INTERVAL_S on a fresh connection; records every answer that is not 200."""

    def __init__(self, port: int):
        super().__init__(name="ping-poller", daemon=True)
        self.port = port
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
                    self.failures.append(f"{time.strftime('%H:%M:%S')} /ping status {response.status}")
            except (OSError, http.client.HTTPException) as e:
                self.failures.append(f"{time.strftime('%H:%M:%S')} /ping {type(e).__name__}: {e}")
            finally:
                connection.close()
            self.count += 1
            self.stop.wait(max(0.0, PING_INTERVAL_S - (time.monotonic() - began)))


class Killer(threading.Thread):
    """SIGKILL to one of gunicorn's workers every `every` seconds; times how long gunicorn takes to put a worker
    with its model loaded in its place."""

    def __init__(self, server: Server, every: float, workers: int):
        super().__init__(name="worker-killer", daemon=True)
        self.server, self.every, self.workers = server, every, workers
        self.stop = threading.Event()
        self.kills = 0
        self.replacements: list[float] = []
        self.problems: list[str] = []
        self.loaded = LoadedWorkers(server.log)

    def run(self) -> None:
        next_kill = time.monotonic() + self.every
        while not self.stop.wait(max(0.0, next_kill - time.monotonic())):
            next_kill += self.every
            before = self.server.worker_pids()
            if len(before) != self.workers:
                self.problems.append(f"{len(before)} workers instead of {self.workers} before a kill")
                continue
            victim = before[self.kills % len(before)]
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            self.kills += 1
            replaced = self._wait_replaced(victim, killed_at + REPLACEMENT_LIMIT_S)
            if replaced is None:
                self.problems.append(f"worker {victim} was not replaced by one with its model loaded "
                                     f"within {REPLACEMENT_LIMIT_S} s")
            else:
                self.replacements.append(replaced - killed_at)

    def _wait_replaced(self, victim: int, deadline: float) -> float | None:
        """The time at which gunicorn again has its number of workers, every one with its model loaded."""
        while time.monotonic() < deadline:
            now = self.server.worker_pids()
            if len(now) == self.workers and victim not in now and set(now) <= self.loaded():
                return time.monotonic()
            time.sleep(0.01)
        return None


def storm(bench: Bench, script: Path, body: Path, server: Server) -> list[LoadResult]:
    """The steady run, then the run with kills, on `server`."""
    args = bench.args
    steady = run_wrk(bench, script, body, server, args.load_concurrency, args.duration)
    steady.name = "steady"
    poller = PingPoller(server.port)
    killer = Killer(server, args.kill_every, args.workers)
    poller.start()
    killer.start()
    try:
        kills = run_wrk(bench, script, body, server, args.load_concurrency, args.duration)
    finally:
        killer.stop.set()
        killer.join()
        poller.stop.set()
        poller.join()
    kills.name = f"SIGKILL a worker every {args.kill_every:g} s"
    kills.kills, kills.replaced = killer.kills, len(killer.replacements)
    kills.slowest_replacement_s = max(killer.replacements, default=0.0)
    kills.pings, kills.ping_failures, kills.problems = poller.count, poller.failures, killer.problems
    return [steady, kills]


def print_table(label: str, results: list[LoadResult]) -> None:
    print(f"\n{label}")
    header = (f"{'run':<28} {'s':>4} {'requests':>8} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
              f"{'failed':>6} {'kills':>5} {'per kill':>8} {'replaced':>8} {'slowest':>7} {'/ping !200':>10}")
    print(header)
    print("-" * len(header))
    for r in results:
        kills = f"{'-':>5} {'-':>8} {'-':>8} {'-':>7}"
        if r.kills:
            kills = f"{r.kills:>5} {r.failed / r.kills:>8.2f} {r.replaced:>8} {r.slowest_replacement_s:>6.2f}s"
        pings = f"{len(r.ping_failures)}/{r.pings}" if r.pings else "-"
        print(f"{r.name:<28} {r.seconds:>4.0f} {r.requests:>8} {r.rps:>7.0f} {r.p50_ms:>7.2f} {r.p99_ms:>7.2f} "
              f"{r.max_ms:>7.1f} {r.failed:>6} {kills} {pings:>10}")
    for r in results:
        detail = ", ".join(f"{k} {v}" for k, v in r.socket_errors.items() if v)
        statuses = ", ".join(f"{s}: {c}" for s, c in sorted(r.statuses.items()))
        print(f"  {r.name}: statuses {{{statuses}}}; socket errors: {detail or 'none'}")
        for problem in r.ping_failures + r.problems:
            print(f"    {problem}")
    print("  (failed: socket errors, timeouts, answers outside 2xx/3xx and /ping polls not answered 200 within 2 s; "
          "slowest: SIGKILL to a new worker with its model loaded)")


def checkout(bench: Bench, commit: str) -> Path:
    """`commit` checked out in a git worktree under the bench's work folder; its `serve`."""
    earlier = bench.work / f"serve-at-{commit}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(earlier), commit], check=True)
    return earlier / "container" / "serve"


def environment(bench: Bench) -> dict[str, str]:
    env = {"SAGEMAKER_MODEL_SERVER_WORKERS": str(bench.args.workers)}
    if bench.args.keep_alive_s is not None:
        env[settings.KEEP_ALIVE_S] = str(bench.args.keep_alive_s)
    return env


def run(bench: Bench) -> list[Figure]:
    args = bench.args
    base, body = bench.one_image_folder("load")
    script = bench.work / "load.lua"
    script.write_text(WRK_SCRIPT)
    candidates = [("the working tree", ROOT / "container" / "serve")]
    if args.load_against:
        candidates.insert(0, (args.load_against, checkout(bench, args.load_against)))
    measured: dict[str, list[LoadResult]] = {}
    try:
        for label, program in candidates:
            server = Server(base, bench.work / f"load-{len(measured)}.log", [sys.executable, str(program)],
                            **environment(bench))
            try:
                server.wait_loaded()
                measured[label] = storm(bench, script, body, server)
                if server.process.poll() is not None:
                    measured[label][-1].problems.append(f"serve exited with {server.process.returncode}")
            finally:
                server.stop()
    finally:
        for _, program in candidates[:-1]:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(program.parents[1])],
                           check=False)
    for label, results in measured.items():
        print_table(f"{label}: one-image application/json, concurrency {args.load_concurrency} (keep-alive), "
                    f"{args.workers} workers, {len(os.sched_getaffinity(0))} CPUs, wrk -t1 (127.0.0.1)", results)
    steady, kills = measured["the working tree"]
    against = measured.get(args.load_against or "", [])
    per_kill = kills.failed / kills.kills if kills.kills else float("nan")
    figures = [
        Figure("serving.load.steady", f"errors under {args.duration} s of steady load at concurrency "
               f"{args.load_concurrency}", f"{steady.errors} of {steady.requests} requests ({steady.rps:,.0f} req/s)",
               f"{args.load_against}: {against[0].errors} ({against[0].rps:,.0f} req/s)" if against else "",
               target="= 0", met=steady.errors == 0),
        Figure("serving.load.kills", f"failed requests per SIGKILL of a worker, concurrency {args.load_concurrency} "
               f"with keep-alive", f"{per_kill:.2f} ({kills.failed} for {kills.kills} kills)",
               f"{args.load_against}: {against[1].failed / max(1, against[1].kills):.2f}" if against else "",
               target=f"<= {TARGET_FAILED_PER_KILL}",
               met=bool(kills.kills) and kills.failed <= TARGET_FAILED_PER_KILL * kills.kills and not kills.problems
               and kills.replaced == kills.kills),
        Figure("serving.load.replacement", "slowest SIGKILL to a new worker with its model loaded",
               f"{kills.slowest_replacement_s:.2f} s ({kills.replaced} of {kills.kills} replaced)",
               target=f"< {REPLACEMENT_LIMIT_S} s", met=kills.replaced == kills.kills),
    ]
    return figures
