"""Serving settings from the environment: defaults, SageMaker's variables, clear refusals."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mxnet_byoc.serve import capi, settings, supervisor
from mxnet_byoc.serve.settings import ConfigError, from_env


def test_defaults_follow_sagemaker():
    config = from_env({})
    assert (config.host, config.port, config.timeout_s) == ("0.0.0.0", 8080, 60)
    assert config.workers == settings.cpu_count() >= 1
    assert config.max_payload_mb == 6 and config.max_payload_bytes == 6 * 1024 * 1024
    assert config.default_accept == "application/json"
    assert config.keep_alive_s == 5  # AWS's reference container: nginx's keepalive_timeout 5
    assert config.execution_parameters() == {
        "MaxConcurrentTransforms": config.workers, "BatchStrategy": "MultiRecord", "MaxPayloadInMB": 6,
    }


def test_sagemaker_variables_are_read():
    config = from_env({
        "SAGEMAKER_BIND_TO_PORT": "9090", "SAGEMAKER_MODEL_SERVER_WORKERS": "3",
        "SAGEMAKER_MODEL_SERVER_TIMEOUT": "120", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "100",
        "SAGEMAKER_BATCH_STRATEGY": "single_record", "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "text/csv",
        "MXNET_BYOC_SERVE_HOST": "127.0.0.1", "MXNET_BYOC_KEEP_ALIVE_S": "0",
    })
    assert config.keep_alive_s == 0
    assert (config.host, config.port, config.workers, config.timeout_s) == ("127.0.0.1", 9090, 3, 120)
    assert config.max_payload_bytes == 100 * 1024 * 1024
    assert config.execution_parameters() == {
        "MaxConcurrentTransforms": 3, "BatchStrategy": "SingleRecord", "MaxPayloadInMB": 100,
    }
    assert config.default_accept == "text/csv"


def test_zero_payload_limit_means_the_batch_maximum():
    assert from_env({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "0"}).max_payload_mb == settings.BATCH_MAX_PAYLOAD_MB


def test_graceful_shutdown_ends_before_sagemakers_sigkill():
    """nginx's share first, then gunicorn's; the supervisor's SIGKILL for a stop that hangs, still before 30 s."""
    assert 0 < settings.FRONT_END_SHUTDOWN_S < settings.GRACEFUL_TIMEOUT_S < supervisor.KILL_AFTER_S < 30


@pytest.mark.parametrize(
    "env, message",
    [
        ({"SAGEMAKER_BIND_TO_PORT": "http"}, "SAGEMAKER_BIND_TO_PORT='http' is not a whole number"),
        ({"SAGEMAKER_BIND_TO_PORT": "70000"}, "between 1 and 65535"),
        ({"SAGEMAKER_MODEL_SERVER_WORKERS": "0"}, "SAGEMAKER_MODEL_SERVER_WORKERS=0 must be at least 1"),
        ({"SAGEMAKER_MODEL_SERVER_TIMEOUT": "1.5"}, "SAGEMAKER_MODEL_SERVER_TIMEOUT"),
        ({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "-1"}, "SAGEMAKER_MAX_PAYLOAD_IN_MB=-1"),
        ({"SAGEMAKER_BATCH_STRATEGY": "ALL"}, "MULTI_RECORD, SINGLE_RECORD"),
        ({"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "*/*"}, "expected one media type"),
        ({"MXNET_BYOC_KEEP_ALIVE_S": "-1"}, "MXNET_BYOC_KEEP_ALIVE_S=-1 must be at least 0"),
        ({"MXNET_BYOC_KEEP_ALIVE_S": "5s"}, "MXNET_BYOC_KEEP_ALIVE_S='5s' is not a whole number"),
    ],
)
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        from_env(env)


def test_cpu_count_is_positive_and_within_the_affinity_mask():
    assert 1 <= settings.cpu_count() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize("cpu_max, expected", [("max 100000", None), ("150000 100000", 2), ("50000 100000", 1),
                                               ("garbage", None)])
def test_cpu_count_is_capped_by_a_cgroup_quota(tmp_path, cpu_max, expected):
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    mask = len(os.sched_getaffinity(0))
    assert settings.cpu_count(str(tmp_path / "cpu.max")) == (mask if expected is None else min(mask, expected))
    assert settings.cpu_count(str(tmp_path / "absent")) == mask


def test_mxnet_library_path_names_the_libmxnet_that_is_loaded(tmp_path):
    code = "from mxnet_byoc.serve import capi; print(capi.library()._name)"
    (tmp_path / "elsewhere").symlink_to(os.path.dirname(capi._packaged_library()))  # its libraries beside it
    link = str(tmp_path / "elsewhere" / "libmxnet.so")
    for given in (link, str(tmp_path / "missing.so")):
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                env={**os.environ, "MXNET_LIBRARY_PATH": given})
        if given == link:
            assert result.returncode == 0 and result.stdout.strip() == given, result.stderr
        else:
            assert result.returncode != 0 and "missing.so" in result.stderr
