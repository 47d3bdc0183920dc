"""Training figures for issue 2: accuracy, wall time, peak memory, and throughput against PyTorch.

    .venv/bin/python bench/train_bench.py [--mnist DIR] [--repeats 2] [--skip-torch]

Runs the real `container/train` (a temp $SAGEMAKER_BASE_DIR, full MNIST: --mnist, else as the tests find
it) and, for the throughput comparison, bench/torch_reference.py with torch==2.13.0 in its own
virtualenv (.bench-venv, made on first use), on the same arrays saved as .npy. Throughput is measured
from outside by wall time: (6-epoch run - 1-epoch run) / 5 epochs, so start-up, data loading and artifact
writing cancel. Runs alternate between the frameworks and the best of `--repeats` is kept, because this
2-core machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import atexit
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from devkit import datasets, idx, jobs
from devkit.project import ROOT

TORCH_VENV = ROOT / ".bench-venv"
TORCH_PIN = "torch==2.13.0"
N_TRAIN = 60000

MLP_ARTICLE = {"model": "mlp", "optimizer": "sgd", "momentum": "0", "learning_rate": "0.1",
               "batch_size": "100", "lr_schedule": "constant", "epochs": "3"}


def run_train(mnist: Path, hps: dict[str, str]) -> tuple[float, dict, int]:
    """Wall seconds, final metrics, peak RSS in kB of one `train` run."""
    base = jobs.make_job(Path(tempfile.mkdtemp(prefix="train-bench-")), mnist, {"log_interval": "0", **hps},
                         link=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    run = jobs.run_train(base)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if run.returncode != 0:
        sys.exit(f"train failed: {run.log[-4000:]}")
    metrics = jobs.metrics_json(base)
    shutil.rmtree(base)
    return run.seconds, metrics, peak if peak > before else 0


def save_arrays(mnist: Path) -> Path:
    """MNIST as the .npy arrays bench/torch_reference.py reads (its virtualenv has nothing of ours)."""
    folder = Path(tempfile.mkdtemp(prefix="train-bench-arrays-"))
    atexit.register(shutil.rmtree, folder, True)
    for channel, name in (("training", "train"), ("test", "test")):
        images, labels = idx.mnist_arrays(mnist, channel)
        np.save(folder / f"{name}-images.npy", images)
        np.save(folder / f"{name}-labels.npy", labels)
    return folder


def torch_python() -> Path:
    python = TORCH_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TORCH_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", TORCH_PIN, "numpy<2"], check=True)
    return python


def run_torch(arrays: Path, args: list[str]) -> float:
    tic = time.perf_counter()
    subprocess.run([str(torch_python()), str(ROOT / "bench" / "torch_reference.py"), "--arrays", str(arrays), *args],
                   check=True, capture_output=True, text=True)
    return time.perf_counter() - tic


def throughput(mnist: Path, arrays: Path, hps: dict[str, str], torch_args: list[str], repeats: int,
               skip_torch: bool):
    mx_times = {1: [], 6: []}
    th_times = {1: [], 6: []}
    for _ in range(repeats):
        for epochs in (1, 6):
            mx_times[epochs].append(run_train(mnist, {**hps, "epochs": str(epochs)})[0])
            if not skip_torch:
                th_times[epochs].append(run_torch(arrays, [*torch_args, "--epochs", str(epochs)]))
    mx_rate = 5 * N_TRAIN / max(1e-9, min(mx_times[6]) - min(mx_times[1]))
    th_rate = 5 * N_TRAIN / max(1e-9, min(th_times[6]) - min(th_times[1])) if not skip_torch else float("nan")
    return mx_rate, th_rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mnist", type=Path, help="folder of MNIST's four files (default: as the tests find it)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--skip-torch", action="store_true")
    a = p.parse_args()
    a.mnist = a.mnist or datasets.find_mnist()
    arrays = save_arrays(a.mnist)

    print("== accuracy and wall time, full MNIST (60k train, 10k test)")
    wall, m, peak = run_train(a.mnist, {})
    print(f"default (cnn): test accuracy {m['validation_accuracy']:.4f}, wall {wall:.1f} s, "
          f"peak RSS {peak / 1024:.0f} MB")
    wall, m, _ = run_train(a.mnist, {"model": "mlp"})
    print(f"mlp, documented defaults: test accuracy {m['validation_accuracy']:.4f}, wall {wall:.1f} s")
    wall, m, _ = run_train(a.mnist, MLP_ARTICLE)
    print(f"mlp, article's settings (sgd 0.1, batch 100, 3 epochs): test accuracy {m['validation_accuracy']:.4f}, "
          f"wall {wall:.1f} s")

    print(f"== throughput, (6-epoch wall - 1-epoch wall) / 5 epochs, best of {a.repeats}, vs PyTorch 2.13.0")
    mlp_hps = {k: v for k, v in MLP_ARTICLE.items() if k != "epochs"}
    mx_rate, th_rate = throughput(a.mnist, arrays, mlp_hps, ["--model", "mlp", "--batch-size", "100", "--lr", "0.1"],
                                  a.repeats, a.skip_torch)
    print(f"mlp, plain SGD, batch 100: mxnet {mx_rate:.0f} img/s, pytorch {th_rate:.0f} img/s, "
          f"ratio {mx_rate / th_rate:.2f}x")
    mx_rate, th_rate = throughput(a.mnist, arrays, {"augment": "false"},
                                  ["--model", "cnn", "--batch-size", "128", "--optimizer", "adam", "--lr", "0.003",
                                   "--onecycle"], a.repeats, a.skip_torch)
    print(f"cnn (defaults, augmentation off on both sides), batch 128, adam: mxnet {mx_rate:.0f} img/s, "
          f"pytorch {th_rate:.0f} img/s, ratio {mx_rate / th_rate:.2f}x")


if __name__ == "__main__":
    main()
