"""The facts byoctl shares with the image, read from the image's own code (the mxnet_byoc package).

The metric names and regexes that training prints are the ones the Estimator gets, never a copy; the GPU
instance families byoctl warns about are the ones the image's own check names (mxnet_byoc.gpus).
"""

from __future__ import annotations

from mxnet_byoc import gpus  # standard library only: no MXNet in byoctl
from mxnet_byoc.train import metrics

__all__ = ["gpus", "metrics", "metric_definitions"]


def metric_definitions() -> list[dict[str, str]]:
    """`metric_definitions` for the Estimator, straight from mxnet_byoc.train.metrics."""
    return metrics.metric_definitions()
