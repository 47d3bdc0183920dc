"""The serving settings, read from the environment once (server.main): nginx, gunicorn and the app share them.

Every value is checked here, so a bad setting stops `serve` at start with a message naming the variable,
rather than surfacing as odd behaviour under load.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from . import awssettings, mediatypes

# SageMaker's variables (and those of AWS's own model servers, which users of those know).
BIND_TO_PORT = "SAGEMAKER_BIND_TO_PORT"
MODEL_SERVER_WORKERS = "SAGEMAKER_MODEL_SERVER_WORKERS"
MODEL_SERVER_TIMEOUT = "SAGEMAKER_MODEL_SERVER_TIMEOUT"
MAX_PAYLOAD_IN_MB = "SAGEMAKER_MAX_PAYLOAD_IN_MB"
BATCH_STRATEGY = "SAGEMAKER_BATCH_STRATEGY"
DEFAULT_INVOCATIONS_ACCEPT = "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"
MULTI_MODEL = "SAGEMAKER_MULTI_MODEL"  # "true": a multi-model endpoint (serve/multimodel)
SERVE_HOST = "MXNET_BYOC_SERVE_HOST"  # interface nginx listens on; 0.0.0.0 in the image, 127.0.0.1 in tests
KEEP_ALIVE_S = "MXNET_BYOC_KEEP_ALIVE_S"  # seconds nginx keeps an idle client connection open; 0: none
# MXNet's and OpenMP's own variables, which `serve` gives defaults for every worker.
MXNET_LIBRARY_PATH = "MXNET_LIBRARY_PATH"  # libmxnet.so to load, as MXNet's own loader reads it
MXNET_ENGINE_TYPE = "MXNET_ENGINE_TYPE"
OMP_NUM_THREADS = "OMP_NUM_THREADS"
# Given to the workers unless set: one OpenMP thread each (the workers already fill the CPUs), and MXNet's
# synchronous engine, which saves a thread hand-off per operator.
WORKER_ENV_DEFAULTS = {OMP_NUM_THREADS: "1", MXNET_ENGINE_TYPE: "NaiveEngine"}

DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 8080
DEFAULT_TIMEOUT_S = 60  # SageMaker's own limit for one invocation
DEFAULT_KEEP_ALIVE_S = 5  # as AWS's reference container (nginx's keepalive_timeout 5 in front of gunicorn)
DEFAULT_MAX_PAYLOAD_MB = 6  # SageMaker's real-time limit
BATCH_MAX_PAYLOAD_MB = 100  # the most a batch transform job sends; MaxPayloadInMB=0 stands for it
GRACEFUL_TIMEOUT_S = 25  # SageMaker sends SIGKILL 30 s after SIGTERM: finish requests in flight before that
# Of which nginx gets this long for the requests in flight (supervisor.py), gunicorn the rest.
FRONT_END_SHUTDOWN_S = 20
BACKLOG = 2048  # connections waiting to be accepted, by nginx from clients and by gunicorn from nginx
BATCH_STRATEGIES = ("MULTI_RECORD", "SINGLE_RECORD")
# SAGEMAKER_BATCH_STRATEGY's values as the CreateTransformJob API names them, which /execution-parameters answers
# (SageMaker's SDK takes the answer as the job's strategy, and its local mode accepts only these names).
BATCH_STRATEGY_NAMES = {"MULTI_RECORD": "MultiRecord", "SINGLE_RECORD": "SingleRecord"}
MIB = 1024 * 1024  # a "MB" is read as MiB, the larger reading, so the limit is never below SageMaker's


class ConfigError(ValueError):
    """An environment variable holds a value `serve` cannot use; the message names it."""


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    workers: int
    timeout_s: int
    max_payload_mb: int
    batch_strategy: str
    default_accept: str
    keep_alive_s: int = DEFAULT_KEEP_ALIVE_S
    multi_model: bool = False
    notices: tuple[str, ...] = ()  # settings of AWS's image that serve ignores, logged at start

    @property
    def max_payload_text(self) -> str:
        """The payload limit as a refusal names it: its size and the variable that sets it."""
        return f"{self.max_payload_mb} MB ({MAX_PAYLOAD_IN_MB})"

    @property
    def max_payload_bytes(self) -> int:
        return self.max_payload_mb * MIB

    @property
    def read_timeout_s(self) -> float:
        """How long nginx waits for more of a request (its headers or its body) before it drops the
        connection; no worker waits for a client (nginx hands it whole requests)."""
        return self.timeout_s / 2

    def execution_parameters(self) -> dict[str, object]:
        """What `GET /execution-parameters` answers: one transform per worker, the server's payload limit."""
        return {
            "MaxConcurrentTransforms": self.workers,
            "BatchStrategy": BATCH_STRATEGY_NAMES[self.batch_strategy],
            "MaxPayloadInMB": self.max_payload_mb,
        }


def from_env(env: Mapping[str, str] | None = None, gpu_count: int = 0) -> ServerConfig:
    """The settings; `gpu_count`: the machine's GPUs, one worker each by default (else one per CPU)."""
    env = os.environ if env is None else env
    aws = awssettings.read(env)
    if aws.refused:
        raise ConfigError("; ".join(aws.refused))
    payload = _int(env, MAX_PAYLOAD_IN_MB, DEFAULT_MAX_PAYLOAD_MB, minimum=0)
    if aws.max_request_bytes:
        payload = awssettings.max_payload_mb(aws.max_request_bytes, MIB)
    strategy = (env.get(BATCH_STRATEGY) or "MULTI_RECORD").strip().upper()
    if strategy not in BATCH_STRATEGIES:
        raise ConfigError(f"{BATCH_STRATEGY}={strategy!r}: expected one of {', '.join(BATCH_STRATEGIES)}")
    accept = mediatypes.media_type(env.get(DEFAULT_INVOCATIONS_ACCEPT) or mediatypes.JSON)
    if not mediatypes.is_concrete(accept):
        raise ConfigError(f"{DEFAULT_INVOCATIONS_ACCEPT}={accept!r}: expected one media type, such as "
                          f"{mediatypes.JSON} (each handler checks that it can answer it)")
    multi_model = (env.get(MULTI_MODEL) or "false").strip().lower()
    if multi_model not in ("true", "false"):
        raise ConfigError(f"{MULTI_MODEL}={multi_model!r}: expected true or false")
    gpus = min(gpu_count, aws.gpus) if aws.gpus else gpu_count
    return ServerConfig(
        host=(env.get(SERVE_HOST) or DEFAULT_HOST).strip(),
        port=_int(env, BIND_TO_PORT, DEFAULT_PORT, minimum=1, maximum=65535),
        workers=aws.workers or _int(env, MODEL_SERVER_WORKERS, gpus or cpu_count(), minimum=1),
        timeout_s=aws.timeout_s or _int(env, MODEL_SERVER_TIMEOUT, DEFAULT_TIMEOUT_S, minimum=1),
        max_payload_mb=payload or BATCH_MAX_PAYLOAD_MB,
        batch_strategy=strategy,
        default_accept=accept,
        keep_alive_s=_int(env, KEEP_ALIVE_S, DEFAULT_KEEP_ALIVE_S, minimum=0),
        multi_model=multi_model == "true",
        notices=tuple(aws.notices),
    )


CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"  # cgroup v2's CPU quota and period, "max 100000" when unlimited


def cpu_count(cgroup_cpu_max: str = CGROUP_CPU_MAX) -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (docker --cpus)."""
    count = len(os.sched_getaffinity(0))
    try:
        with open(cgroup_cpu_max) as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return count


def _int(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ConfigError(f"{name}={value} must be {bounds}")
    return value
