"""build_and_push.sh: a real push to a registry on 127.0.0.1, and its dry run, errors and ARM guard.

The AWS CLI is replaced by a fake on PATH that answers the STS and ECR calls the script makes and
records them; the registry is Debian's `docker-registry` (the real Docker distribution registry)
with htpasswd auth, so a push only succeeds when the password from `ecr get-login-password` reached
`docker login`. `--registry 127.0.0.1:PORT` stands in for ACCOUNT.dkr.ecr.REGION.amazonaws.com.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest

from devkit.net import free_port
from devkit.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "build_and_push.sh"
ACCOUNT = "123456789012"
PASSWORD = "ecr-token-from-fake-aws"
REGION = "us-west-2"
# Tools the script runs besides aws and docker; a test PATH holds links to these only.
BASE_TOOLS = ("bash", "dirname", "git", "sed", "head", "uname", "mktemp", "cat", "rm", "cp", "env", "grep")

FAKE_AWS = """\
#!{python}
# A stand-in for the AWS CLI: answers what build_and_push.sh asks, records every call.
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_AWS_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
state = os.environ["FAKE_AWS_STATE"]
cmd = args[:2]
def opt(name):
    return args[args.index(name) + 1] if name in args else None
if cmd == ["configure", "get"]:
    sys.exit(1)  # nothing configured
if cmd == ["sts", "get-caller-identity"]:
    if os.environ.get("FAKE_AWS_NO_CREDENTIALS"):
        print("Unable to locate credentials. You can configure credentials by running \\"aws configure\\".",
              file=sys.stderr)
        sys.exit(253)
    assert args[2:] == ["--query", "Account", "--output", "text"], args
    print("{account}")
elif cmd == ["ecr", "describe-repositories"]:
    name = opt("--repository-names")
    if not os.path.exists(os.path.join(state, name)):
        print("An error occurred (RepositoryNotFoundException) when calling the DescribeRepositories "
              f"operation: The repository with name '{{name}}' does not exist in the registry with id "
              "'{account}'", file=sys.stderr)
        sys.exit(254)
    print(json.dumps({{"repositories": [{{"repositoryName": name}}]}}))
elif cmd == ["ecr", "create-repository"]:
    name = opt("--repository-name")
    open(os.path.join(state, name), "w").close()
    print(json.dumps({{"repository": {{"repositoryName": name}}}}))
elif cmd == ["ecr", "get-login-password"]:
    print("{password}")
else:
    print(f"fake aws: unexpected call {{args}}", file=sys.stderr)
    sys.exit(2)
"""

FAKE_DOCKER = """\
#!/bin/sh
# A stand-in for docker in tests that must not build: records calls; buildx only if FAKE_BUILDX=1.
echo "$*" >> "$FAKE_DOCKER_LOG"
case "$1 $2" in
  "buildx version") [ "${FAKE_BUILDX:-0}" = 1 ] || exit 1; echo "github.com/docker/buildx v0.12.1" ;;
  "buildx build") [ "$3" = --help ] && echo "      --provenance string   Shorthand for --attest=type=provenance" ;;
  "info "*) exit 0 ;;
  *) exit 0 ;;
