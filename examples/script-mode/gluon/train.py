"""MNIST with Gluon in script mode: SageMaker runs `python train.py --epochs 1 --batch-size 100 ...`."""
import argparse
import gzip
import json
import os

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon


def read_idx(path):  # MNIST's file format, gzipped or not
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        raw = f.read()
    shape = np.frombuffer(raw, ">u4", raw[3], 4)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * raw[3]).reshape(shape)


def load(channel):  # images (N, 1, 28, 28) in [0, 1] and labels, from the channel's two IDX files
    files = sorted(os.listdir(channel))
    images = read_idx(os.path.join(channel, next(f for f in files if "images" in f)))
    labels = read_idx(os.path.join(channel, next(f for f in files if "labels" in f)))
    return images[:, None] / np.float32(255), labels


parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--batch-size", type=int, default=100)
parser.add_argument("--learning-rate", type=float, default=0.1)
parser.add_argument("--kvstore", default="device")  # "dist_sync" with the parameter server on
parser.add_argument("--model-dir", default=os.environ["SM_MODEL_DIR"])
parser.add_argument("--train", default=os.environ["SM_CHANNEL_TRAINING"])
parser.add_argument("--test", default=os.environ.get("SM_CHANNEL_TEST"))
args = parser.parse_args()
host, hosts = os.environ["SM_CURRENT_HOST"], json.loads(os.environ["SM_HOSTS"])

kvstore = mx.kv.create(args.kvstore)
x, y = load(args.train)
x, y = x[kvstore.rank::kvstore.num_workers], y[kvstore.rank::kvstore.num_workers]  # this host's share
batches = mx.io.NDArrayIter(x, y, args.batch_size // kvstore.num_workers, shuffle=True)
net = gluon.nn.HybridSequential()
net.add(gluon.nn.Dense(128, activation="relu"), gluon.nn.Dense(10))
net.initialize(mx.init.Xavier())
net.hybridize()
trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": args.learning_rate, "momentum": 0.9},
                        kvstore=kvstore)
loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
for epoch in range(1, args.epochs + 1):
    batches.reset()
    accuracy = mx.metric.Accuracy()
    for batch in batches:
        with autograd.record():
            out = net(batch.data[0])
            loss = loss_fn(out, batch.label[0])
        loss.backward()
        trainer.step(args.batch_size)  # gradients are summed over hosts: scaled by the global batch
        accuracy.update(batch.label[0], out)
    print(f"epoch={epoch}; train_accuracy={accuracy.get()[1]:.4f}; host={host};")
if args.test:
    x_test, y_test = load(args.test)
    accuracy = mx.metric.Accuracy()
    accuracy.update(mx.nd.array(y_test), net(mx.nd.array(x_test)))
    print(f"test_accuracy={accuracy.get()[1]:.4f}; host={host};")
if host == hosts[0]:  # one host writes the model: model-symbol.json, model-0000.params, model-shapes.json
    net.export(os.path.join(args.model_dir, "model"), epoch=0)
    with open(os.path.join(args.model_dir, "model-shapes.json"), "w") as f:
        json.dump([{"name": "data", "shape": [1, 1, 28, 28]}], f)
