"""Names of every environment variable the image reads, and the one place that reads paths from them.

SageMaker itself sets only a few of these; the rest follow AWS's own toolkits so that users who know
those find the same knobs here.
"""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = "SAGEMAKER_BASE_DIR"  # moves /opt/ml, as the SageMaker training toolkit does
DEFAULT_BASE_DIR = "/opt/ml"

# Training.
CONTEXTS = "MXNET_BYOC_CONTEXTS"  # e.g. "cpu(0),cpu(1)" or "gpu(0),gpu(1)"; overrides detection
TRAINING_JOB_NAME = "TRAINING_JOB_NAME"

# Serving.
BIND_TO_PORT = "SAGEMAKER_BIND_TO_PORT"
MODEL_SERVER_WORKERS = "SAGEMAKER_MODEL_SERVER_WORKERS"
MODEL_SERVER_TIMEOUT = "SAGEMAKER_MODEL_SERVER_TIMEOUT"
MAX_PAYLOAD_IN_MB = "SAGEMAKER_MAX_PAYLOAD_IN_MB"
BATCH = "SAGEMAKER_BATCH"
BATCH_STRATEGY = "SAGEMAKER_BATCH_STRATEGY"
MAX_CONCURRENT_TRANSFORMS = "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS"
DEFAULT_INVOCATIONS_ACCEPT = "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"
SERVE_HOST = "MXNET_BYOC_SERVE_HOST"  # interface `serve` binds; 0.0.0.0 in the image, 127.0.0.1 in tests

# MXNet's and OpenMP's own variables, which `serve` gives defaults for every worker.
MXNET_LIBRARY_PATH = "MXNET_LIBRARY_PATH"  # libmxnet.so to load, as MXNet's own loader reads it
MXNET_ENGINE_TYPE = "MXNET_ENGINE_TYPE"
OMP_NUM_THREADS = "OMP_NUM_THREADS"


def base_dir() -> Path:
    return Path(os.environ.get(BASE_DIR) or DEFAULT_BASE_DIR)


def model_dir() -> Path:
    return base_dir() / "model"
