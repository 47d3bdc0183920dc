"""Images/s of one host and of two hosts (parameter servers over loopback) on this machine.

    .venv/bin/python bench/distributed_bench.py [--mnist DIR]

Both "hosts" share this machine's 2 cores, so two hosts cannot be faster here than one: the figure shows
the cost of the parameter-server exchange, not a speed-up. docs/scaling.md estimates real clusters.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

from devkit import datasets, idx, jobs

HOSTS = ["127.0.0.1", "127.0.0.2"]


def run(channels: Path, hosts: int, hps: dict[str, str]) -> tuple[float, float, float]:
    """Summed images/s of the last epoch, wall seconds, final validation accuracy."""
    tmp = Path(tempfile.mkdtemp(prefix="dist-bench-"))
    bases = []
    for i in range(hosts):
        config = {"resourceconfig.json": {"current_host": HOSTS[i], "hosts": HOSTS[:hosts]}} if hosts > 1 else {}
        bases.append(jobs.make_job(tmp / str(i), channels, {**hps, "log_interval": "0"}, config))
    tic = time.perf_counter()
    procs = [jobs.start_train(b) for b in bases]
    outs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - tic
    rate = 0.0
    for p, out in zip(procs, outs):
        if p.returncode:
            sys.exit(out[-3000:])
        rate += float(re.findall(r"images_per_sec=([0-9.]+);", out)[-1])
    return rate, wall, jobs.metrics_json(bases[0])["validation_accuracy"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mnist", type=Path, help="folder of MNIST's four files (default: as the tests find it)")
    a = p.parse_args()
    channels = Path(tempfile.mkdtemp(prefix="dist-bench-data-"))
    idx.write_subsets(a.mnist or datasets.find_mnist(), channels, 60000, 10000)
    for name, hps in (("mlp", {"model": "mlp", "epochs": "2"}), ("cnn", {"epochs": "2"})):
        for hosts in (1, 2):
            rate, wall, acc = run(channels, hosts, {**hps, "ps_port": "9510"})
            print(f"{name}, {hosts} host(s): {rate:.0f} images/s (all hosts, last epoch), wall {wall:.1f} s, "
                  f"validation accuracy {acc:.4f}", flush=True)


if __name__ == "__main__":
    main()
