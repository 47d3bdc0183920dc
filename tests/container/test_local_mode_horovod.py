"""Horovod over MPI through SDK 2's `sagemaker.mxnet.MXNet` in local mode, as users of AWS's MXNet containers
ran it: `distribution={"mpi": {"enabled": True, "processes_per_host": P}}` on H hosts (real containers on the
`sagemaker-local` network, mpirun from the first host over SSH to the others).

AWS's own test script (tests/resources/aws_hvd_basic) runs unchanged, and every rank's file is checked as
AWS's toolkit test checks it; the MNIST example (examples/horovod) trains in the same job and its rank files
show the collectives' results, at 1x2, 2x1 and 2x2 (sdk3/test_sdk3_mpi.py: the same through SDK 3's own MPI driver).
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from devkit.idx import write_subsets
from devkit.net import free_port
from tests.container import test_local_mode as one_host_tests
from tests.container.horovod_code import write_code
from tests.container.test_local_mode import ROLE, local_session
from tests.container.test_local_mode_distributed import host_lines, run_fit
from tests.container.test_script_mode import compose_containers  # noqa: F401 - a module fixture

pytestmark = [pytest.mark.container, pytest.mark.slow]

offline = one_host_tests.offline


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory) -> Path:
    return write_code(tmp_path_factory.mktemp("hvd-code"))


@pytest.fixture(scope="module")
def inputs(mnist_dir, tmp_path_factory) -> dict[str, str]:
    data = write_subsets(mnist_dir, tmp_path_factory.mktemp("hvd-mnist"), 3000, 500)
    return {name: f"file://{data / name}" for name in ("training", "test")}


def extract(tar_path: Path, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path) as tar:
        tar.extractall(into, filter="data")
    return into


@pytest.mark.parametrize("hosts, processes", [(1, 2), (2, 1), (2, 2)])
def test_horovod_through_the_mxnet_estimator(offline, cpu_image, source_dir, inputs, compose_containers,  # noqa: F811
                                            tmp_path, hosts, processes):
    from sagemaker.mxnet import MXNet

    estimator = MXNet(image_uri=cpu_image, framework_version="1.9.0", py_version="py38", role=ROLE,
                      instance_count=hosts, instance_type="local", entry_point="train.py", source_dir=str(source_dir),
                      hyperparameters={"epochs": 2, "batch-size": 64},
                      distribution={"mpi": {"enabled": True, "processes_per_host": processes,
                                            "custom_mpi_options": "--NCCL_DEBUG WARN"}},
                      output_path=f"file://{tmp_path}", sagemaker_session=local_session(free_port()))
    run = run_fit(estimator, inputs, f"horovod-{hosts}x{processes}")
    print(f"Horovod {hosts}x{processes} through the MXNet estimator, local mode: {run.seconds:.1f} s")
    names = sorted(run.containers)
    assert len(names) == hosts, names
    for host in names:
        assert run.containers[host]["ExitCode"] == 0, (host, run.container_logs[host][-3000:])
    model = extract(tmp_path / "model.tar.gz", tmp_path / "model")
    size = hosts * processes
    # AWS's check: every rank wrote its file with its local rank, rank and size.
    for rank in range(size):
        local_rank = rank % processes
        assert json.loads((model / f"local-rank-{local_rank}-rank-{rank}").read_text()) == {
            "local-rank": local_rank, "rank": rank, "size": size}
    # The MNIST example: the collectives agree on every rank, and ranks ran on every host.
    checks = [json.loads((model / f"hvd-rank-{rank}.json").read_text()) for rank in range(size)]
    assert all(c["allreduce_sum"] == size * (size + 1) / 2 and c["broadcast"] == 7.0 for c in checks), checks
    assert len({c["hostname"] for c in checks}) == hosts, checks  # each host's container ran its ranks
    metrics = json.loads(tarfile.open(tmp_path / "output.tar.gz").extractfile("data/metrics.json").read())
    assert metrics["ranks"] == size and metrics["test_accuracy"] > 0.75, metrics
    # mpirun ran on the first host only; the others served it over SSH and ended with its outcome.
    first = host_lines(run.log, names[0])
    assert any(line.startswith("mpirun") or "mpirun --host" in line for line in first), first[-40:]
    for host in names[1:]:
        lines = host_lines(run.log, host)
        assert any("MPI: sshd started on" in line for line in lines), lines[-40:]
        assert any("MPI: the job ended successfully on" in line for line in lines), lines[-40:]
