"""SDK 3's `ModelTrainer(distributed=MPI(...))` in local container mode against the real CPU image.

SDK 3 sends no `sagemaker_mpi_enabled`: it mounts its own MPI driver (sm_drivers/distributed_drivers/
mpi_driver.py) and runs it with the image's python3. The driver imports paramiko, starts `/usr/sbin/sshd -D`
on every host, has each other host log in to the first one over SSH, and runs
`mpirun ... python -m mpi4py <entry script>` as root from the first host; the ranks on the other hosts get the
job's variables from /etc/environment (written by the driver, read by sshd's PAM session). So the image
needs sshd, mpirun, mpi4py and paramiko, and root SSH between the algo-N hosts with no prompt.

AWS's Horovod test script runs unchanged, then the MNIST example, at 2 hosts x 1 process, 1 x 2 and 2 x 2. Two things
of SDK 3's own are set right for the test, as a user would:
- Its local mode writes `network_interface_name: ethwe` (SageMaker's interface) into resourceconfig.json, and
  the driver hands that to mpirun (`btl_tcp_if_include ethwe`), which a local container, with eth0 only,
  refuses for any image: the test writes eth0, as SDK 2's local mode does.
- Its driver passes the processes per host as mpirun's total (`-np`), so only the first host would run ranks:
  `mpi_additional_options=["-np", str(hosts * processes)]` gives the total (mpirun takes the last -np).
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from devkit.idx import write_subsets
from tests.container.horovod_code import write_code
from tests.container.test_local_mode import ROLE

pytestmark = [pytest.mark.container, pytest.mark.slow]


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory) -> Path:
    return write_code(tmp_path_factory.mktemp("sdk3-hvd-code"))


@pytest.fixture(scope="module")
def channels(mnist_dir, tmp_path_factory) -> Path:
    return write_subsets(mnist_dir, tmp_path_factory.mktemp("sdk3-hvd-data"), 3000, 500)


def _members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


@pytest.fixture
def eth0_in_local_mode(monkeypatch):
    """SDK 3's local mode with eth0 in resourceconfig.json (see above)."""
    from sagemaker.train.local.local_container import _LocalContainer

    write = _LocalContainer._write_config_files

    def write_eth0(self, host, *args, **kwargs):
        write(self, host, *args, **kwargs)
        path = Path(self.container_root) / host / "input" / "config" / "resourceconfig.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "network_interface_name": "eth0"}))

    monkeypatch.setattr(_LocalContainer, "_write_config_files", write_eth0)


@pytest.mark.parametrize("hosts, processes", [(2, 1), (1, 2), (2, 2)])
def test_model_trainer_with_mpi_runs_horovod(offline, eth0_in_local_mode, cpu_image, source_dir, channels, tmp_path,
                                             hosts, processes):
    from sagemaker.core.training.configs import Compute, InputData, SourceCode
    from sagemaker.train import ModelTrainer
    from sagemaker.train.distributed import MPI
    from sagemaker.train.model_trainer import Mode

    from byoctl.leftovers import remove_compose_containers

    root = tmp_path / "trainer"
    root.mkdir()
    trainer = ModelTrainer(training_image=cpu_image, training_mode=Mode.LOCAL_CONTAINER,
                           compute=Compute(instance_type="local", instance_count=hosts),
                           hyperparameters={"epochs": 2, "batch-size": 64}, base_job_name="sdk3-mpi",
                           source_code=SourceCode(source_dir=str(source_dir), entry_script="train.py"),
                           distributed=MPI(process_count_per_node=processes,
                                           mpi_additional_options=["-np", str(hosts * processes)]),
                           local_container_root=str(root),
                           role=ROLE)
    try:
        trainer.train(input_data_config=[InputData(channel_name=name, data_source=str(channels / name))
                                         for name in ("training", "test")])
    finally:
        remove_compose_containers(root)
    model = _members(root / "compressed_artifacts" / "model.tar.gz")
    size = hosts * processes
    for rank in range(size):
        local_rank = rank % processes
        assert json.loads(model[f"local-rank-{local_rank}-rank-{rank}"]) == {
            "local-rank": local_rank, "rank": rank, "size": size}
        checks = json.loads(model[f"hvd-rank-{rank}.json"])
        assert checks["allreduce_sum"] == size * (size + 1) / 2 and checks["broadcast"] == 7.0, checks
    assert len({json.loads(model[f"hvd-rank-{r}.json"])["hostname"] for r in range(size)}) == hosts
    metrics = json.loads(_members(root / "compressed_artifacts" / "output.tar.gz")["data/metrics.json"])
    assert metrics["ranks"] == size and metrics["test_accuracy"] > 0.75, metrics
