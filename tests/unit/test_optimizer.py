"""The training loop's learning-rate schedule and optimizer (loop.py) against MXNet's own optimizers."""

from __future__ import annotations

import math

import mxnet as mx
import numpy as np
import pytest

from mxnet_byoc.train import hostpath, loop
from mxnet_byoc.train.hyperparameters import Hyperparameters

# -- learning rate ----------------------------------------------------------------------------------------


def test_onecycle_warms_up_linearly_from_a_25th_then_decays_along_a_cosine_to_zero():
    hps = Hyperparameters(learning_rate=0.5, warmup_fraction=0.2)
    total = 1000
    lr = [loop.learning_rate(hps, t, total) for t in range(total + 1)]
    assert lr[0] == pytest.approx(0.5 / 25)
    assert lr[100] == pytest.approx(0.5 / 25 + (0.5 - 0.5 / 25) * 0.5)  # half-way through the warm-up
    assert lr[200] == pytest.approx(0.5)  # the peak, where the warm-up ends
    assert np.all(np.diff(lr[:201]) > 0) and np.all(np.diff(lr[200:]) < 0)
    assert lr[600] == pytest.approx(0.25)  # half-way through the decay: cos(pi / 2)
    assert lr[999] == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 799 / 800)))
    assert lr[1000] == pytest.approx(0.0, abs=1e-12)
    assert loop.learning_rate(hps, 5000, total) == pytest.approx(0.0, abs=1e-12)  # never below zero


def test_onecycle_without_warm_up_starts_at_the_peak():
    hps = Hyperparameters(learning_rate=0.1, warmup_fraction=0.0)
    assert loop.learning_rate(hps, 0, 100) == pytest.approx(0.1)
    assert loop.learning_rate(hps, 50, 100) == pytest.approx(0.05)


def test_constant_schedule_and_a_single_update_keep_the_peak():
    constant = Hyperparameters(learning_rate=0.1, lr_schedule="constant")
    assert {loop.learning_rate(constant, t, 100) for t in (0, 1, 50, 99, 100)} == {0.1}
    onecycle = Hyperparameters(learning_rate=0.1)
    assert loop.learning_rate(onecycle, 0, 1) == 0.1
    assert loop.learning_rate(onecycle, 0, 0) == 0.1


# -- updates ----------------------------------------------------------------------------------------------

N, STEPS, BATCH = 1000, 5, 32
LRS = [0.05, 0.1, 0.08, 0.02, 0.06]  # a schedule changes the rate every step


def _reference(hps: Hyperparameters) -> mx.optimizer.Optimizer:
    """MXNet's own optimizer for what `hps` asks for, with the loop's global-batch rescaling."""
    common = {"wd": hps.wd, "rescale_grad": 1.0 / BATCH}
    if hps.optimizer == "adam":
        return mx.optimizer.Adam(beta1=loop.Optimizer.BETA1, beta2=loop.Optimizer.BETA2,
                                 epsilon=loop.Optimizer.EPS, **common)
    if hps.optimizer == "nesterov":
        return mx.optimizer.NAG(momentum=hps.momentum, **common)
    return mx.optimizer.SGD(momentum=hps.momentum, **common)


CASES = {
    "sgd": Hyperparameters(optimizer="sgd", momentum=0.0),
    "sgd-wd": Hyperparameters(optimizer="sgd", momentum=0.0, wd=0.01),
    "momentum": Hyperparameters(optimizer="sgd", momentum=0.9),
    "momentum-wd": Hyperparameters(optimizer="sgd", momentum=0.9, wd=0.01),
    "nesterov": Hyperparameters(optimizer="nesterov", momentum=0.9, wd=0.01),
    "adam": Hyperparameters(optimizer="adam"),
    "adam-wd": Hyperparameters(optimizer="adam", wd=0.01),
}


@pytest.mark.parametrize("host", [False, True], ids=["mxnet-op", "host-path"])
@pytest.mark.parametrize("case", list(CASES))
def test_every_update_path_matches_mxnets_optimizer_over_several_steps(case, host):
    hps = CASES[case]
    rng = np.random.RandomState(7)
    start = rng.normal(0, 1, N).astype(np.float32)
    # Summed over a batch, as the executors' gradients are: the optimizer must rescale them.
    grads = [rng.normal(0, BATCH, N).astype(np.float32) for _ in range(STEPS)]

    weights = mx.nd.array(start)
    grad = mx.nd.zeros(N)
    ours = loop.Optimizer(hps, weights, rescale=1.0 / BATCH, host=host)
    # Only SGD has a host path; under this test's engine every op must be done before numpy touches memory.
    assert ours.host is (host and hps.optimizer == "sgd")
    mx.nd.waitall()
    host_grad = hostpath.view(grad) if ours.host else None

    reference = _reference(hps)
    updater = mx.optimizer.get_updater(reference)
    ref_weights = mx.nd.array(start)

    for t, (g, lr) in enumerate(zip(grads, LRS), start=1):
        grad[:] = g
        mx.nd.waitall()
        ours.update(grad, lr, t, host_grad)
        reference.set_learning_rate(lr)
        updater(0, mx.nd.array(g), ref_weights)
        np.testing.assert_allclose(weights.asnumpy(), ref_weights.asnumpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=f"{case}, step {t}")
    assert not np.allclose(weights.asnumpy(), start, atol=1e-3)  # the updates did move the weights


def test_the_host_axpby_matches_numpy():
    rng = np.random.RandomState(3)
    x, y = rng.normal(size=4097).astype(np.float32), rng.normal(size=4097).astype(np.float32)
    expected = 0.3 * x + 0.7 * y
    hostpath.axpby(0.3, x, 0.7, y)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
