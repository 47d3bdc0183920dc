"""A tiny model with known answers for serving tests: score k = 20 x pixel k (pixels in [0, 1]).

An image whose pixel k is the brightest of the first ten is labelled k. Exporting needs MXNet; serving
it does not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mxnet_byoc import modeldir


def indicator_weights() -> np.ndarray:
    weight = np.zeros((10, 784), dtype=np.float32)
    weight[np.arange(10), np.arange(10)] = 20
    return weight


def export_indicator_model(model_dir: Path, classes: list | None = None, head: str = "logits") -> Path:
    """`head`: "logits" (our contract), "softmax" (a network ending in probabilities) or "SoftmaxOutput"
    (a Module API training head, as AWS's MXNet container writes it)."""
    import mxnet as mx

    scores = mx.sym.FullyConnected(mx.sym.flatten(mx.sym.var("data")), num_hidden=10, name="fc")
    if head == "softmax":
        scores = mx.sym.softmax(scores, axis=1)
    elif head == "SoftmaxOutput":
        scores = mx.sym.SoftmaxOutput(scores, name="softmax")
    params = {"fc_weight": mx.nd.array(indicator_weights()), "fc_bias": mx.nd.zeros(10)}
    modeldir.save(scores, params, {}, model_dir, (1, 28, 28), classes if classes is not None else list(range(10)), {})
    return model_dir


def image_of(label: int) -> np.ndarray:
    """A black 28x28 uint8 image with pixel `label` lit."""
    image = np.zeros((28, 28), dtype=np.uint8)
    image.flat[label] = 255
    return image


def expected_probabilities(batch: np.ndarray) -> np.ndarray:
    """What the indicator model answers for float32 pixels in [0, 1] shaped (N, 1, 28, 28)."""
    scores = batch.reshape(len(batch), 784).astype(np.float64) @ indicator_weights().T.astype(np.float64)
    scores = np.exp(scores - scores.max(axis=1, keepdims=True))
    return scores / scores.sum(axis=1, keepdims=True)
