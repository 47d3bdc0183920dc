"""The facts byoctl shares with the image, read from the image's own code (container/mxnet_byoc).

This is the one place that puts container/ on sys.path: the metric names and regexes that training
prints are the ones the Estimator gets, never a copy.
"""

from __future__ import annotations

import sys
from pathlib import Path

CONTAINER = Path(__file__).resolve().parents[1] / "container"
if str(CONTAINER) not in sys.path:
    sys.path.insert(0, str(CONTAINER))

from mxnet_byoc import metrics  # noqa: E402  (needs the path above; imports no MXNet)

__all__ = ["metrics", "metric_definitions"]


def metric_definitions() -> list[dict[str, str]]:
    """`metric_definitions` for the Estimator, straight from mxnet_byoc.metrics."""
    return metrics.metric_definitions()
