"""One MNIST training script for bench/horovod_bench.py, run by the image's `train` in script mode: the same
network, data, global batch, optimizer and epochs whichever way it is distributed.

    --dist single    one process, a plain gluon.Trainer
    --dist horovod   under mpirun (sagemaker_mpi_enabled): hvd.DistributedTrainer averages the gradients
    --dist ps        MXNet's parameter server (sagemaker_parameter_server_enabled): kvstore="dist_sync"

Each worker trains on its share of the data with the global batch split between the workers. After every
epoch the first worker measures the test accuracy and prints `epoch=N; seconds=S; test_accuracy=A;
images_per_s=R;` (S since training started; R for all workers together over that epoch).
"""

import argparse
import time

import mxnet as mx
import numpy as np
from train_hvd_mnist import channel as mnist_channel  # examples/horovod, beside this file in the code folder


def channel(name):
    images, labels = mnist_channel(name)
    return images.reshape(len(labels), 784), labels


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dist", choices=["single", "horovod", "ps"], default="single")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128, help="global: split over the workers")
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--hidden", type=int, default=256)
    args, _ = parser.parse_known_args()  # the platform's own (_ps_port) are not this script's

    mx.random.seed(1)
    np.random.seed(1)
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Dense(args.hidden, activation="relu", in_units=784),
            mx.gluon.nn.Dense(args.hidden, activation="relu", in_units=args.hidden),
            mx.gluon.nn.Dense(10, in_units=args.hidden))
    net.initialize(mx.init.Xavier())
    net.hybridize()
    optimizer = ("sgd", {"learning_rate": args.learning_rate, "momentum": 0.9})
    if args.dist == "horovod":
        import horovod.mxnet as hvd

        hvd.init()
        rank, size = hvd.rank(), hvd.size()
        hvd.broadcast_parameters(net.collect_params(), root_rank=0)
        trainer = hvd.DistributedTrainer(net.collect_params(), *optimizer)
    elif args.dist == "ps":
        kv = mx.kv.create("dist_sync")
        rank, size = kv.rank, kv.num_workers
        trainer = mx.gluon.Trainer(net.collect_params(), *optimizer, kvstore=kv)
    else:
        rank, size = 0, 1
        trainer = mx.gluon.Trainer(net.collect_params(), *optimizer)

    x, y = channel("training")
    x, y = x[rank::size], y[rank::size]
    per_worker = args.batch_size // size
    steps = len(y) // per_worker
    if size > 1:  # every worker the same number of steps: fewer leaves the others waiting in a push
        steps = min(len(channel("training")[1][r::size]) for r in range(size)) // per_worker
    test_x, test_y = channel("test") if rank == 0 else (None, None)
    loss_fn = mx.gluon.loss.SoftmaxCrossEntropyLoss()
    started = time.monotonic()
    for epoch in range(1, args.epochs + 1):
        tic = time.monotonic()
        order = np.random.permutation(len(y))
        for step in range(steps):
            batch = order[step * per_worker:(step + 1) * per_worker]
            data, label = mx.nd.array(x[batch]), mx.nd.array(y[batch])
            with mx.autograd.record():
                loss = loss_fn(net(data), label)
            loss.backward()
            trainer.step(len(batch))
        mx.nd.waitall()
        rate = steps * per_worker * size / (time.monotonic() - tic)
        if rank == 0:
            predicted = net(mx.nd.array(test_x)).asnumpy().argmax(axis=1)
            accuracy = float((predicted == test_y).mean())
            print(f"epoch={epoch}; seconds={time.monotonic() - started:.2f}; test_accuracy={accuracy:.4f}; "
                  f"images_per_s={rate:.0f}; workers={size};", flush=True)


if __name__ == "__main__":
    main()
