"""mxnet_byoc.usercode: the user's code from a folder, a tarball or S3 (a real S3 API: moto's server on
127.0.0.1), unpacked safely, and its requirements.txt installed with pip."""

from __future__ import annotations

import base64
import hashlib
import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from mxnet_byoc import usercode
from mxnet_byoc.usercode import UserCodeError


def tarball(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_a_local_folder_is_used_where_it_is(tmp_path):
    (tmp_path / "code").mkdir()
    assert usercode.fetch(str(tmp_path / "code"), tmp_path / "unused") == tmp_path / "code"
    assert not (tmp_path / "unused").exists()


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_a_local_tarball_is_unpacked(tmp_path, scheme):
    archive = tarball(tmp_path / "sourcedir.tar.gz", {"train.py": "print(1)\n", "lib/util.py": "X = 1\n"})
    code = usercode.fetch(f"{scheme}{archive}", tmp_path / "code")
    assert (code / "train.py").read_text() == "print(1)\n"
    assert (code / "lib" / "util.py").read_text() == "X = 1\n"


def test_a_missing_location_says_so(tmp_path):
    with pytest.raises(UserCodeError, match="does not exist"):
        usercode.fetch(str(tmp_path / "nowhere"), tmp_path / "code")
    with pytest.raises(UserCodeError, match="neither a folder, a tarball nor s3"):
        usercode.fetch("https://example.com/code.tar.gz", tmp_path / "code")
    with pytest.raises(UserCodeError, match="names no S3 object"):
        usercode.fetch("s3://bucket-only", tmp_path / "code")


def test_a_file_that_is_no_tarball_says_so(tmp_path):
    (tmp_path / "train.py").write_text("print(1)\n")
    with pytest.raises(UserCodeError, match="cannot unpack the code archive"):
        usercode.fetch(str(tmp_path / "train.py"), tmp_path / "code")


def _hostile(tmp_path: Path, member: tarfile.TarInfo) -> Path:
    path = tmp_path / "hostile.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = 1 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize("member, reason", [
    (_member("../escape.py"), "outside the code folder"),
    (_member("/tmp/absolute.py"), "outside the code folder"),
    (_member("a/../../escape.py"), "outside the code folder"),
    (_member("evil", tarfile.SYMTYPE, "/etc/passwd"), "points outside"),
    (_member("evil", tarfile.SYMTYPE, "../../x"), "points outside"),
    (_member("evil", tarfile.LNKTYPE, "../x"), "points outside"),
    (_member("dev", tarfile.CHRTYPE), "not a file, folder or link"),
])
def test_a_tarball_cannot_write_outside_its_folder(tmp_path, member, reason):
    with pytest.raises(UserCodeError, match=reason):
        usercode.fetch(str(_hostile(tmp_path, member)), tmp_path / "out" / "code")
    assert not (tmp_path / "out" / "escape.py").exists()
    assert not list((tmp_path / "out" / "code").iterdir())


# -- S3, through a real S3 API on 127.0.0.1 ---------------------------------------------------------------

@pytest.fixture(scope="module")
def s3_endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", region_name="us-west-2", endpoint_url=endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    client.create_bucket(Bucket="jobs", CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    yield endpoint
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_REGION": "us-west-2", "AWS_EC2_METADATA_DISABLED": "true",
                        usercode.S3_ENDPOINT_URL: s3_endpoint}.items():
        monkeypatch.setenv(name, value)
    return boto3.client("s3", region_name="us-west-2", endpoint_url=s3_endpoint)


def test_an_s3_tarball_is_downloaded_and_unpacked(s3, tmp_path):
    archive = tarball(tmp_path / "sourcedir.tar.gz", {"train.py": "print('from s3')\n"})
    s3.upload_file(str(archive), "jobs", "job-1/source/sourcedir.tar.gz")
    code = usercode.fetch("s3://jobs/job-1/source/sourcedir.tar.gz", tmp_path / "code")
    assert (code / "train.py").read_text() == "print('from s3')\n"


def test_a_missing_s3_object_or_bucket_says_which(s3, tmp_path):
    with pytest.raises(UserCodeError, match=r"s3://jobs/nothing.tar.gz: no such object"):
        usercode.fetch("s3://jobs/nothing.tar.gz", tmp_path / "code")
    with pytest.raises(UserCodeError, match=r"s3://no-such-bucket/x.tar.gz: no such object"):
        usercode.fetch("s3://no-such-bucket/x.tar.gz", tmp_path / "code")


def test_no_credentials_says_so(s3, tmp_path, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(UserCodeError, match="no AWS credentials"):
        usercode.fetch("s3://jobs/x.tar.gz", tmp_path / "code")


# -- requirements.txt ----------------------------------------------------------------------------------------

def _wheel(folder: Path, name: str = "byoc_tiny", version: str = "0.1") -> Path:
    """A minimal pure-Python wheel, made here so the install needs no index."""
    files = {f"{name}/__init__.py": f"VERSION = {version!r}\n",
             f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{name}-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                  "Tag: py3-none-any\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{name}-{version}.dist-info/RECORD,,")
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
        zf.writestr(f"{name}-{version}.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


@pytest.fixture(scope="module")
def scratch_python(tmp_path_factory) -> str:
    """A virtualenv of its own, so installs never touch the project's."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    return str(venv / "bin" / "python")


def test_no_requirements_file_installs_nothing(tmp_path, scratch_python):
    assert usercode.install_requirements(tmp_path, python=scratch_python) is False


def test_requirements_are_installed_and_pip_output_reaches_the_log(tmp_path, scratch_python, capfd):
    wheel = _wheel(tmp_path)
    (tmp_path / "requirements.txt").write_text(f"--no-index\n./{wheel.name}\n")
    assert usercode.install_requirements(tmp_path, python=scratch_python) is True
    assert "Successfully installed byoc_tiny-0.1" in capfd.readouterr().out.replace("byoc-tiny", "byoc_tiny")
    done = subprocess.run([scratch_python, "-c", "import byoc_tiny; print(byoc_tiny.VERSION)"],
                          capture_output=True, text=True)
    assert done.stdout.strip() == "0.1"


def test_a_failing_install_gives_pips_reason(tmp_path, scratch_python):
    (tmp_path / "requirements.txt").write_text("--no-index\nno-such-package-byoc==1.0\n")
    with pytest.raises(UserCodeError) as failure:
        usercode.install_requirements(tmp_path, python=scratch_python)
    message = str(failure.value)
    assert message.startswith("pip could not install requirements.txt (exit 1): ERROR:")
    assert "no-such-package-byoc" in message
