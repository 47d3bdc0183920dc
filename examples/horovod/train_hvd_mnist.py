"""MNIST with Gluon and Horovod: the script a user of AWS's MXNet containers ran with
distribution={"mpi": {"enabled": True, "processes_per_host": N}}, unchanged in this image.

Every rank trains on its own share of the training set; hvd.DistributedTrainer averages the gradients over
all ranks after each step, so N ranks with --batch-size B (the global batch, B // N per rank) take the same
steps as one process with batch B. Rank 0 measures the test accuracy, prints the metrics and saves the model
in MXNet's layout (what `serve` loads). Every rank also writes what Horovod told it (rank, local rank, size)
and the result of an allreduce, a broadcast and an allgather into the model folder, as checks.

Data: the `training` and `test` channels hold images.idx and labels.idx (MNIST's IDX format).
"""

import argparse
import json
import os
import socket
import time

import horovod.mxnet as hvd
import mxnet as mx
import numpy as np


def read_idx(path):
    raw = open(path, "rb").read()
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(raw[3])]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * raw[3]).reshape(dims)


def channel(name):
    folder = os.environ[f"SM_CHANNEL_{name.upper()}"]
    images = read_idx(os.path.join(folder, "images.idx")).reshape(-1, 1, 28, 28).astype("float32") / 255
    return images, read_idx(os.path.join(folder, "labels.idx")).astype("float32")


def collectives():
    """One allreduce, broadcast and allgather, whose results every rank can check."""
    rank, size = hvd.rank(), hvd.size()
    summed = float(hvd.allreduce(mx.nd.array([rank + 1.0]), average=False, name="rank_sum").asscalar())
    broadcast = float(hvd.broadcast(mx.nd.array([rank * 10.0 + 7]), root_rank=0, name="from_root").asscalar())
    gathered = hvd.allgather(mx.nd.array([[rank]] * (rank + 1)), name="ranks").asnumpy().ravel().tolist()
    return {"allreduce_sum": summed, "expected_sum": size * (size + 1) / 2, "broadcast": broadcast,
            "allgather": gathered}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128, help="global: split over the ranks")
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    mx.random.seed(args.seed)
    np.random.seed(args.seed)
    model_dir = os.environ.get("SM_MODEL_DIR", "/opt/ml/model")

    x, y = channel("training")
    x, y = x[rank::size], y[rank::size]  # this rank's share
    per_rank = max(1, args.batch_size // size)
    # Every rank takes the same number of steps: a collective waits for all of them.
    steps = len(y) // per_rank
    steps = int(hvd.allreduce(mx.nd.array([steps]), average=False, name="steps").asscalar()) // size

    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Dense(args.hidden, activation="relu", in_units=784),
            mx.gluon.nn.Dense(10, in_units=args.hidden))
    net.initialize(mx.init.Xavier())
    net.hybridize()
    params = net.collect_params()
    hvd.broadcast_parameters(params, root_rank=0)  # every rank starts from rank 0's weights
    trainer = hvd.DistributedTrainer(params, "sgd", {"learning_rate": args.learning_rate, "momentum": 0.9})
    loss_fn = mx.gluon.loss.SoftmaxCrossEntropyLoss()

    started = time.monotonic()
    for epoch in range(1, args.epochs + 1):
        order = np.random.permutation(len(y))
        total = 0.0
        for step in range(steps):
            batch = order[step * per_rank:(step + 1) * per_rank]
            data, label = mx.nd.array(x[batch].reshape(len(batch), -1)), mx.nd.array(y[batch])
            with mx.autograd.record():
                loss = loss_fn(net(data), label)
            loss.backward()
            trainer.step(len(batch))
            total += loss.mean().asscalar()
        if rank == 0:
            print(f"epoch={epoch}; train_loss={total / max(steps, 1):.4f}; ranks={size};", flush=True)
    seconds = time.monotonic() - started

    checks = {"rank": rank, "local_rank": hvd.local_rank(), "size": size, "local_size": hvd.local_size(),
              "host": os.environ.get("SM_CURRENT_HOST"), "hostname": socket.gethostname(), **collectives()}
    with open(os.path.join(model_dir, f"hvd-rank-{rank}.json"), "w") as f:
        json.dump(checks, f)

    if rank == 0:
        test_x, test_y = channel("test")
        predicted = np.concatenate([net(mx.nd.array(test_x[i:i + 1000].reshape(-1, 784))).asnumpy().argmax(axis=1)
                                    for i in range(0, len(test_y), 1000)])
        accuracy = float((predicted == test_y).mean())
        images_per_s = steps * per_rank * size * args.epochs / seconds
        print(f"test_accuracy={accuracy:.4f}; images_per_s={images_per_s:.0f}; seconds={seconds:.2f};", flush=True)
        net.export(os.path.join(model_dir, "model"), 0)
        with open(os.path.join(model_dir, "model-shapes.json"), "w") as f:
            json.dump([{"name": "data", "shape": [1, 784]}], f)
        output = os.environ.get("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data")
        os.makedirs(output, exist_ok=True)
        with open(os.path.join(output, "metrics.json"), "w") as f:
            json.dump({"test_accuracy": accuracy, "images_per_s": images_per_s, "seconds": seconds,
                       "ranks": size, "steps_per_epoch": steps}, f)


if __name__ == "__main__":
    main()
