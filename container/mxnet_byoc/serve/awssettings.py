"""The serving settings that users of AWS's MXNet inference image set, read as that image reads them.

AWS's image runs Multi Model Server (MMS) through sagemaker-inference-toolkit: the toolkit writes MMS's properties
from SAGEMAKER_* variables, and MMS then lets any MMS_<PROPERTY> variable override its property (the toolkit turns
`enable_envvars_config` on). So an MMS_* variable wins over the SAGEMAKER_* one for the same setting, and a
timeout in seconds wins over one in minutes (MMS reads `default_response_timeout` in minutes, a bug it keeps).

What each becomes here:
- honoured: the ones in HONOURED (workers, the request timeout, the largest request, the GPUs used);
- refused at start with the reason (REFUSED): settings whose intent `serve` cannot carry out (TLS, another
  address, a handler service of MMS's own API), where going on would serve something else than was asked;
- ignored with a line in the log (IGNORED): tuning of MMS's Java front end, which nginx and gunicorn replace.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlparse

MODEL_SERVER_TIMEOUT_SECONDS = "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS"
HANDLER = "SAGEMAKER_HANDLER"  # the toolkit's way to name the handler service MMS runs
CONFIG_FILE = "MMS_CONFIG_FILE"

HONOURED = {
    "MMS_DEFAULT_WORKERS_PER_MODEL": "the number of workers (each serves every model); 0 leaves the default",
    "MMS_DEFAULT_RESPONSE_TIMEOUT": "the request timeout, in minutes as MMS reads it",
    "MMS_DEFAULT_RESPONSE_TIMEOUT_SECONDS": "the request timeout in seconds",
    "MMS_MAX_REQUEST_SIZE": "the largest request body, in bytes",
    "MMS_NUMBER_OF_GPU": "how many of the machine's GPUs the workers use (the first ones)",
    MODEL_SERVER_TIMEOUT_SECONDS: "the request timeout in seconds (before SAGEMAKER_MODEL_SERVER_TIMEOUT)",
}
# AWS's own handler services: naming them asks for what `serve` does anyway.
AWS_HANDLERS = {"sagemaker_mxnet_serving_container.handler_service",
                "sagemaker_mxnet_serving_container.handler_service:handle",
                "sagemaker_inference.default_handler_service",
                "sagemaker_inference.default_handler_service:handle"}
REFUSED = {
    "MMS_DEFAULT_SERVICE_HANDLER": "a handler service written for MMS's own API is not run here: put "
                                   "model_fn/transform_fn (or input_fn, predict_fn, output_fn) in code/inference.py",
    HANDLER: "a handler service written for MMS's own API is not run here: put model_fn/transform_fn (or input_fn, "
             "predict_fn, output_fn) in code/inference.py",
    "MMS_INFERENCE_ADDRESS": "serve listens where SageMaker connects (SAGEMAKER_BIND_TO_PORT, else 8080), for "
                             "inference and model management alike",
    "MMS_MANAGEMENT_ADDRESS": "serve listens where SageMaker connects (SAGEMAKER_BIND_TO_PORT, else 8080), for "
                              "inference and model management alike",
    CONFIG_FILE: "a properties file in place of the one AWS's toolkit writes is not read: set the MMS_* variables "
                 "of its keys instead",
    **{name: "serve speaks plain HTTP, as SageMaker talks to a container (it ends TLS itself); unset it"
       for name in ("MMS_KEYSTORE", "MMS_KEYSTORE_PASS", "MMS_KEYSTORE_TYPE", "MMS_CERTIFICATE_FILE",
                    "MMS_PRIVATE_KEY_FILE")},
}
IGNORED = {
    **{name: "tuning of MMS's Java front end, which nginx and gunicorn replace"
       for name in ("MMS_NUMBER_OF_NETTY_THREADS", "MMS_NETTY_CLIENT_THREADS", "MMS_JOB_QUEUE_SIZE",
                    "MMS_ASYNC_LOGGING", "MMS_PREFER_DIRECT_BUFFER", "MMS_DECODE_INPUT_REQUEST",
                    "MMS_UNREGISTER_MODEL_TIMEOUT", "MMS_DEBUG", "MMS_BLACKLIST_ENV_VARS", "MMS_CORS_ALLOWED_ORIGIN",
                    "MMS_CORS_ALLOWED_METHODS", "MMS_CORS_ALLOWED_HEADERS", "MMS_METRIC_TIME_INTERVAL",
                    "SAGEMAKER_MODEL_SERVER_VMARGS")},
    "MMS_MAX_RESPONSE_SIZE": "answers are not limited in size",
    **{name: "serve loads /opt/ml/model at start, or the models SageMaker asks for on a multi-model endpoint"
       for name in ("MMS_LOAD_MODELS", "MMS_MODEL_STORE", "MMS_PRELOAD_MODEL")},
    "SAGEMAKER_STARTUP_TIMEOUT": "serve answers /ping at once and needs no time to start",
}
VISIBLE_GPUS = "CUDA_VISIBLE_DEVICES"


@dataclass
class AwsSettings:
    """What the settings of AWS's image say, in `serve`'s terms (None: not set)."""

    workers: int | None = None
    timeout_s: int | None = None
    max_request_bytes: int | None = None
    gpus: int | None = None  # use the first this many GPUs
    refused: list[str] = field(default_factory=list)  # "NAME=value: why", each stops serve
    notices: list[str] = field(default_factory=list)  # "NAME=value: why", each logged once at start

    def visible_gpus(self, env: Mapping[str, str]) -> dict[str, str]:
        """The variable that keeps the workers on the first `gpus` GPUs, unless CUDA_VISIBLE_DEVICES is set."""
        if not self.gpus or env.get(VISIBLE_GPUS):
            return {}
        return {VISIBLE_GPUS: ",".join(str(i) for i in range(self.gpus))}


def read(env: Mapping[str, str]) -> AwsSettings:
    found = AwsSettings()
    values = {k: v for k, v in env.items() if k.startswith("MMS_")}
    for name in (MODEL_SERVER_TIMEOUT_SECONDS, HANDLER, "SAGEMAKER_MODEL_SERVER_VMARGS", "SAGEMAKER_STARTUP_TIMEOUT"):
        if env.get(name, "").strip():
            values[name] = env[name]
    for name, raw in sorted(values.items()):
        value = raw.strip()
        if not value or _asks_for_what_serve_does(name, value, env):
            continue
        if name in REFUSED:
            found.refused.append(f"{name}={value}: {REFUSED[name]}")
        elif name in IGNORED:
            found.notices.append(f"{name}={value} is ignored: {IGNORED[name]}")
        elif name not in HONOURED:
            found.notices.append(f"{name}={value} is ignored: not a setting of Multi Model Server that serve knows")
    workers = _number(values, "MMS_DEFAULT_WORKERS_PER_MODEL", found)
    found.workers = workers or None
    seconds = _number(values, "MMS_DEFAULT_RESPONSE_TIMEOUT_SECONDS", found, minimum=1)
    seconds = seconds or _number(values, MODEL_SERVER_TIMEOUT_SECONDS, found, minimum=1)
    minutes = _number(values, "MMS_DEFAULT_RESPONSE_TIMEOUT", found, minimum=1)
    found.timeout_s = seconds or (minutes * 60 if minutes else None)
    found.max_request_bytes = _number(values, "MMS_MAX_REQUEST_SIZE", found, minimum=1)
    found.gpus = _number(values, "MMS_NUMBER_OF_GPU", found) or None
    return found


def _asks_for_what_serve_does(name: str, value: str, env: Mapping[str, str]) -> bool:
    """AWS's own handler service, or the address serve listens on anyway."""
    if name in (HANDLER, "MMS_DEFAULT_SERVICE_HANDLER"):
        return value in AWS_HANDLERS
    if name in ("MMS_INFERENCE_ADDRESS", "MMS_MANAGEMENT_ADDRESS"):
        try:
            port = urlparse(value if "://" in value else f"http://{value}").port
        except ValueError:
            return False
        return str(port) == (env.get("SAGEMAKER_BIND_TO_PORT") or "8080").strip()
    return False


def max_payload_mb(request_bytes: int, mib: int) -> int:
    """The whole MiB that holds MMS_MAX_REQUEST_SIZE's bytes (a body MMS would take is never refused)."""
    return max(1, math.ceil(request_bytes / mib))


def _number(values: Mapping[str, str], name: str, found: AwsSettings, minimum: int = 0) -> int | None:
    raw = (values.get(name) or "").strip()
    if not raw:
        return None
    try:
        number = int(raw)
    except ValueError:
        found.refused.append(f"{name}={raw}: not a whole number")
        return None
    if number < minimum:
        found.refused.append(f"{name}={number}: must be at least {minimum}")
        return None
    return number
