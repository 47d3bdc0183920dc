"""Script mode: this image's own runner (mxnet_byoc/train/script/) against AWS's `sagemaker-training` toolkit.

Builds a variant of $CPU_IMAGE with the toolkit installed as an image would install it (one layer: a C compiler
for its extension, pip, the compiler removed again; numpy held at the image's version; tagged $CPU_IMAGE-toolkit
and left in place), then measures both runners in it:
- sizes of both images;
- start-up: from `docker run` to the first line of a trivial script, and the whole run, median of --runs, for
  `train` (ours) and the toolkit's `train` (/opt/venv/bin/train);
- what each does with the same jobs: the SM_* variables and arguments (compared name by name), a script that exits
  3, one that raises, a requirements.txt pip cannot install, and `docker stop` (exit code, output/failure, seconds).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from devkit.project import ROOT
from devkit.shell import sh
from figures import Figure

TOOLKIT = "sagemaker-training==5.1.4"
DOCKERFILE = """
ARG IMAGE
FROM ${IMAGE}
COPY docker/ca/ /tmp/extra-ca/
RUN set -eu; apt-get update; \\
    apt-get install -y --no-install-recommends gcc libc6-dev python3-dev; \\
    cat /etc/ssl/certs/ca-certificates.crt /tmp/extra-ca/*.pem > /tmp/ca.pem 2>/dev/null || true; \\
    /opt/venv/bin/python -m pip install --no-cache-dir --cert /tmp/ca.pem TOOLKIT numpy==1.23.5; \\
    apt-get purge -y --auto-remove gcc libc6-dev python3-dev; apt-get clean; \\
    rm -rf /var/lib/apt/lists/* /tmp/ca.pem /tmp/extra-ca
""".replace("TOOLKIT", TOOLKIT)
HYPERPARAMETERS = {
    "sagemaker_program": '"train.py"', "sagemaker_submit_directory": '"/opt/ml/code"',
    "sagemaker_container_log_level": "20", "sagemaker_job_name": '"bench"', "sagemaker_region": '"us-east-1"',
    "sagemaker_parameter_server_enabled": "false", "batch-size": "100", "epochs": "2", "flag": "True",
    "opts": '{"a": 1, "b": "x y"}', "note": '"two words"', "lr": "1e-3",
}
PRINT_ENV = """
import json, os, sys, time
print("first-line", time.time(), flush=True)
with open("/opt/ml/output/data/seen.json", "w") as f:
    json.dump({"argv": sys.argv[1:], "env": {k: v for k, v in os.environ.items() if k.startswith("SM_")}}, f)
"""
SCRIPTS = {  # case -> the code folder's files
    "exit 3": {"train.py": "import sys\nprint('bad input', file=sys.stderr)\nsys.exit(3)\n"},
    "raise": {"train.py": "def load():\n    raise ValueError('no training files')\nload()\n"},
    # No network in these containers: pip cannot reach an index.
    "failing requirements.txt": {"requirements.txt": "tabulate==0.9.0\n", "train.py": "print('never')\n"},
    "docker stop": {"train.py": "import time\nprint('ready', flush=True)\nwhile True:\n    time.sleep(0.1)\n"},
}
RUNNERS = {"ours": "/opt/program/train", "toolkit": "/opt/venv/bin/train"}


def size(image: str) -> int:
    return int(sh("docker", "image", "inspect", "--format", "{{.Size}}", image).stdout)


def job(root: Path, files: dict[str, str]) -> Path:
    base = root / "ml"
    for folder in ("input/config", "input/data/training", "output/data", "model", "code"):
        (base / folder).mkdir(parents=True)
    for name, text in files.items():
        (base / "code" / name).write_text(textwrap.dedent(text))
    config = base / "input" / "config"
    (config / "hyperparameters.json").write_text(json.dumps(HYPERPARAMETERS))
    (config / "inputdataconfig.json").write_text(json.dumps({"training": {"TrainingInputMode": "File"}}))
    (config / "resourceconfig.json").write_text(json.dumps(
        {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}))
    return base


def docker_run(image: str, base: Path, runner: str, name: str | None = None, detach: bool = False):
    """`docker run` one job to its end (or detached), with no network: nothing is fetched."""
    # The toolkit waits (up to 15 minutes) for every host name to resolve, even on one host: algo-1 must.
    name = name or f"script-bench-{os.getpid()}-{time.monotonic_ns()}"
    try:
        return sh("docker", "run", "--name", name, "--network", "none", "--add-host", "algo-1:127.0.0.1",
                  "-v", f"{base}:/opt/ml", "-e", "AWS_DEFAULT_REGION=us-east-1", *(["-d"] if detach else ["--rm"]),
                  image, runner, check=False, timeout=600)
    except subprocess.TimeoutExpired:
        sh("docker", "rm", "-f", name, check=False)
        raise


def startup(image: str, runner: str, runs: int) -> tuple[float, float, dict]:
    """Seconds from `docker run` to the script's first line and to its end (medians of `runs`), and what the
    script saw: its arguments and SM_* variables."""
    firsts, totals = [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            base = job(Path(tmp), {"train.py": PRINT_ENV})
            started = time.time()
            done = docker_run(image, base, runner)
            totals.append(time.time() - started)
            line = next((x for x in done.stdout.splitlines() if x.startswith("first-line")), None)
            if done.returncode != 0 or line is None:
                raise SystemExit(f"{runner} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
            firsts.append(float(line.split()[1]) - started)
            seen = json.loads((base / "output" / "data" / "seen.json").read_text())
    return statistics.median(firsts), statistics.median(totals), seen


def ending(image: str, runner: str, case: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        base = job(Path(tmp), SCRIPTS[case])
        started = time.monotonic()
        if case == "docker stop":
            name = f"script-bench-{os.getpid()}"
            docker_run(image, base, runner, name=name, detach=True)
            while "ready" not in sh("docker", "logs", name).stdout:
                time.sleep(0.2)
            started = time.monotonic()
            sh("docker", "stop", "-t", "20", name)
            code = json.loads(sh("docker", "inspect", "--format", "{{json .State.ExitCode}}", name).stdout)
            sh("docker", "rm", "-f", name)
        else:
            code = docker_run(image, base, runner).returncode
        seconds = time.monotonic() - started
        failure = base / "output" / "failure"
        text = failure.read_text().strip() if failure.exists() else "(none)"
        return f"exit {code}, {seconds:.1f} s, output/failure: {' | '.join(text.splitlines()[:4])[:300]}"


def run(bench: Any) -> list[Figure]:
    """`bench`: train_bench.Bench (its work folder and --runs)."""
    image = os.environ.get("CPU_IMAGE", "mxnet-byoc:cpu")
    variant = f"{image}-toolkit"
    dockerfile = bench.work / "Dockerfile.toolkit"
    dockerfile.write_text(DOCKERFILE)
    started = time.monotonic()
    sh("docker", "build", "--network", "host", "--build-arg", f"IMAGE={image}", "-f", str(dockerfile), "-t", variant,
       str(ROOT), timeout=1800)
    print(f"built {variant} ({TOOLKIT}) in {time.monotonic() - started:.0f} s")
    added = sh("docker", "run", "--rm", variant, "sh", "-c",
               "/opt/venv/bin/python -m pip list --format=freeze 2>/dev/null").stdout.split()
    ours = set(sh("docker", "run", "--rm", image, "cat", "/opt/program/PACKAGES.txt").stdout.split())
    sizes = size(image) / 1e6, size(variant) / 1e6
    print(f"image sizes: {image} {sizes[0]:.1f} MB, with the toolkit {sizes[1]:.1f} MB (+{sizes[1] - sizes[0]:.1f} MB)")
    print(f"packages the toolkit adds: {', '.join(sorted(set(added) - ours))}")
    starts = {}
    for label, runner in RUNNERS.items():
        first, total, _ = starts[label] = startup(variant, runner, bench.args.runs)
        print(f"start-up, {label}: docker run -> the script's first line {first:.2f} s, whole run {total:.2f} s "
              f"(median of {bench.args.runs})")
    a, b = starts["ours"][2], starts["toolkit"][2]
    names = sorted(set(a["env"]) | set(b["env"]))
    differ = [n for n in names if a["env"].get(n) != b["env"].get(n)]
    print(f"SM_* variables: {len(names)} names, {len(names) - len(differ)} identical"
          + (f", different: {differ}" if differ else "") + f"; arguments identical: {a['argv'] == b['argv']}")
    for case in SCRIPTS:
        for label, runner in RUNNERS.items():
            print(f"{case}, {label}: {ending(variant, runner, case)}")
    print(f"load average while measured: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
    return [
        Figure("training.toolkit.size", "the CPU image (ours) against the same image with the toolkit",
               f"{sizes[0]:.1f} MB", f"with {TOOLKIT} {sizes[1]:.1f} MB", sizes[0] / sizes[1]),
        Figure("training.toolkit.startup", "docker run to the script's first line (median)",
               f"{starts['ours'][0]:.2f} s", f"the toolkit's runner {starts['toolkit'][0]:.2f} s",
               starts["ours"][0] / starts["toolkit"][0]),
        Figure("training.toolkit.variables", "SM_* variables and arguments the same as the toolkit's",
               f"{len(names) - len(differ)} of {len(names)} variables, arguments "
               f"{'identical' if a['argv'] == b['argv'] else 'DIFFERENT'}", target="all identical",
               met=not differ and a["argv"] == b["argv"]),
    ]
