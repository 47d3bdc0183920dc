"""What both images hold and declare: SageMaker's contract (label, CMD, no /opt/ml, PATH), what SDK 3's script
runner needs (bash, python3 and pip3 on PATH), and supply-chain hygiene (hash-locked packages listed in the
image, no compilers, caches or build-time CA; pip only in the venv, as pinned in the lock, for the user's
requirements.txt in script mode)."""

from __future__ import annotations

import json
import re

import pytest

from devkit.project import ROOT
from devkit.shell import sh

pytestmark = pytest.mark.container

LOCKS = {"cpu": ROOT / "docker" / "requirements-cpu.lock", "gpu": ROOT / "docker" / "requirements-gpu.lock"}
# The full images add these to the lean venv (Horovod, MPI and the libraries users' scripts import).
FULL_LOCKS = [ROOT / "docker" / "requirements-libraries.lock", ROOT / "docker" / "requirements-source.lock"]


@pytest.fixture(params=["cpu", "gpu"])
def flavour(request) -> str:
    return request.param


@pytest.fixture
def image(request, flavour: str) -> str:
    return request.getfixturevalue(f"{flavour}_image")


def inspect(image: str) -> dict:
    return json.loads(sh("docker", "image", "inspect", image).stdout)[0]


def in_image(image: str, script: str) -> str:
    """Run a shell snippet in a fresh container of the image (no mounts, so /opt/ml is the image's own)."""
    return sh("docker", "run", "--rm", "--network", "none", image, "sh", "-c", script).stdout


def test_contract_metadata(image: str) -> None:
    config = inspect(image)["Config"]
    assert config["Labels"]["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    assert config["Cmd"] == ["train"]  # SDK 3.x local mode passes no command
    assert not config.get("Entrypoint"), config.get("Entrypoint")  # `train`/`serve` replace CMD directly
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].split(":")[:2] == ["/opt/program", "/opt/venv/bin"]


def test_programs_resolve_and_nothing_is_under_opt_ml(image: str) -> None:
    out = in_image(image, "command -v train; command -v serve; ls -d /opt/ml 2>&1 || true; "
                          "python3 --version; readlink -f /opt/venv/bin/python3")
    lines = out.splitlines()
    assert lines[:2] == ["/opt/program/train", "/opt/program/serve"], out
    assert "No such file or directory" in lines[2], out  # SageMaker mounts /opt/ml; the image has none
    assert lines[3].startswith("Python 3.11."), out  # Debian bookworm's python3
    assert lines[4] == "/usr/bin/python3.11", out


def test_installed_packages_are_exactly_the_lock(image: str, flavour: str) -> None:
    """PACKAGES.txt (pip freeze at build time) ships in the image and matches the hash-pinned lock."""
    shipped = in_image(image, "cat /opt/program/PACKAGES.txt")
    installed = {_norm(n): v for n, v in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", shipped, re.M)}
    lock_text = "\n".join(lock.read_text() for lock in [LOCKS[flavour], *FULL_LOCKS])
    locked = {_norm(n): v for n, v in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", lock_text, re.M)}
    assert installed == locked
    assert installed["pip"] == "26.3"
    assert installed["numpy"] == "1.23.5"  # MXNet 1.9.1 needs numpy < 1.24
    assert installed["mxnet" if flavour == "cpu" else "mxnet-cu112"] == "1.9.1"
    # Every requirement in the lock carries a hash (pip install --require-hashes enforces the rest).
    for block in re.split(r"\n(?=[A-Za-z0-9])", lock_text):
        if re.match(r"[A-Za-z0-9]", block):
            assert "--hash=sha256:" in block, block


def test_what_sdk3_script_runner_needs(image: str) -> None:
    """ModelTrainer(source_code=...) runs `/bin/bash -c .../sm_drivers/sm_train.sh`, which stops unless
    `command -v python3` and `command -v pip3 || command -v pip` both succeed, and installs
    SourceCode(requirements=...) with `python3 -m pip`: all of them the venv's."""
    out = in_image(image, "command -v bash; command -v python3; command -v pip3; command -v pip; "
                          "python3 -m pip --version; ls /usr/bin | grep -E '^pip' || true")
    lines = out.splitlines()
    assert lines[:4] == ["/usr/bin/bash", "/opt/venv/bin/python3", "/opt/venv/bin/pip3", "/opt/venv/bin/pip"], out
    assert lines[4].startswith("pip 26.3 from /opt/venv/"), out
    assert len(lines) == 5, out  # Debian's python3 has no pip of its own


def test_no_compilers_caches_or_build_ca(image: str) -> None:
    # pip is there on purpose: script mode installs the user's requirements.txt with it (usercode.py).
    out = in_image(image, """
        for tool in gcc cc c++ g++ make apt-file; do command -v $tool; done
        ls /opt/venv/lib/python3*/site-packages | grep -iE '^(setuptools|wheel)(-|$)'
        find /var/lib/apt/lists /var/cache/apt /root/.cache /tmp -mindepth 1 \\
            -not -path '/var/lib/apt/lists/partial' -not -name lock 2>/dev/null
        ls /tmp/extra-ca /tmp/ca-bundle.pem 2>/dev/null
        dpkg -l ca-certificates 2>/dev/null | grep '^ii'
        exit 0
    """)
    assert out.strip() == "", f"found in the image:\n{out}"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
