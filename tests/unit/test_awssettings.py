"""The settings of AWS's MXNet inference image (MMS_* and the toolkit's SAGEMAKER_*), read as that image reads them
(serve/awssettings.py): honoured, refused with a reason, or ignored with a line in the log."""

from __future__ import annotations

import pytest

from mxnet_byoc.serve import awssettings

MIB = 1 << 20


def test_nothing_set_changes_nothing():
    found = awssettings.read({"PATH": "/bin", "SAGEMAKER_MODEL_SERVER_WORKERS": "3"})
    assert found == awssettings.AwsSettings()


def test_the_honoured_ones():
    found = awssettings.read({"MMS_DEFAULT_WORKERS_PER_MODEL": "3", "MMS_MAX_REQUEST_SIZE": "104857600",
                              "MMS_NUMBER_OF_GPU": "2", "MMS_DEFAULT_RESPONSE_TIMEOUT": "2"})
    assert (found.workers, found.max_request_bytes, found.gpus, found.timeout_s) == (3, 100 * MIB, 2, 120)
    assert found.refused == [] and found.notices == []


@pytest.mark.parametrize("env, seconds", [
    ({"MMS_DEFAULT_RESPONSE_TIMEOUT": "5"}, 300),  # minutes, as Multi Model Server reads it
    ({"SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS": "90", "MMS_DEFAULT_RESPONSE_TIMEOUT": "5"}, 90),
    ({"SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS": "90", "MMS_DEFAULT_RESPONSE_TIMEOUT_SECONDS": "30"}, 30),
])
def test_a_timeout_in_seconds_wins_and_mms_wins_over_the_toolkit(env, seconds):
    assert awssettings.read(env).timeout_s == seconds


def test_zero_workers_per_model_leaves_the_default():
    assert awssettings.read({"MMS_DEFAULT_WORKERS_PER_MODEL": "0"}).workers is None


@pytest.mark.parametrize("name, value, reason", [
    ("MMS_DEFAULT_SERVICE_HANDLER", "my_service:handle", "a handler service written for MMS's own API is not run"),
    ("SAGEMAKER_HANDLER", "my_service", "a handler service written for MMS's own API is not run"),
    ("MMS_INFERENCE_ADDRESS", "http://0.0.0.0:9090", "serve listens where SageMaker connects"),
    ("MMS_KEYSTORE", "/etc/keystore.p12", "serve speaks plain HTTP"),
    ("MMS_CONFIG_FILE", "/opt/ml/model/config.properties", "set the MMS_* variables of its keys instead"),
    ("MMS_MAX_REQUEST_SIZE", "lots", "not a whole number"),
    ("SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS", "0", "must be at least 1"),
])
def test_the_refused_ones_say_why(name, value, reason):
    [refusal] = awssettings.read({name: value}).refused
    assert refusal.startswith(f"{name}={value}: ") and reason in refusal


@pytest.mark.parametrize("env", [
    {"SAGEMAKER_HANDLER": "sagemaker_mxnet_serving_container.handler_service"},
    {"MMS_DEFAULT_SERVICE_HANDLER": "sagemaker_inference.default_handler_service:handle"},
    {"MMS_INFERENCE_ADDRESS": "http://0.0.0.0:8080", "MMS_MANAGEMENT_ADDRESS": "0.0.0.0:8080"},
    {"MMS_INFERENCE_ADDRESS": "http://127.0.0.1:9000", "SAGEMAKER_BIND_TO_PORT": "9000"},
])
def test_what_asks_for_what_serve_does_anyway_passes(env):
    assert awssettings.read(env) == awssettings.AwsSettings()


def test_the_ignored_ones_are_said_once():
    found = awssettings.read({"MMS_JOB_QUEUE_SIZE": "1000", "MMS_MAX_RESPONSE_SIZE": "10", "MMS_SOMETHING": "x"})
    assert found.refused == []
    assert found.notices == [
        "MMS_JOB_QUEUE_SIZE=1000 is ignored: tuning of MMS's Java front end, which nginx and gunicorn replace",
        "MMS_MAX_RESPONSE_SIZE=10 is ignored: answers are not limited in size",
        "MMS_SOMETHING=x is ignored: not a setting of Multi Model Server that serve knows",
    ]


def test_the_gpus_used_are_the_first_ones_unless_the_user_chose():
    found = awssettings.read({"MMS_NUMBER_OF_GPU": "2"})
    assert found.visible_gpus({}) == {"CUDA_VISIBLE_DEVICES": "0,1"}
    assert found.visible_gpus({"CUDA_VISIBLE_DEVICES": "3"}) == {}


def test_a_request_size_in_bytes_is_the_mib_that_holds_it():
    assert awssettings.max_payload_mb(6553500, MIB) == 7 and awssettings.max_payload_mb(MIB, MIB) == 1
