"""The same networks, batch sizes and optimizers in PyTorch: the yardstick for bench/train_bench.py --mode throughput.

Run with a virtualenv that has torch==2.13.0 (the bench makes one). MNIST comes as the four
.npy arrays the bench writes (this virtualenv has nothing of ours). Prints one line per epoch.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def build(model: str) -> nn.Module:
    if model == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, padding=2, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 128, bias=False), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 10),
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arrays", type=Path, required=True, help="folder of {train,test}-{images,labels}.npy")
    p.add_argument("--model", default="mlp")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--optimizer", default="sgd")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--onecycle", action="store_true")
    a = p.parse_args()
    torch.manual_seed(0)
    x = torch.from_numpy(np.load(a.arrays / "train-images.npy").astype(np.float32) / 255).unsqueeze(1)
    y = torch.from_numpy(np.load(a.arrays / "train-labels.npy").astype(np.int64))
    xt = torch.from_numpy(np.load(a.arrays / "test-images.npy").astype(np.float32) / 255).unsqueeze(1)
    yt = torch.from_numpy(np.load(a.arrays / "test-labels.npy").astype(np.int64))
    net = build(a.model)
    if a.optimizer == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=a.lr)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=a.lr)
    loss_fn = nn.CrossEntropyLoss()
    steps = len(x) // a.batch_size
    total, warm = steps * a.epochs, int(steps * a.epochs * 0.2)
    t = 0
    for epoch in range(a.epochs):
        net.train()
        perm = torch.randperm(len(x))
        xp, yp = x[perm], y[perm]
        tic = time.perf_counter()
        for i in range(steps):
            if a.onecycle:
                lr = a.lr / 25 + (a.lr - a.lr / 25) * t / warm if t < warm else \
                    a.lr * 0.5 * (1 + math.cos(math.pi * (t - warm) / max(1, total - warm)))
                for g in opt.param_groups:
                    g["lr"] = lr
            s = slice(i * a.batch_size, (i + 1) * a.batch_size)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(xp[s]), yp[s])
            loss.backward()
            opt.step()
            t += 1
        elapsed = time.perf_counter() - tic
        net.eval()
        with torch.no_grad():
            acc = (net(xt).argmax(1) == yt).float().mean().item()
        print(f"epoch={epoch + 1}; validation_accuracy={acc:.4f}; images_per_sec={steps * a.batch_size / elapsed:.0f};",
              flush=True)


if __name__ == "__main__":
    main()