esac
"""


class Fakes:
    """A bin folder for PATH with the fake aws (and optionally a fake docker), and their records."""

    def __init__(self, tmp: Path, real_docker: bool = True, uname: str | None = None):
        self.bin = tmp / "bin"
        self.bin.mkdir()
        self.state = tmp / "aws-state"
        self.state.mkdir()
        self.aws_log = tmp / "aws-calls.jsonl"
        self.docker_log = tmp / "docker-calls.txt"
        self._write("aws", FAKE_AWS.format(python=sys.executable, account=ACCOUNT, password=PASSWORD))
        for tool in BASE_TOOLS:
            if tool != "uname" or not uname:
                self.link(tool)
        if real_docker:
            self.link("docker")
        else:
            self._write("docker", FAKE_DOCKER)
        if uname:
            self._write("uname", f"#!/bin/sh\necho {uname}\n")
        self.docker_config = tmp / "docker-config"
        self.docker_config.mkdir()

    def _write(self, name: str, text: str) -> None:
        path = self.bin / name
        # Replace a link to the real tool; writing through it would overwrite the real tool.
        if path.is_symlink():
            path.unlink()
        path.write_text(text)
        path.chmod(0o755)

    def link(self, tool: str) -> None:
        found = shutil.which(tool)
        assert found, f"{tool} is needed by build_and_push.sh and its tests"
        if not (self.bin / tool).exists():
            (self.bin / tool).symlink_to(found)

    def remove(self, tool: str) -> None:
        (self.bin / tool).unlink()

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "PATH": str(self.bin),
            "HOME": str(self.bin.parent),
            "FAKE_AWS_LOG": str(self.aws_log),
            "FAKE_AWS_STATE": str(self.state),
            "FAKE_DOCKER_LOG": str(self.docker_log),
            # docker login writes its credentials here, not into the user's ~/.docker.
            "DOCKER_CONFIG": str(self.docker_config),
            "AWS_REGION": REGION,
        }
        env.update(extra)
        return env

    def aws_calls(self) -> list[list[str]]:
        if not self.aws_log.exists():
            return []
        return [json.loads(line) for line in self.aws_log.read_text().splitlines()]

    def docker_calls(self) -> list[str]:
        return self.docker_log.read_text().splitlines() if self.docker_log.exists() else []


def ensure_tool(tool: str, package: str) -> str:
    """The tool's path, installing Debian's package first when it is missing (a fresh CI machine)."""
    found = shutil.which(tool)
    if found:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # A package's init script must not start a service (docker-registry's would listen on :5000).
    policy = Path("/usr/sbin/policy-rc.d")
    added = not policy.exists()
    if added:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            subprocess.run(install, env=env, capture_output=True)
    finally:
        if added:
            policy.unlink()
    found = shutil.which(tool)
    assert found, f"{tool} is missing and `apt-get install {package}` did not provide it"
    return found


def run_script(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


# --- without Docker: options, dry run, errors ---------------------------------------------------


def test_shellcheck_clean():
    shellcheck = ensure_tool("shellcheck", "shellcheck")
    result = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_help(tmp_path):
    result = run_script(["--help"], Fakes(tmp_path, real_docker=False).env())
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: build_and_push.sh [cpu|gpu] [options]")
    for option in ("--region", "--dry-run", "--registry", "--image", "--extra-ca"):
        assert option in result.stdout


def test_unknown_option_is_refused(tmp_path):
    result = run_script(["--regoin", "x"], Fakes(tmp_path, real_docker=False).env())
    assert result.returncode != 0
    assert "unknown argument '--regoin'" in result.stderr


def test_dry_run_prints_every_command_and_runs_none(tmp_path):
    fakes = Fakes(tmp_path, real_docker=False)
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM scratch\n")
    result = run_script(["gpu", "--dry-run", "--region", "eu-central-1", "--version", "v1.2.3",
                         "--dockerfile", str(dockerfile), "--context", str(tmp_path)], fakes.env())
    assert result.returncode == 0, result.stderr
    host = '"$account".dkr.ecr.eu-central-1.amazonaws.com/mxnet-byoc'
    expected = textwrap.dedent(f"""\
        account=$(aws sts get-caller-identity --query Account --output text)
        aws ecr describe-repositories --region eu-central-1 --repository-names mxnet-byoc >/dev/null 2>&1 ||
          aws ecr create-repository --region eu-central-1 --repository-name mxnet-byoc \
--image-scanning-configuration scanOnPush=true
        aws ecr get-login-password --region eu-central-1 |
          docker login --username AWS --password-stdin "$account.dkr.ecr.eu-central-1.amazonaws.com"
        docker build --network host --build-arg BASE_IMAGE=debian:bookworm-slim -f {dockerfile} \
