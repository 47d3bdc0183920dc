"""A change to `serve` measured whole: the working tree's `serve` against the same `serve` at an earlier commit
(--commit), side by side on one model, with one-image JSON requests.

Both servers and the plain endpoint run in alternation. Printed per concurrency: requests/s and server CPU per
request (medians), the change's effect as the median and the range of the per-round ratios "after over before" of
server CPU per request (the steadiest figure on a shared machine), each server's p99 latency, and each server's
requests/s over the plain endpoint's. The earlier commit is checked out into a temporary git worktree and its
`container/serve` run with that worktree's code (its folder comes first on the import path); the environment
(the venv's gunicorn, Flask, numpy, MXNet) is this one's.
"""

from __future__ import annotations

import statistics
import subprocess
import sys

from devkit.project import ROOT
from devkit.servers import Server
from figures import Figure

from .rig import Bench, first_answer, median, pair_ratio, plain_endpoint


def figures_of(runs: list[dict[str, float]]) -> str:
    return f"{median(runs, 'rps'):>6.0f} req/s {median(runs, 'cpu_us'):>4.0f} us p99 {median(runs, 'p99_ms'):.2f} ms"


def run(bench: Bench) -> list[Figure]:
    args, work = bench.args, bench.work
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    base, body = bench.one_image_folder("ab")
    earlier = work / "earlier"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(earlier), args.commit], check=True)
    workers = {"SAGEMAKER_MODEL_SERVER_WORKERS": str(args.workers)}
    servers = [Server(base, work / "before.log", [sys.executable, str(earlier / "container" / "serve")], **workers),
               Server(base, work / "after.log", [sys.executable, str(ROOT / "container" / "serve")], **workers),
               plain_endpoint(base, args.workers, work / "plain.log")]
    try:
        commit = subprocess.run(["git", "-C", str(earlier), "log", "--oneline", "-1"], capture_output=True,
                                text=True, check=True).stdout.strip()
        print(f"before: {commit}; after: the working tree; {args.rounds} alternating rounds of {args.duration} s; "
              f"{args.workers} workers; model {bench.model_dir()}", flush=True)
        for server in servers:
            first_answer(server, body.read_bytes())
        runs = bench.alternate(servers, body, concurrencies)
    finally:
        bench.stop(servers)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(earlier)], check=False)
    figures = []
    for c, (before, after, plain) in runs.items():
        cpu = sorted(a["cpu_us"] / b["cpu_us"] for b, a in zip(before, after))
        print(f"  concurrency {c:>2}: before {figures_of(before)} | after {figures_of(after)} | "
              f"plain {median(plain, 'rps'):>6.0f} req/s | CPU after/before {statistics.median(cpu):.3f} "
              f"({cpu[0]:.3f}-{cpu[-1]:.3f}) | over plain: before {pair_ratio(before, plain):.3f}, "
              f"after {pair_ratio(after, plain):.3f}", flush=True)
        figures.append(Figure(f"serving.ab.c{c}", f"server CPU per one-image request at concurrency {c}, the working "
                              f"tree against {args.commit}", f"{median(after, 'cpu_us'):.0f} us",
                              f"{args.commit} {median(before, 'cpu_us'):.0f} us", statistics.median(cpu)))
    return figures
