#!/usr/bin/env python3
"""Training bench: the real `container/train` on full MNIST, each figure beside a baseline measured in the same
run (PyTorch, one host, AWS's toolkit), each target met or NOT met.

    .venv/bin/python bench/train_bench.py [--mode accuracy,throughput,distributed,toolkit] [--mnist DIR]
        [--repeats 2] [--runs 5] [--figures FILE]

`train` runs in a temporary $SAGEMAKER_BASE_DIR, with MNIST from --mnist, else as the tests find it; PyTorch
(torch==2.13.0) in a virtualenv of its own (.bench-venv, made on first use).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from devkit import datasets, idx, jobs
from devkit.project import ROOT
from figures import Figure, Mode, at_least, main
from training import toolkit

TORCH_VENV = ROOT / ".bench-venv"
TORCH_PIN = "torch==2.13.0"
MLP_ARTICLE = {"model": "mlp", "optimizer": "sgd", "momentum": "0", "learning_rate": "0.1",
               "batch_size": "100", "lr_schedule": "constant", "epochs": "3"}
TARGET_CNN_ACCURACY, TARGET_CNN_SECONDS, TARGET_MLP_ACCURACY = 0.994, 60, 0.98
THROUGHPUT = [  # (model, how, our hyperparameters, torch_reference.py's arguments, target over PyTorch's images/s)
    ("mlp", "plain SGD, batch 100", {k: v for k, v in MLP_ARTICLE.items() if k != "epochs"},
     ["--model", "mlp", "--batch-size", "100", "--lr", "0.1"], 1.2),
    ("cnn", "the defaults, augmentation off on both sides, batch 128, adam", {"augment": "false"},
     ["--model", "cnn", "--batch-size", "128", "--optimizer", "adam", "--lr", "0.003", "--onecycle"], 1.0),
]
HOSTS = ["127.0.0.1", "127.0.0.2"]


@dataclass
class Run:
    seconds: float  # wall time of the whole `train` process
    metrics: dict[str, Any]  # output/data/metrics.json
    peak_rss_kib: int


class Bench:
    """What the modes share: the options, MNIST's folder, `train` runs, and PyTorch for the yardstick."""

    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work = args, work

    @cached_property
    def mnist(self) -> Path:
        return self.args.mnist or datasets.find_mnist()

    def train(self, hyperparameters: Mapping[str, str]) -> Run:
        """One `train` run on full MNIST (training and test channels), no progress lines."""
        base = jobs.make_job(Path(tempfile.mkdtemp(prefix="train-", dir=self.work)), self.mnist,
                             {"log_interval": "0", **hyperparameters}, link=True)
        tic = time.perf_counter()
        process = jobs.start_train(base)
        log = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)  # this process's own peak memory, whatever ran before
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            sys.exit(f"train failed: {log[-4000:]}")
        return Run(time.perf_counter() - tic, jobs.metrics_json(base), usage.ru_maxrss)

    @cached_property
    def arrays(self) -> Path:
        """MNIST as the .npy arrays training/torch_reference.py reads (its virtualenv has nothing of ours)."""
        folder = self.work / "arrays"
        folder.mkdir()
        for channel, name in (("training", "train"), ("test", "test")):
            images, labels = idx.mnist_arrays(self.mnist, channel)
            np.save(folder / f"{name}-images.npy", images)
            np.save(folder / f"{name}-labels.npy", labels)
        return folder

    def torch(self, args: list[str]) -> float:
        """Wall seconds of training/torch_reference.py with `args`."""
        python = TORCH_VENV / "bin" / "python"
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(TORCH_VENV)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", TORCH_PIN, "numpy<2"], check=True)
        tic = time.perf_counter()
        subprocess.run([str(python), str(ROOT / "bench" / "training" / "torch_reference.py"), "--arrays",
                        str(self.arrays), *args], check=True, capture_output=True, text=True)
        return time.perf_counter() - tic


def accuracy(bench: Bench) -> list[Figure]:
    print("== accuracy and wall time, full MNIST (60k train, 10k test)", flush=True)
    cnn, mlp, article = bench.train({}), bench.train({"model": "mlp"}), bench.train(MLP_ARTICLE)
    accuracies = [run.metrics["validation_accuracy"] for run in (cnn, mlp, article)]
    print(f"default (cnn): test accuracy {accuracies[0]:.4f}, wall {cnn.seconds:.1f} s, peak RSS "
          f"{cnn.peak_rss_kib / 1024:.0f} MB\nmlp, documented defaults: test accuracy {accuracies[1]:.4f}, wall "
          f"{mlp.seconds:.1f} s\nmlp, article's settings (sgd 0.1, batch 100, 3 epochs): test accuracy "
          f"{accuracies[2]:.4f}, wall {article.seconds:.1f} s", flush=True)
    return [
        Figure("training.cnn.accuracy", "default train (cnn, full MNIST): test accuracy", f"{accuracies[0]:.2%}",
               target=f">= {TARGET_CNN_ACCURACY:.1%}", met=accuracies[0] >= TARGET_CNN_ACCURACY),
        Figure("training.cnn.seconds", "default train: wall time of the whole process", f"{cnn.seconds:.1f} s",
               target=f"<= {TARGET_CNN_SECONDS} s", met=cnn.seconds <= TARGET_CNN_SECONDS),
        Figure("training.cnn.rss", "default train: peak RSS", f"{cnn.peak_rss_kib / 1024:.0f} MB"),
        Figure("training.mlp.accuracy", "mlp, documented defaults: test accuracy", f"{accuracies[1]:.2%}",
               target=f">= {TARGET_MLP_ACCURACY:.1%}", met=accuracies[1] >= TARGET_MLP_ACCURACY),
        Figure("training.mlp-article.accuracy", "mlp, the article's settings: test accuracy", f"{accuracies[2]:.2%}"),
    ]


