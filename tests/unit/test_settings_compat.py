"""The settings that users of AWS's MXNet image set, in `serve`'s ServerConfig (serve/settings.py with
serve/awssettings.py): multi-model mode, MMS_* over SAGEMAKER_*, any default Accept a handler may answer, the
batch strategy named as the API names it, one worker per GPU."""

from __future__ import annotations

import pytest

from mxnet_byoc.serve import settings
from mxnet_byoc.serve.settings import ConfigError, from_env


def test_multi_model_mode_is_sagemakers_variable():
    assert from_env({"SAGEMAKER_MULTI_MODEL": "true"}).multi_model
    assert not from_env({}).multi_model and not from_env({"SAGEMAKER_MULTI_MODEL": "False"}).multi_model
    with pytest.raises(ConfigError, match="SAGEMAKER_MULTI_MODEL='yes': expected true or false"):
        from_env({"SAGEMAKER_MULTI_MODEL": "yes"})


@pytest.mark.parametrize("strategy, name", [("MULTI_RECORD", "MultiRecord"), ("SINGLE_RECORD", "SingleRecord")])
def test_execution_parameters_name_the_strategy_as_the_api_does(strategy, name):
    assert from_env({"SAGEMAKER_BATCH_STRATEGY": strategy}).execution_parameters()["BatchStrategy"] == name


@pytest.mark.parametrize("accept", ["application/x-npy", "application/vnd.custom+json", "text/csv"])
def test_any_one_media_type_is_a_default_accept(accept):
    assert from_env({"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": accept}).default_accept == accept


@pytest.mark.parametrize("accept", ["*/*", "application/*", "json", "text/ csv"])
def test_a_default_accept_that_is_no_one_type_stops_serve(accept):
    with pytest.raises(ConfigError, match="SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"):
        from_env({"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": accept})


def test_mms_variables_win_over_the_toolkits():
    config = from_env({"SAGEMAKER_MODEL_SERVER_WORKERS": "4", "MMS_DEFAULT_WORKERS_PER_MODEL": "3",
                       "SAGEMAKER_MODEL_SERVER_TIMEOUT": "60", "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS": "90",
                       "SAGEMAKER_MAX_PAYLOAD_IN_MB": "6", "MMS_MAX_REQUEST_SIZE": str(20 * settings.MIB + 1)})
    assert (config.workers, config.timeout_s, config.max_payload_mb) == (3, 90, 21)


def test_a_refused_mms_variable_stops_serve_with_the_reason():
    with pytest.raises(ConfigError, match="MMS_KEYSTORE=/k: serve speaks plain HTTP"):
        from_env({"MMS_KEYSTORE": "/k"})


def test_ignored_ones_are_notices():
    assert from_env({"MMS_JOB_QUEUE_SIZE": "10"}).notices == (
        "MMS_JOB_QUEUE_SIZE=10 is ignored: tuning of MMS's Java front end, which nginx and gunicorn replace",)


def test_one_worker_per_gpu_unless_told(monkeypatch):
    assert from_env({}, gpu_count=4).workers == 4
    assert from_env({"MMS_NUMBER_OF_GPU": "2"}, gpu_count=4).workers == 2
    assert from_env({"SAGEMAKER_MODEL_SERVER_WORKERS": "8"}, gpu_count=4).workers == 8
    monkeypatch.setattr(settings, "cpu_count", lambda: 3)
    assert from_env({}, gpu_count=0).workers == 3
