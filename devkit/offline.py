"""An environment in which AWS's SDKs (boto3, the SageMaker SDK) can never reach AWS, for tests that use
SDK local mode or botocore's Stubber: dummy credentials and region, no instance metadata, no config
files, and a proxy that leads nowhere, so that a call that would leave the machine fails at once.
Addresses on this machine bypass the proxy (local mode's containers, a registry on 127.0.0.1)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

AWS_OFFLINE = {
    "AWS_ACCESS_KEY_ID": "AKIDOFFLINE",
    "AWS_SECRET_ACCESS_KEY": "offline-dummy",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "localhost,127.0.0.1",
    # The SageMaker SDK prints errors as rich tracebacks wrapped at the terminal's width: keep lines whole.
    "COLUMNS": "250",
}
UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN")  # either would name real credentials


@contextlib.contextmanager
def offline_aws() -> Iterator[None]:
    """AWS_OFFLINE in os.environ (and AWS_PROFILE, AWS_SESSION_TOKEN unset) for the block; the
    environment as it was afterwards."""
    saved = dict(os.environ)
    for name in UNSET:
        os.environ.pop(name, None)
    os.environ.update(AWS_OFFLINE)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
