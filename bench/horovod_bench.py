#!/usr/bin/env python3
"""Horovod bench: the same MNIST script (bench/training/mnist_dist.py) in the CPU image, run by `train` in script
mode three ways on this machine: one process (the baseline), Horovod with 2 processes on one host
(`sagemaker_mpi_enabled`), and MXNet's parameter server with 2 workers (two containers on the host network,
as two hosts). Images/s of the last epoch (all workers) and the time to a fixed test accuracy, side by side.

    .venv/bin/python bench/horovod_bench.py [--mnist DIR] [--epochs 3] [--accuracy 0.96] [--figures FILE]

All three share this machine's cores, so two workers cannot train faster here than one: the figures are the
cost of each exchange against one process, not a speed-up. $CPU_IMAGE names the image (make image-cpu).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from devkit import datasets, idx
from devkit.docker import CPU_IMAGE, container_name, docker_command, remove
from devkit.project import ROOT
from figures import Figure, Mode, main

SCRIPT = ROOT / "bench" / "training" / "mnist_dist.py"
EXAMPLE = ROOT / "examples" / "horovod" / "train_hvd_mnist.py"
HOSTS = ["127.0.0.1", "127.0.0.2"]
EPOCH = re.compile(r"epoch=(\d+); seconds=([0-9.]+); test_accuracy=([0-9.]+); images_per_s=([0-9.]+); "
                   r"workers=(\d+);")


@dataclass
class Result:
    name: str
    wall: float  # the whole job, `docker run` to exit
    epochs: list[tuple[int, float, float, float]]  # (epoch, seconds since training began, accuracy, images/s)

    def time_to(self, accuracy: float) -> float | None:
        return next((seconds for _, seconds, acc, _ in self.epochs if acc >= accuracy), None)

    @property
    def rate(self) -> float:
        return self.epochs[-1][3]


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work = args, work
        self.channels = idx.write_subsets(args.mnist or datasets.find_mnist(), work / "channels", 60000, 10000)
        self.code = work / "code"
        self.code.mkdir()
        shutil.copy(SCRIPT, self.code / "train.py")
        shutil.copy(EXAMPLE, self.code / "train_hvd_mnist.py")  # its MNIST reader

    def job(self, name: str, hyperparameters: dict, host: str = "algo-1", hosts: list[str] | None = None) -> Path:
        base = self.work / name / host
        config = base / "input" / "config"
        config.mkdir(parents=True)
        hps = {"sagemaker_program": "train.py", "sagemaker_submit_directory": "/opt/ml/code",
               "epochs": self.args.epochs, **hyperparameters}
        (config / "hyperparameters.json").write_text(json.dumps({k: json.dumps(v) for k, v in hps.items()}))
        (config / "resourceconfig.json").write_text(json.dumps({"current_host": host, "hosts": hosts or [host],
                                                                "network_interface_name": "lo"}))
        for channel in ("training", "test"):
            shutil.copytree(self.channels / channel, base / "input" / "data" / channel)
        return base

    def run(self, name: str, bases: list[Path]) -> Result:
        """`train` in one container per base (host network), all at once; the epoch lines of the first worker."""
        names = [container_name("hvd-bench") for _ in bases]
        tic = time.perf_counter()
        procs = [subprocess.Popen(docker_command(CPU_IMAGE, "train", name=n, mounts={b: "/opt/ml",
                                                                                     self.code: "/opt/ml/code"}),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for n, b in zip(names, bases)]
        try:
            outputs = [p.communicate(timeout=1800)[0] for p in procs]
        finally:
            for n in names:
                remove(n)
        wall = time.perf_counter() - tic
        if any(p.returncode for p in procs):
            raise SystemExit(f"{name} failed:\n" + "\n".join(o[-3000:] for o in outputs))
        epochs = [(int(m[0]), float(m[1]), float(m[2]), float(m[3])) for m in EPOCH.findall("\n".join(outputs))]
        result = Result(name, wall, epochs)
        reached = result.time_to(self.args.accuracy)
        print(f"{name}: {result.rate:,.0f} images/s (last epoch, all workers), test accuracy {epochs[-1][2]:.4f}, "
              f"{f'{reached:.1f} s' if reached else 'never'} to {self.args.accuracy:.0%}, job wall {wall:.1f} s",
              flush=True)
        return result


def compare(bench: Bench) -> list[Figure]:
    print(f"== MNIST MLP, {bench.args.epochs} epochs, global batch 128, on this machine's cores ({CPU_IMAGE})",
          flush=True)
    single = bench.run("1 process", [bench.job("single", {"dist": "single"})])
    horovod = bench.run("Horovod, 2 processes", [bench.job("horovod", {
        "dist": "horovod", "sagemaker_mpi_enabled": True, "sagemaker_mpi_num_of_processes_per_host": 2})])
    ps = bench.run("parameter server, 2 workers", [
        bench.job("ps", {"dist": "ps", "sagemaker_parameter_server_enabled": True, "_ps_port": 9610}, host, HOSTS)
        for host in HOSTS])
    target = bench.args.accuracy
    print(f"\n{'':32}{'images/s':>12}{'time to ' + format(target, '.0%'):>16}{'final accuracy':>16}")
    for r in (single, horovod, ps):
        reached = r.time_to(target)
        print(f"{r.name:32}{r.rate:>12,.0f}{(f'{reached:.1f} s' if reached else 'never'):>16}{r.epochs[-1][2]:>16.4f}")
    figures = []
    for key, r in (("horovod", horovod), ("ps", ps)):
        reached, base = r.time_to(target), single.time_to(target)
        figures.append(Figure(f"training.horovod.{key}.rate", f"{r.name}: images/s of the last epoch",
                              f"{r.rate:,.0f} images/s", f"1 process {single.rate:,.0f} images/s",
                              r.rate / single.rate))
        figures.append(Figure(f"training.horovod.{key}.time-to-accuracy", f"{r.name}: seconds to {target:.0%} test "
                              "accuracy", f"{reached:.1f} s" if reached else "never",
                              f"1 process {base:.1f} s" if base else "1 process never",
                              reached / base if reached and base else None))
    return figures


MODES = {"compare": Mode(compare, "1 process, Horovod with 2 processes, the parameter server with 2 workers")}


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mnist", type=Path, help="folder of MNIST's four files (default: as the tests find it)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--accuracy", type=float, default=0.96, help="the test accuracy timed to")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="horovod-bench-") as work:
        main(__doc__.split("\n\n")[0], MODES, list(MODES), options, lambda args: Bench(args, Path(work)))