-t {host}:v1.2.3-gpu {tmp_path}
        docker tag {host}:v1.2.3-gpu {host}:gpu
        docker push {host}:v1.2.3-gpu
        docker push {host}:gpu
        echo "$account.dkr.ecr.eu-central-1.amazonaws.com/mxnet-byoc:v1.2.3-gpu"
        """)
    assert result.stdout == expected
    # Nothing ran: no AWS call at all, and docker only asked whether buildx exists.
    assert fakes.aws_calls() == []
    assert fakes.docker_calls() == ["buildx version"]
    # The printed script is valid shell.
    assert subprocess.run(["bash", "-n"], input=result.stdout, text=True).returncode == 0


def a_dockerfile(tmp: Path) -> list[str]:
    (tmp / "Dockerfile").write_text("FROM scratch\n")
    return ["--dockerfile", str(tmp / "Dockerfile"), "--context", str(tmp)]


def test_dry_run_with_buildx_builds_for_amd64_without_provenance(tmp_path):
    fakes = Fakes(tmp_path, real_docker=False, uname="arm64")
    result = run_script(["--dry-run", "--version", "v1", "--registry", "127.0.0.1:5000", *a_dockerfile(tmp_path)],
                        fakes.env(FAKE_BUILDX="1"))
    assert result.returncode == 0, result.stderr
    assert "building linux/amd64 under emulation" in result.stderr
    assert (f"docker buildx build --platform linux/amd64 --load --provenance=false --network host "
            f"--build-arg BASE_IMAGE=debian:bookworm-slim -f {tmp_path}/Dockerfile "
            f"-t 127.0.0.1:5000/mxnet-byoc:v1-cpu {tmp_path}\n") in result.stdout


def test_arm_machine_without_buildx_stops_with_a_clear_word(tmp_path):
    fakes = Fakes(tmp_path, real_docker=False, uname="aarch64")
    result = run_script(["--version", "v1", *a_dockerfile(tmp_path)], fakes.env())
    assert result.returncode != 0
    assert "aarch64 machine and its Docker has no buildx" in result.stderr
    assert "exec format error" in result.stderr
    assert fakes.aws_calls() == []


def test_project_build_prepares_base_image_and_proxy_ca_like_the_makefile(tmp_path):
    fakes = Fakes(tmp_path, real_docker=False)
    ca = tmp_path / "proxy-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    result = run_script(["gpu", "--dry-run", "--version", "v1", "--registry", "127.0.0.1:5000", "--extra-ca", str(ca)],
                        fakes.env(BASE_IMAGE="debian:test-base"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    build = lines.index(f"docker build --network host --build-arg BASE_IMAGE=debian:test-base "
                        f"-f {ROOT}/docker/Dockerfile.gpu -t 127.0.0.1:5000/mxnet-byoc:v1-gpu {ROOT}")
    assert lines[build - 3:build] == [
        f"env BASE_IMAGE=debian:test-base {ROOT}/scripts/make-base-image.sh",
        f"rm -f {ROOT}/docker/ca/extra-ca.pem",
        f"cp {ca} {ROOT}/docker/ca/extra-ca.pem",
    ]
    # The Makefile's build command, for comparison: the same flags.
    makefile = (ROOT / "Makefile").read_text()
    assert "DOCKER_BUILD := docker build --network host --build-arg BASE_IMAGE=$(BASE_IMAGE)" in makefile
    # EXTRA_CA= (empty) means no CA, as with make.
    result = run_script(["--dry-run", "--version", "v1"], fakes.env(EXTRA_CA=""))
    assert "cp " not in result.stdout and f"rm -f {ROOT}/docker/ca/extra-ca.pem" in result.stdout
    result = run_script(["--dry-run", "--extra-ca", str(tmp_path / "missing.pem")], fakes.env())
    assert result.returncode != 0 and "not found" in result.stderr


@pytest.mark.parametrize("tool, message", [("aws", "the AWS CLI ('aws') is not on PATH"),
                                           ("docker", "'docker' is not on PATH")])
def test_a_missing_tool_is_named_before_any_call(tmp_path, tool, message):
    fakes = Fakes(tmp_path, real_docker=False)
    fakes.remove(tool)
    result = run_script(["--version", "v1", *a_dockerfile(tmp_path)], fakes.env())
    assert result.returncode != 0
    assert message in result.stderr
    assert fakes.aws_calls() == []


def test_missing_credentials(tmp_path):
    fakes = Fakes(tmp_path, real_docker=False)
    result = run_script(["--version", "v1", *a_dockerfile(tmp_path)], fakes.env(FAKE_AWS_NO_CREDENTIALS="1"))
    assert result.returncode != 0
    assert "AWS credentials are missing or not valid" in result.stderr
    assert "Unable to locate credentials" in result.stderr
    assert fakes.aws_calls() == [["sts", "get-caller-identity", "--query", "Account", "--output", "text"]]
    assert set(fakes.docker_calls()) <= {"info", "buildx version"}  # probes only: no build, login or push


def test_missing_region(tmp_path):
    fakes = Fakes(tmp_path, real_docker=False)
    env = fakes.env()
    del env["AWS_REGION"]
    result = run_script(["--version", "v1", *a_dockerfile(tmp_path)], env)
    assert result.returncode != 0
    assert "no AWS region" in result.stderr
    assert fakes.aws_calls() == [["configure", "get", "region"]]


# --- with Docker: a real build and push ---------------------------------------------------------


def bcrypt_hash(password: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # the registry's htpasswd accepts bcrypt only; glibc's crypt makes it

    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))


class Registry:
    """Debian's docker-registry on 127.0.0.1:PORT with htpasswd auth (user AWS, the fake ECR token)."""

    def __init__(self, tmp: Path):
        exe = ensure_tool("docker-registry", "docker-registry")
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        (tmp / "htpasswd").write_text(f"AWS:{bcrypt_hash(PASSWORD)}\n")
        config = tmp / "registry.yml"
        config.write_text(textwrap.dedent(f"""\
            version: 0.1
            log: {{level: warn}}
            storage: {{filesystem: {{rootdirectory: {tmp / "registry-data"}}}}}
            http: {{addr: "{self.host}", secret: test-only}}
            auth: {{htpasswd: {{realm: test, path: {tmp / "htpasswd"}}}}}
            """))
        self.log = open(tmp / "registry.log", "wb")
        self.proc = subprocess.Popen([exe, "serve", str(config)], stdout=self.log, stderr=subprocess.STDOUT)
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        wait_until(self._answers, 30, "docker-registry answering", process=self.proc,
                   details=(tmp / "registry.log").read_text)

    def _answers(self) -> bool:
        try:
            self.get("/v2/")
            return True
        except (urllib.error.URLError, ConnectionError):
            return False

    def get(self, path: str, accept: str = "application/json") -> tuple[dict, dict]:
        auth = base64.b64encode(f"AWS:{PASSWORD}".encode()).decode()
        request = urllib.request.Request(f"http://{self.host}{path}",
                                         headers={"Authorization": f"Basic {auth}", "Accept": accept})
        with self._opener.open(request, timeout=10) as response:
            return json.loads(response.read() or b"{}"), dict(response.headers)

    def tags(self, repository: str) -> list[str]:
        return sorted(self.get(f"/v2/{repository}/tags/list")[0]["tags"])

    def config_digest(self, repository: str, tag: str) -> str:
        manifest, _ = self.get(f"/v2/{repository}/manifests/{tag}",
                               accept="application/vnd.docker.distribution.manifest.v2+json")
        return manifest["config"]["digest"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def _local_image_id(ref: str) -> str:
    return subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", ref],
                          capture_output=True, text=True, check=True).stdout.strip()


