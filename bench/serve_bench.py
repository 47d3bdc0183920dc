#!/usr/bin/env python3
"""Serving bench: the real `serve` (gunicorn, production settings) under `wrk`, each figure beside a baseline
measured in the same run, each target met or NOT met.

    .venv/bin/python bench/serve_bench.py [--mode one-image,batch,...] [--models cnn,mlp] [--rounds N]
        [--duration S] [--workers 2] [--model-dir DIR] [--figures FILE]

Each mode runs alone or with others (one set-up: models trained once by `container/train`, 1 epoch); --rounds and
--duration, when given, replace every mode's own. `uptime` is printed at the start and the end.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from figures import Mode, main
from serving import ab, allocator, aws, batch, fastpath, load, mme, one_image, rig, startup

MODES = {
    "one-image": Mode(one_image.run, "one-image JSON against the plain endpoint, the ceiling, where a worker's CPU "
                      "goes", {"rounds": 3, "duration": 5}),
    "batch": Mode(batch.run, "1,000-image npy batches against the in-process forward pass",
                  {"rounds": 3, "duration": 5}),
    "startup": Mode(startup.run, "start of serve to the first correct prediction; PSS after load", {"duration": 5}),
    "allocator": Mode(allocator.run, "glibc's malloc, jemalloc and tcmalloc in serve", {"rounds": 6, "duration": 3}),
    "aws": Mode(aws.run, "script handlers against AWS's MXNet serving stack", {"rounds": 3, "duration": 5}),
    "mme": Mode(mme.run, "multi-model endpoints against AWS's stack: load to first answer, memory per model, "
                "requests/s across the models", {"rounds": 3, "duration": 5}),
    "ab": Mode(ab.run, "serve against serve at --commit", {"rounds": 6, "duration": 3}),
    "fastpath": Mode(fastpath.run, "each fast path against the plain code it replaces, its gain beside its noise",
                     {"rounds": 8, "duration": 3}),
    "load": Mode(load.run, "steady load, then a worker killed every --kill-every s: failed requests per kill",
                 {"duration": 30}),
}
DEFAULT = ["one-image", "batch", "startup", "allocator", "aws", "mme", "fastpath", "load"]


def options(parser) -> None:
    parser.add_argument("--models", default="cnn,mlp", help="networks container/train trains, measured in turn (the "
                        "modes that serve one model take the first)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--model-dir", type=Path, help="serve this model directory (with the mlp's target) instead")
    parser.add_argument("--duration", type=int, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, help="alternating runs per figure (the median is shown)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--profile-seconds", type=int, default=4, help="py-spy sampling per model (0: none)")
    parser.add_argument("--ways", default="transform_fn,default handlers", help="aws: which ways, comma-separated")
    parser.add_argument("--aws-venv", type=Path, default=aws.AWS_VENV, help="aws: where AWS's stack is installed")
    parser.add_argument("--mme-models", type=int, default=20, help="mme: the models loaded on each stack")
    parser.add_argument("--commit", default="HEAD", help="ab: the `serve` to compare the working tree's with")
    parser.add_argument("--concurrency", default="1,8,32", help="ab: concurrencies")
    parser.add_argument("--load-concurrency", type=int, default=32, help="load: wrk's connections")
    parser.add_argument("--kill-every", type=float, default=5.0, help="load: seconds between two SIGKILLs")
    parser.add_argument("--keep-alive-s", type=int, help="load: serve's MXNET_BYOC_KEEP_ALIVE_S (default: serve's)")
    parser.add_argument("--load-against", help="load: the same runs first on serve at this commit")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as work:
        main(sys.modules[__name__].__doc__.split("\n\n")[0], MODES, DEFAULT, options,
             lambda args: rig.Bench(args, Path(work)))
