"""A user's own code (script mode), from where SageMaker puts it to a folder ready to import or run.

Both halves take code the same way, so both use this module:
- training: the `sagemaker_submit_directory` hyperparameter, an `s3://.../sourcedir.tar.gz` the SDK uploaded
  (or, in local mode, a local folder mounted at /opt/ml/code);
- serving: `/opt/ml/model/code/` (the SDK repacks `entry_point` and `source_dir` into model.tar.gz), or
  `SAGEMAKER_SUBMIT_DIRECTORY` as a local folder or an s3:// tarball.
A `requirements.txt` at the top of the code is installed with pip into the image's Python before the code runs
(training code with a setup.py is pip-installed itself, requirements.txt included: install_package).

Every failure is a `UserCodeError` whose message is the reason a user can act on (it becomes the training
job's FailureReason, or /ping's answer while serving).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tarfile
import tempfile
from collections import deque
from pathlib import Path
from urllib.parse import urlparse

from .errors import ReasonError

log = logging.getLogger(__name__)

REQUIREMENTS_FILE = "requirements.txt"
# Where the S3 API is, for S3-compatible stores and tests; AWS's training toolkit reads the same variable.
# botocore's own AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL work too when this one is unset.
S3_ENDPOINT_URL = "S3_ENDPOINT_URL"
# SageMaker's region for the S3 client: AWS_REGION first, as the toolkit does, then the one the SDK sends.
REGION_VARIABLES = ("AWS_REGION", "SAGEMAKER_REGION", "AWS_DEFAULT_REGION")
PIP_TAIL_LINES = 8  # of pip's output, in the reason when it fails


class UserCodeError(ReasonError):
    """The user's code cannot be fetched or its requirements installed; the message says why."""


def fetch(location: str, target: Path, region: str | None = None) -> Path:
    """The folder holding the user's code: `location` itself when it is a local folder, else `target`
    with the tarball at `location` (a local path, file://, or s3://bucket/key) unpacked into it."""
    parsed = urlparse(location)
    if parsed.scheme == "s3":
        if not parsed.netloc or not parsed.path.strip("/"):
            raise UserCodeError(f"the code location {location!r} names no S3 object (expected s3://bucket/key)")
        with tempfile.TemporaryDirectory(prefix="usercode-") as tmp:
            archive = Path(tmp) / "sourcedir.tar.gz"
            _download(parsed.netloc, parsed.path.lstrip("/"), archive, region)
            return _unpack(archive, target, location)
    path = Path(parsed.path if parsed.scheme == "file" else location)
    if parsed.scheme not in ("", "file"):
        raise UserCodeError(f"the code location {location!r} is neither a folder, a tarball nor s3://bucket/key")
    if path.is_dir():
        return path
    if path.is_file():
        return _unpack(path, target, location)
    raise UserCodeError(f"the code location {location} does not exist")


def _download(bucket: str, key: str, destination: Path, region: str | None) -> None:
    import boto3.session
    import botocore.exceptions

    region = region or next((os.environ[v] for v in REGION_VARIABLES if os.environ.get(v)), None)
    session = boto3.session.Session(region_name=region)  # not the default session: it caches credentials
    client = session.client("s3", endpoint_url=os.environ.get(S3_ENDPOINT_URL) or None)
    where = f"s3://{bucket}/{key}"
    log.info("downloading the code from %s", where)
    try:
        client.download_file(bucket, key, str(destination))
    except botocore.exceptions.NoCredentialsError:
        raise UserCodeError(f"cannot download the code from {where}: no AWS credentials in the container") from None
    except botocore.exceptions.ClientError as e:
        error = e.response.get("Error", {})
        code, message = error.get("Code", "?"), error.get("Message") or ""
        if code in ("404", "NoSuchKey", "NoSuchBucket"):
            message = "no such object"
        elif code in ("403", "AccessDenied"):
            message = "access denied: the role needs s3:GetObject on it"
        raise UserCodeError(f"cannot download the code from {where}: {message or code}") from None
    except (botocore.exceptions.BotoCoreError, OSError) as e:
        raise UserCodeError(f"cannot download the code from {where}: {e}") from None


def _unpack(archive: Path, target: Path, location: str) -> Path:
    """Unpack a (gzipped) tarball into `target`, refusing members that would land outside it."""
    try:
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, target.resolve())
            tar.extractall(target, members=members)
    except (tarfile.TarError, OSError) as e:
        raise UserCodeError(f"cannot unpack the code archive {location}: {e}") from None
    log.info("unpacked the code from %s into %s", location, target)
    return target


def _check_member(member: tarfile.TarInfo, root: Path) -> None:
    """A tarball from S3 is outside our control: no absolute paths, no `..` out of the folder, no links
    pointing out of it, no device files. (Debian's Python 3.11.2 predates tarfile's extraction filters.)"""
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise tarfile.TarError(f"{member.name!r} is not a file, folder or link")
    destination = (root / member.name).resolve()
    if not destination.is_relative_to(root):
        raise tarfile.TarError(f"{member.name!r} would be written outside the code folder")
    if member.issym() or member.islnk():
        base = root if member.islnk() else destination.parent
        if Path(member.linkname).is_absolute() or not (base / member.linkname).resolve().is_relative_to(root):
            raise tarfile.TarError(f"link {member.name!r} points outside the code folder ({member.linkname})")


def install_requirements(code_dir: Path, python: str = sys.executable, constraints: Path | None = None) -> bool:
    """pip-install `requirements.txt` from the top of `code_dir`; False when there is none. `constraints`: a pip
    constraints file that the installation must keep to (installed_constraints).

    pip's output streams to this process's stdout (the job's log) as it comes; its errors make the reason."""
    requirements = Path(code_dir) / REQUIREMENTS_FILE
    if not requirements.is_file():
        return False
    log.info("installing the packages in %s", requirements)
    extra = ["-c", str(constraints)] if constraints else []
    _pip(python, ["-r", REQUIREMENTS_FILE, *extra], code_dir, REQUIREMENTS_FILE)
    return True


def installed_constraints(path: Path) -> Path:
    """A pip constraints file at `path` pinning every package installed now to its version: with it, a model's
    requirements.txt may add packages but never change one that the server, or another model, already uses."""
    from importlib import metadata

    pins = sorted({f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata['Name']})
    path.write_text("\n".join(pins) + "\n")
    return path


def install_package(code_dir: Path, python: str = sys.executable) -> None:
    """pip-install `code_dir` itself (a folder with a setup.py), with its requirements.txt when it has one,
    as AWS's training toolkit does before running such code as a module."""
    extra = ["-r", REQUIREMENTS_FILE] if (Path(code_dir) / REQUIREMENTS_FILE).is_file() else []
    log.info("installing the code in %s as a package", code_dir)
    _pip(python, [".", *extra], code_dir, f"the code in {code_dir} as a package")


def _pip(python: str, args: list[str], cwd: Path, what: str) -> None:
    command = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", *args]
    tail: deque[str] = deque(maxlen=PIP_TAIL_LINES)
    errors: list[str] = []
    try:
        with subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace") as pip:
            assert pip.stdout is not None
            for line in pip.stdout:
                sys.stdout.write(line)
                if line.strip():
                    tail.append(line.strip())
                    if line.startswith("ERROR:"):
                        errors.append(line.strip())
        sys.stdout.flush()
    except OSError as e:
        raise UserCodeError(f"cannot run pip to install {what}: {e}") from None
    if pip.returncode != 0:
        reason = " | ".join(errors or tail) or "pip printed nothing"
        raise UserCodeError(f"pip could not install {what} (exit {pip.returncode}): {reason}")
