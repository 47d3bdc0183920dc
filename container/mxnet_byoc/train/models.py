"""The networks. Both take pixels in [0, 1] shaped (N, C, H, W) and return one raw score per class."""

from __future__ import annotations

from mxnet import gluon
from mxnet.gluon import nn


class MLP(gluon.HybridBlock):
    """The article's network: Dense 256 relu, then one output per class."""

    def __init__(self, num_classes: int, hidden_units: int = 256, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.hidden = nn.Dense(hidden_units, activation="relu", flatten=True)
            self.output = nn.Dense(num_classes)

    def hybrid_forward(self, F, x):
        return self.output(self.hidden(x))


class CNN(gluon.HybridBlock):
    """16c5-BN-pool, 32c5-BN-pool, Dense 128: batch norm and early pooling buy accuracy per CPU second.

    Unpadded 5x5 convolutions (28 -> 24 -> 12 -> 8 -> 4 on MNIST) leave smaller maps, so fewer multiply-adds
    than padded ones, for the same accuracy; images under 16 pixels a side get padding so that something is
    left to pool. The dense layer's width is inferred from the data's shape.
    """

    def __init__(self, num_classes: int, input_shape: tuple[int, ...] = (1, 28, 28), **kwargs):
        super().__init__(**kwargs)
        padding = 0 if min(input_shape[-2:]) >= 16 else 2
        with self.name_scope():
            self.features = nn.HybridSequential(prefix="")
            for channels in (16, 32):
                self.features.add(
                    nn.Conv2D(channels, kernel_size=5, padding=padding, use_bias=False),
                    nn.BatchNorm(),
                    nn.Activation("relu"),
                    nn.MaxPool2D(pool_size=2, strides=2),
                )
            self.hidden = nn.Dense(128, use_bias=False, flatten=True)
            self.hidden_bn = nn.BatchNorm()
            self.output = nn.Dense(num_classes)

    def hybrid_forward(self, F, x):
        x = self.features(x)
        x = F.relu(self.hidden_bn(self.hidden(x)))
        return self.output(x)


def build(name: str, num_classes: int, input_shape: tuple[int, ...], hidden_units: int = 256) -> gluon.HybridBlock:
    if name == "mlp":
        net = MLP(num_classes, hidden_units, prefix="mlp_")
    elif name == "cnn":
        net = CNN(num_classes, input_shape, prefix="cnn_")
    else:
        raise ValueError(f"unknown model {name!r}")
    net.hybridize(static_alloc=True, static_shape=True)
    return net
