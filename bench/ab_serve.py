#!/usr/bin/env python3
"""A change to `serve` measured whole: the working tree's `serve` against the same `serve` at an earlier commit,
side by side on one model, under `wrk`, with one-image JSON requests.

For each concurrency both servers (and the plain endpoint, `gunicorn -w N trivial_app:app`) get --rounds runs of
--duration seconds in alternation. Printed: requests/s and server CPU per request (medians), the change's effect as
the median and the range of the per-round ratios "after over before" of server CPU per request (the steadiest figure
on a shared machine), each server's p99 latency (median over the rounds), and each server's requests/s over the
plain endpoint's. The earlier commit is checked out into a temporary git worktree and its `container/serve` run
with that worktree's code (its folder comes first on the import path); the environment (the venv's gunicorn, Flask,
numpy, MXNet) is this one's.
Usage: .venv/bin/python bench/ab_serve.py [--commit HEAD] [--model cnn] [--model-dir DIR] [--rounds 6]
       [--duration 3] [--concurrency 1,8,32]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import serve_bench
from devkit.project import ROOT
from devkit.servers import Server
from serve_bench import median


def worktree(commit: str, folder: Path) -> Path:
    """`commit` checked out (detached) at `folder`; the caller removes it with `remove_worktree`."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(folder), commit], check=True)
    return folder


def remove_worktree(folder: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)], check=False)


def figures(runs: list[dict[str, float]]) -> str:
    return f"{median(runs, 'rps'):>6.0f} req/s {median(runs, 'cpu_us'):>4.0f} us p99 {median(runs, 'p99_ms'):.2f} ms"


def summary(before: list[dict], after: list[dict], plain: list[dict]) -> str:
    cpu = sorted(a["cpu_us"] / b["cpu_us"] for b, a in zip(before, after))
    over_plain = [statistics.median(x["rps"] / p["rps"] for x, p in zip(runs, plain)) for runs in (before, after)]
    return (f"before {figures(before)} | after {figures(after)} | "
            f"plain {median(plain, 'rps'):>6.0f} req/s | CPU after/before {statistics.median(cpu):.3f} "
            f"({cpu[0]:.3f}-{cpu[-1]:.3f}) | over plain: before {over_plain[0]:.3f}, after {over_plain[1]:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commit", default="HEAD", help="the `serve` to compare the working tree's with")
    parser.add_argument("--model", default="cnn", help="the network container/train trains, when no --model-dir")
    parser.add_argument("--model-dir", type=Path, help="serve this model directory instead (one with code/ is "
                        "served in script mode)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=int, default=3)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    wrk = serve_bench.ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="ab-serve-") as folder:
        work = Path(folder)
        model_dir = args.model_dir or serve_bench.train_model(work / "train", args.model, 1)
        script, body = serve_bench.one_image_folder(work, model_dir)
        earlier = worktree(args.commit, work / "earlier")
        workers = {"SAGEMAKER_MODEL_SERVER_WORKERS": str(args.workers)}
        servers = {
            "before": Server(work, work / "before.log", [sys.executable, str(earlier / "container" / "serve")],
                             **workers),
            "after": Server(work, work / "after.log", [sys.executable, str(ROOT / "container" / "serve")], **workers),
            "plain": serve_bench.plain_endpoint(work, args.workers, work / "plain.log"),
        }
        try:
            commit = subprocess.run(["git", "-C", str(earlier), "log", "--oneline", "-1"], capture_output=True,
                                    text=True, check=True).stdout.strip()
            print(f"before: {commit}; after: the working tree; {args.rounds} alternating rounds of {args.duration} s; "
                  f"{args.workers} workers; model {model_dir}", flush=True)
            for one in servers.values():
                serve_bench.wait_for_label(one, body.read_bytes(), None)
            for concurrency in map(int, args.concurrency.split(",")):
                runs: dict[str, list[dict]] = {name: [] for name in servers}
                for round_ in range(args.rounds):
                    order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
                    for name in order:
                        runs[name].append(serve_bench.run_wrk(wrk, script, servers[name], body, "application/json",
                                                              concurrency, args.duration))
                print(f"  concurrency {concurrency:>2}: {summary(runs['before'], runs['after'], runs['plain'])}",
                      flush=True)
        finally:
            for one in servers.values():
                one.stop()
            remove_worktree(earlier)


if __name__ == "__main__":
    main()
