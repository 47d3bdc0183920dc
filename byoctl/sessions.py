"""SageMaker sessions for byoctl: a real one (boto3) or SDK local mode (Docker on this machine).

Both give the same client interface (`sagemaker_client`, `sagemaker_runtime_client`), under SDK 3 and
SDK 2 alike (byoctl/sdk.py picks the classes), so every command has one code path; `Clients` adds
CloudWatch Logs, which only a real session has.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from byoctl import sdk

# The SDK announces at INFO level every config file it does not find; byoctl reads none of them.
logging.getLogger("sagemaker.config").setLevel(logging.WARNING)

# The SDK's telemetry sends a request to AWS on every decorated call (local mode included); a
# command-line tool should contact only the services it was asked to use. byoctl's settings come
# from its options, so the SDK's own config.yaml defaults are not read either.
SDK_CONFIG: dict[str, Any] = {
    "SchemaVersion": "1.0",
    "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}},
}

LOCAL_ROLE = "arn:aws:iam::111111111111:role/byoctl-local-mode"  # local mode never assumes it
LOCAL_INSTANCE_TYPES = ("local", "local_gpu")


@dataclass
class Clients:
    session: Any  # a real session or a LocalSession, of SDK 3 or SDK 2
    logs: Any | None  # a boto3 CloudWatch Logs client; None in local mode
    local: bool

    @property
    def sagemaker(self) -> Any:
        return self.session.sagemaker_client

    @property
    def runtime(self) -> Any:
        return self.session.sagemaker_runtime_client


def real(region: str | None = None, profile: str | None = None) -> Clients:
    import boto3

    boto_session = boto3.Session(region_name=region, profile_name=profile)
    if not boto_session.region_name:
        raise SystemExit("byoctl: no AWS region: pass --region, set AWS_REGION or run 'aws configure'")
    return on_boto_session(boto_session)


def on_boto_session(boto_session: Any) -> Clients:
    """A real session's clients on a given boto3 session (tests stub its clients)."""
    return Clients(session=sdk.session(boto_session, SDK_CONFIG), logs=boto_session.client("logs"), local=False)


def local(region: str | None = None, serving_port: int | None = None) -> Clients:
    """SDK local mode. It still builds boto3 clients, so a region is needed, never credentials."""
    import boto3

    boto_session = boto3.Session(region_name=region or "us-east-1")
    session = sdk.local_session(boto_session, SDK_CONFIG)
    if serving_port:
        session.config = {"local": {"serving_port": serving_port}}
    return Clients(session=session, logs=None, local=True)
