"""SageMaker Python SDK 3.x against the real CPU image; runs in .venv-client (`make test-sdk3`).

pytest in .venv (SDK 2, MXNet's numpy) does not recurse into this folder (pyproject.toml's
norecursedirs); naming it there runs into the check below.
"""

from __future__ import annotations

import json
import os

import pytest

from byoctl import sdk
from devkit.net import free_port
from devkit.offline import offline_aws

if sdk.major() != 3:
    raise pytest.UsageError("tests/container/sdk3 needs the SageMaker Python SDK 3.x: run `make test-sdk3` "
                            "(it uses .venv-client)")

TELEMETRY_OPT_OUT = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """No AWS: dummy keys and region, no instance metadata, a proxy to nowhere, telemetry opted out.

    The opt-out also goes into a user config file, for the sessions the SDK makes on its own.
    """
    config = tmp_path_factory.mktemp("sdk-config") / "config.yaml"
    config.write_text(json.dumps(TELEMETRY_OPT_OUT))  # YAML is a superset of JSON
    with offline_aws(), pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAGEMAKER_USER_CONFIG_OVERRIDE", str(config))
        yield


@pytest.fixture
def local_session(offline):
    """SDK 3's local mode session (sagemaker.core.local), on a serving port of its own."""
    import boto3
    from sagemaker.core.local.local_session import LocalSession

    session = LocalSession(boto_session=boto3.Session(region_name=os.environ["AWS_DEFAULT_REGION"]),
                           sagemaker_config=TELEMETRY_OPT_OUT)
    session.config = {"local": {"serving_port": free_port()}}
    return session
