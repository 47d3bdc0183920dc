"""One-image application/json at concurrency 1, 8 and 32, ours against the plain endpoint.

For each subject (the cnn, the mlp, the mlp through a user's transform_fn): requests/s, p50 and p99 latency and
server CPU per request, ours beside the plain endpoint's (`gunicorn -w N trivial_app:app`, gunicorn's default
settings: what a bare Python HTTP stack costs here), and the ratio; for the built-in models also the ceiling:
the same `serve` whose handler only runs the forward pass on an image held in memory, so that what decoding and
encoding may cost before a target is missed shows in the same run. Then where a worker's CPU goes (profile.py).
"""

from __future__ import annotations

import sys

from devkit.servers import Server
from figures import Figure, at_least

from . import profile
from .rig import CONCURRENCIES, Bench, Subject, first_answer, median, pair_ratio, plain_endpoint

# `serve` as it runs, with a handler that only runs the forward pass on one image held in memory and answers a
# constant: the most any decoding and encoding could give one-image requests through this server on this machine.
FORWARD_ONLY_SERVE = """
from mxnet_byoc.serve import allocator
allocator.restart_with_allocator()  # as container/serve does
import numpy as np
from mxnet_byoc.serve import device, digits, network, server

class ForwardOnly:
    def __init__(self, model):
        self.model, self.image = model, np.zeros((1, *model.input_shape), np.float32)

    def invoke(self, body, content_type, accept, headers=None):
        self.model.predict(self.image)
        return b'{"predictions":[{"label":0}]}', "application/json"

digits.loader = lambda default_accept: lambda model_dir: ForwardOnly(network.load(model_dir, device.current()))
raise SystemExit(server.main())
"""


def run(bench: Bench) -> list[Figure]:
    return [figure for subject in bench.subjects for figure in measure(bench, subject)]


def measure(bench: Bench, subject: Subject) -> list[Figure]:
    args, work = bench.args, bench.work
    print(f"\n=== {subject.label} ===\n{args.workers} workers; {args.rounds} rounds of {args.duration} s per figure",
          flush=True)
    ours = bench.serve(subject, "serve.log")
    servers = [ours, plain_endpoint(subject.base, args.workers, work / f"{subject.name}-plain.log")]
    if subject.built_in:  # the ceiling: the same server and model with no decoding or encoding
        servers.append(Server(subject.base, work / f"{subject.name}-forward-only.log",
                              [sys.executable, "-c", FORWARD_ONLY_SERVE],
                              SAGEMAKER_MODEL_SERVER_WORKERS=str(args.workers)))
    body = bench.body(f"{subject.name}-one.json", subject.digit)
    try:
        first_answer(servers[1], b"{}")
        for server in servers[2:]:
            server.wait_loaded()
        runs = bench.alternate(servers, body, CONCURRENCIES)
        profiles = ("skipped (--profile-seconds 0)",) * 2
        if args.profile_seconds:
            profiles = tuple(profile.sample(bench, server, body) for server in servers[:2])
    finally:
        bench.stop(servers)

    print("\none-image application/json (wrk, 1 thread; plain = `gunicorn -w N trivial_app:app`, default settings)")
    print(f"{'concurrency':>11} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU us':>7} | {'plain':>7} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'CPU us':>7} | {'ratio':>5} {'CPU ratio':>9}")
    figures, ceilings = [], []
    for c, (mine, theirs, *forward_only) in runs.items():
        ratio = pair_ratio(mine, theirs)
        print(f"{c:>11} {median(mine, 'rps'):>7.0f} {median(mine, 'p50_ms'):>7.2f} {median(mine, 'p99_ms'):>7.2f} "
              f"{median(mine, 'cpu_us'):>7.0f} | {median(theirs, 'rps'):>7.0f} {median(theirs, 'p50_ms'):>7.2f} "
              f"{median(theirs, 'p99_ms'):>7.2f} {median(theirs, 'cpu_us'):>7.0f} | {ratio:>5.2f} "
              f"{pair_ratio(theirs, mine, 'cpu_us'):>9.2f}")
        plain = f"plain endpoint {median(theirs, 'rps'):,.0f} req/s"
        figures.append(at_least(f"serving.one-image.{subject.name}.c{c}",
                                f"{subject.name}: one-image JSON at concurrency {c}",
                                f"{median(mine, 'rps'):,.0f} req/s", plain, ratio, subject.target))
        if forward_only:
            ceilings.append(at_least(f"serving.one-image.{subject.name}.ceiling.c{c}",
                                     f"{subject.name}: the ceiling (forward pass only) at concurrency {c}",
                                     f"{median(forward_only[0], 'rps'):,.0f} req/s, "
                                     f"{median(forward_only[0], 'cpu_us'):.0f} CPU us per request", plain,
                                     pair_ratio(forward_only[0], theirs), None))
    print("  (ratio: our requests/s over the plain endpoint's, median of adjacent pairs; CPU ratio: the plain "
          "endpoint's server CPU time per request over ours)")
    if ceilings:
        print("  the ceiling, `serve` with a handler that runs the forward pass on one image in memory and answers a "
              "constant (no decoding, no encoding):")
        for figure in ceilings:
            print(figure.line())
    profile.report(*profiles, (median(runs[8][0], "cpu_us"), median(runs[8][1], "cpu_us")), args.workers)
    return figures + ceilings