def _remove_images(*refs: str) -> None:
    subprocess.run(["docker", "image", "rm", "--force", *refs], capture_output=True)


@pytest.mark.container
def test_push_to_a_local_registry(tmp_path, docker_engine):  # docker_engine: tests/container/conftest.py
    registry = Registry(tmp_path)
    fakes = Fakes(tmp_path)
    # A tiny image keeps the test fast; the build path is the same as for docker/Dockerfile.cpu.
    context = tmp_path / "context"
    context.mkdir()
    (context / "hello.txt").write_text("pushed by build_and_push.sh's test\n")
    (context / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /\n")
    repo = f"byoc-test-{os.getpid()}"
    pushed = [f"{registry.host}/{repo}:{tag}" for tag in ("t1-cpu", "cpu", "t1-gpu", "gpu")]
    prebuilt = f"byoc-test-prebuilt:{os.getpid()}"
    try:
        # 1. Build and push: the repository does not exist yet, so it is created.
        result = run_script(["cpu", "--version", "t1", "--repository", repo, "--registry", registry.host,
                             "--dockerfile", str(context / "Dockerfile"), "--context", str(context)],
                            fakes.env())
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.splitlines() == [f"{registry.host}/{repo}:t1-cpu"]
        assert fakes.aws_calls() == [
            ["sts", "get-caller-identity", "--query", "Account", "--output", "text"],
            ["ecr", "describe-repositories", "--region", REGION, "--repository-names", repo],
            ["ecr", "create-repository", "--region", REGION, "--repository-name", repo,
             "--image-scanning-configuration", "scanOnPush=true"],
            ["ecr", "get-login-password", "--region", REGION],
        ]
        first_calls = fakes.aws_calls()
        assert registry.tags(repo) == ["cpu", "t1-cpu"]
        built = _local_image_id(pushed[0])
        assert registry.config_digest(repo, "t1-cpu") == built
        assert registry.config_digest(repo, "cpu") == built

        # 2. Push a prebuilt image as the GPU flavour: the repository exists now, nothing is created.
        subprocess.run(["docker", "tag", pushed[0], prebuilt], check=True)
        fakes.aws_log.unlink()
        result = run_script(["gpu", "--version", "t1", "--repository", repo, "--registry", registry.host,
                             "--image", prebuilt], fakes.env())
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.splitlines() == [f"{registry.host}/{repo}:t1-gpu"]
        assert [call[:2] for call in fakes.aws_calls()] == [
            ["sts", "get-caller-identity"], ["ecr", "describe-repositories"], ["ecr", "get-login-password"]]
        assert registry.tags(repo) == ["cpu", "gpu", "t1-cpu", "t1-gpu"]
        # The minimal policy in docs/ allows every ECR call the script makes (STS needs no permission).
        policy = json.loads((ROOT / "docs" / "iam-policy.json").read_text())
        allowed = {a for st in policy["Statement"] for a in ([st["Action"]] if isinstance(st["Action"], str)
                                                               else st["Action"])}
        needed = {"ecr:" + {"describe-repositories": "DescribeRepositories", "create-repository": "CreateRepository",
                            "get-login-password": "GetAuthorizationToken"}[call[1]]
                  for call in first_calls + fakes.aws_calls() if call[0] == "ecr"}
        assert needed <= allowed, needed - allowed
        assert registry.config_digest(repo, "gpu") == built
    finally:
        _remove_images(*pushed, prebuilt)
        registry.stop()


@pytest.mark.container
def test_wrong_login_password_fails_the_push(tmp_path, docker_engine):
    registry = Registry(tmp_path)
    fakes = Fakes(tmp_path)
    aws = fakes.bin / "aws"
    aws.write_text(aws.read_text().replace(PASSWORD, "not-the-password"))
    result = run_script(["--version", "t1", "--registry", registry.host, "--image", "no-such-image:x"],
                        fakes.env())
    registry.stop()
    assert result.returncode != 0
    assert f"docker login to {registry.host} failed" in result.stderr
