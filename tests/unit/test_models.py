"""The two networks (models.py): shapes in and out, and the sizes README.md and docs/scaling.md state."""

from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest

from mxnet_byoc.train import models


def trainable(net) -> int:
    return sum(int(np.prod(p.shape)) for p in net.collect_params().values() if p.grad_req != "null")


@pytest.mark.parametrize("name, input_shape, classes, parameters", [
    ("cnn", (1, 28, 28), 10, 80_378),  # "about 80k parameters on MNIST"
    ("mlp", (1, 28, 28), 10, 203_530),  # Dense 256 relu, Dense 10
    ("cnn", (1, 12, 12), 5, None),  # padded below 16 pixels a side, so something is left to pool
    ("cnn", (3, 20, 20), 4, None),
])
def test_one_raw_score_per_class_for_any_image_size(name, input_shape, classes, parameters):
    net = models.build(name, classes, input_shape)
    net.initialize(mx.init.Xavier())
    x = mx.nd.random.uniform(0, 1, (3, *input_shape))
    scores = net(x)
    assert scores.shape == (3, classes)
    assert not np.allclose(scores.asnumpy().sum(axis=1), 1.0)  # raw scores, not probabilities
    if parameters is not None:
        assert trainable(net) == parameters
