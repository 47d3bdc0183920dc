"""Training figures for issue 2: accuracy, wall time, peak memory, and throughput against PyTorch.

    .venv/bin/python bench/train_bench.py [--mnist DIR] [--repeats 2] [--skip-torch]

Runs the real `container/train` (a temp $SAGEMAKER_BASE_DIR, full MNIST) and, for the throughput
comparison, bench/torch_reference.py with torch==2.13.0 in its own virtualenv (.bench-venv, made on
first use). Throughput is measured from outside by wall time: (6-epoch run - 1-epoch run) / 5 epochs,
so start-up, data loading and artifact writing cancel. Runs alternate between the frameworks and the
best of `--repeats` is kept, because this 2-core machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "container" / "train"
TORCH_VENV = ROOT / ".bench-venv"
TORCH_PIN = "torch==2.13.0"
N_TRAIN = 60000

MLP_ARTICLE = {"model": "mlp", "optimizer": "sgd", "momentum": "0", "learning_rate": "0.1",
               "batch_size": "100", "lr_schedule": "constant", "epochs": "3"}


def job_dir(mnist: Path, hps: dict[str, str]) -> Path:
    base = Path(tempfile.mkdtemp(prefix="train-bench-"))
    for channel, prefix in (("training", "train"), ("test", "t10k")):
        d = base / "input" / "data" / channel
        d.mkdir(parents=True)
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{prefix}-{kind}-ubyte.gz"
            (d / name).symlink_to(mnist / name)
    (base / "input" / "config").mkdir(parents=True)
    (base / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hps))
    return base


def run_train(mnist: Path, hps: dict[str, str]) -> tuple[float, dict, int]:
    """Wall seconds, final metrics, peak RSS in kB of one `train` run."""
    base = job_dir(mnist, {"log_interval": "0", **hps})
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    tic = time.perf_counter()
    proc = subprocess.run([str(TRAIN)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - tic
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        sys.exit(f"train failed: {proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    metrics = json.loads((base / "output" / "data" / "metrics.json").read_text())
    subprocess.run(["rm", "-rf", str(base)])
    return wall, metrics, peak if peak > before else 0


def torch_python() -> Path:
    python = TORCH_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TORCH_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", TORCH_PIN, "numpy<2"], check=True)
    return python


def run_torch(mnist: Path, args: list[str]) -> float:
    tic = time.perf_counter()
    subprocess.run([str(torch_python()), str(ROOT / "bench" / "torch_reference.py"), "--mnist", str(mnist), *args],
                   check=True, capture_output=True, text=True)
    return time.perf_counter() - tic


def throughput(mnist: Path, hps: dict[str, str], torch_args: list[str], repeats: int, skip_torch: bool):
    mx_times = {1: [], 6: []}
    th_times = {1: [], 6: []}
    for _ in range(repeats):
        for epochs in (1, 6):
            mx_times[epochs].append(run_train(mnist, {**hps, "epochs": str(epochs)})[0])
            if not skip_torch:
                th_times[epochs].append(run_torch(mnist, [*torch_args, "--epochs", str(epochs)]))
    mx_rate = 5 * N_TRAIN / max(1e-9, min(mx_times[6]) - min(mx_times[1]))
    th_rate = 5 * N_TRAIN / max(1e-9, min(th_times[6]) - min(th_times[1])) if not skip_torch else float("nan")
    return mx_rate, th_rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mnist", type=Path, default=Path(os.environ.get("MNIST_DIR") or ROOT.parent / "shared" / "mnist"))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--skip-torch", action="store_true")
    a = p.parse_args()

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
    mx_rate, th_rate = throughput(a.mnist, mlp_hps, ["--model", "mlp", "--batch-size", "100", "--lr", "0.1"],
                                  a.repeats, a.skip_torch)
    print(f"mlp, plain SGD, batch 100: mxnet {mx_rate:.0f} img/s, pytorch {th_rate:.0f} img/s, "
          f"ratio {mx_rate / th_rate:.2f}x")
    mx_rate, th_rate = throughput(a.mnist, {"augment": "false"},
                                  ["--model", "cnn", "--batch-size", "128", "--optimizer", "adam", "--lr", "0.003",
                                   "--onecycle"], a.repeats, a.skip_torch)
    print(f"cnn (defaults, augmentation off on both sides), batch 128, adam: mxnet {mx_rate:.0f} img/s, "
          f"pytorch {th_rate:.0f} img/s, ratio {mx_rate / th_rate:.2f}x")


if __name__ == "__main__":
    main()
