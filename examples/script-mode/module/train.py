"""MNIST with MXNet's Module API in script mode, as scripts for AWS's MXNet containers were written."""
import argparse
import gzip
import logging
import os

import mxnet as mx
import numpy as np

from sagemaker_mxnet_container.training_utils import save


def read_idx(path):  # MNIST's file format, gzipped or not
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        raw = f.read()
    shape = np.frombuffer(raw, ">u4", raw[3], 4)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * raw[3]).reshape(shape)


def load(channel, batch_size, shuffle):
    files = sorted(os.listdir(channel))
    images = read_idx(os.path.join(channel, next(f for f in files if "images" in f)))
    labels = read_idx(os.path.join(channel, next(f for f in files if "labels" in f)))
    return mx.io.NDArrayIter(images[:, None] / 255.0, labels, batch_size, shuffle=shuffle)


logging.basicConfig(level=logging.INFO)  # Module.fit reports each epoch through logging
parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--batch-size", type=int, default=100)
parser.add_argument("--learning-rate", type=float, default=0.1)
parser.add_argument("--model-dir", default=os.environ["SM_MODEL_DIR"])
parser.add_argument("--train", default=os.environ["SM_CHANNEL_TRAINING"])
parser.add_argument("--test", default=os.environ["SM_CHANNEL_TEST"])
args = parser.parse_args()

data = mx.sym.flatten(mx.sym.var("data"))
hidden = mx.sym.Activation(mx.sym.FullyConnected(data, num_hidden=128), act_type="relu")
net = mx.sym.SoftmaxOutput(mx.sym.FullyConnected(hidden, num_hidden=10), name="softmax")
module = mx.mod.Module(net, context=mx.cpu())
module.fit(load(args.train, args.batch_size, True), eval_data=load(args.test, args.batch_size, False),
           optimizer="sgd", optimizer_params={"learning_rate": args.learning_rate, "momentum": 0.9},
           initializer=mx.init.Xavier(), eval_metric="acc", num_epoch=args.epochs)
save(args.model_dir, module)  # model-symbol.json, model-0000.params, model-shapes.json (first host only)