def throughput(bench: Bench) -> list[Figure]:
    """Images/s from outside, by wall time: (6-epoch run - 1-epoch run) / 5 epochs, so that start-up, data loading
    and artifact writing cancel; the frameworks alternate and the best of --repeats runs is kept."""
    print(f"== throughput, (6-epoch wall - 1-epoch wall) / 5 epochs, best of {bench.args.repeats}, vs PyTorch",
          flush=True)
    figures = []
    for model, how, hyperparameters, torch_args, target in THROUGHPUT:
        walls: dict[str, dict[int, list[float]]] = {"ours": {1: [], 6: []}, "torch": {1: [], 6: []}}
        for _ in range(bench.args.repeats):
            for epochs in (1, 6):
                walls["ours"][epochs].append(bench.train({**hyperparameters, "epochs": str(epochs)}).seconds)
                walls["torch"][epochs].append(bench.torch([*torch_args, "--epochs", str(epochs)]))
        mine, torch = (5 * 60000 / max(1e-9, min(w[6]) - min(w[1])) for w in walls.values())
        print(f"{model}, {how}: mxnet {mine:.0f} img/s, pytorch {torch:.0f} img/s, ratio {mine / torch:.2f}x",
              flush=True)
        figures.append(at_least(f"training.throughput.{model}", f"{model} ({how}): training throughput",
                                f"{mine:,.0f} images/s", f"PyTorch {torch:,.0f} images/s", mine / torch, target))
    return figures


def distributed(bench: Bench) -> list[Figure]:
    """One host and two (parameter servers over loopback), 2 epochs. Both "hosts" share this machine's cores, so
    two cannot be faster here than one: the figure is the cost of the exchange, not a speed-up."""
    channels = idx.write_subsets(bench.mnist, bench.work / "channels", 60000, 10000)
    figures = []
    for name, hyperparameters in (("mlp", {"model": "mlp", "epochs": "2"}), ("cnn", {"epochs": "2"})):
        results = {}
        for hosts in (1, 2):
            bases = [jobs.make_job(Path(tempfile.mkdtemp(dir=bench.work)), channels,
                                   {**hyperparameters, "ps_port": "9510", "log_interval": "0"},
                                   {"resourceconfig.json": {"current_host": host, "hosts": HOSTS[:hosts]}} if hosts > 1
                                   else {})
                     for host in HOSTS[:hosts]]
            tic = time.perf_counter()
            processes = [jobs.start_train(base) for base in bases]
            outputs = [process.communicate()[0] for process in processes]
            wall = time.perf_counter() - tic
            if any(process.returncode for process in processes):
                sys.exit("\n".join(out[-3000:] for out in outputs))
            rate = sum(float(re.findall(r"images_per_sec=([0-9.]+);", out)[-1]) for out in outputs)
            results[hosts] = rate, jobs.metrics_json(bases[0])["validation_accuracy"]
            print(f"{name}, {hosts} host(s): {rate:.0f} images/s (all hosts, last epoch), wall {wall:.1f} s, "
                  f"validation accuracy {results[hosts][1]:.4f}", flush=True)
        (one, one_accuracy), (two, two_accuracy) = results[1], results[2]
        figures.append(Figure(f"training.distributed.{name}", f"{name}: two hosts on this machine's cores (images/s "
                              "of the last epoch, summed; validation accuracy)", f"{two:,.0f} images/s, "
                              f"{two_accuracy:.2%}", f"one host {one:,.0f} images/s, {one_accuracy:.2%}", two / one))
    return figures


MODES = {
    "accuracy": Mode(accuracy, "accuracy, wall time and peak memory: the defaults, the mlp, the article's settings"),
    "throughput": Mode(throughput, "images/s against PyTorch on the same network, batch and machine"),
    "distributed": Mode(distributed, "one host against two (parameter servers over loopback)"),
    "toolkit": Mode(toolkit.run, "script mode: our runner against AWS's sagemaker-training toolkit ($CPU_IMAGE)"),
}


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mnist", type=Path, help="folder of MNIST's four files (default: as the tests find it)")
    parser.add_argument("--repeats", type=int, default=2, help="throughput: runs of each length, the best kept")
    parser.add_argument("--runs", type=int, default=5, help="toolkit: start-ups timed per runner (the median)")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="train-bench-") as work:
        main(__doc__.split("\n\n")[0], MODES, list(MODES), options, lambda args: Bench(args, Path(work)))
