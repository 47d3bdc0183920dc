"""SageMaker sessions for byoctl: a real one (boto3) or SDK local mode (Docker on this machine).

Both give the same client interface (`sagemaker_client`, `sagemaker_runtime_client`), under SDK 3 and
SDK 2 alike (byoctl/sdk.py picks the classes), so every command has one code path; `Clients` adds
CloudWatch Logs, which only a real session has.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
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


# SDK local mode names its containers PROJECT-algo-N-XXXXX and never removes them; after training it
# also leaves its compose folder (a temp dir holding a copy of the model) behind. (SDK 3's ModelTrainer
# names them differently, in a folder byoctl chooses: remove_compose_containers.)
_LOCAL_SERVICE = re.compile(r"^algo-[0-9]+-[a-z0-9]+$")
_FORMAT = "\t".join(("{{.ID}}", "{{.State}}", '{{.Label "com.docker.compose.service"}}',
                     '{{.Label "com.docker.compose.project.working_dir"}}'))


def local_mode_containers() -> dict[str, tuple[str, str]]:
    """id -> (state, compose working dir) of every container that SDK local mode created."""
    result = subprocess.run(["docker", "ps", "-a", "--no-trunc", "--filter", "label=com.docker.compose.project",
                             "--format", _FORMAT], capture_output=True, text=True)
    containers = {}
    for line in result.stdout.splitlines():
        fields = line.split("\t")
        if len(fields) == 4 and _LOCAL_SERVICE.match(fields[2]):
            containers[fields[0]] = (fields[1], fields[3])
    return containers


@contextlib.contextmanager
def local_leftovers_removed() -> Iterator[None]:
    """Removes the exited containers, and their temp folders, that local mode created meanwhile."""
    before = set(local_mode_containers())
    try:
        yield
    finally:
        new = {cid: info for cid, info in local_mode_containers().items() if cid not in before}
        finished = [cid for cid, (state, _) in new.items() if state in ("exited", "created", "dead")]
        if finished:
            subprocess.run(["docker", "rm", *finished], capture_output=True)
        tmp = Path(tempfile.gettempdir()).resolve()
        for cid in finished:
            folder = Path(new[cid][1])
            if folder.parent == tmp and (folder / "docker-compose.yaml").is_file():
                shutil.rmtree(folder, ignore_errors=True)


def remove_compose_containers(working_dir: Path) -> None:
    """Removes the containers of the compose project in `working_dir` (ModelTrainer's local jobs)."""
    result = subprocess.run(["docker", "ps", "-a", "-q", "--no-trunc", "--filter",
                             f"label=com.docker.compose.project.working_dir={working_dir}"],
                            capture_output=True, text=True)
    if result.stdout.split():
        subprocess.run(["docker", "rm", "-f", *result.stdout.split()], capture_output=True)
