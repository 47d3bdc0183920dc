"""Several hosts without Docker: two `train` processes on loopback addresses, one parameter-server cluster.

Host names are 127.0.0.1 and 127.0.0.2 (they resolve to themselves), so each process binds its own address
as a separate SageMaker host would.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from devkit import idx, jobs
from devkit.net import free_port_pair
from devkit.waiting import wait_until

pytestmark = pytest.mark.slow

HOSTS = ["127.0.0.1", "127.0.0.2"]
HPS = {"model": "mlp", "epochs": "3", "log_interval": "0", "peer_timeout": "15"}


@pytest.fixture(scope="module")
def channels(mnist_dir, tmp_path_factory) -> Path:
    return idx.write_subsets(mnist_dir, tmp_path_factory.mktemp("dist-data"), 12000, 2000)


def _cluster(tmp_path: Path, channels: Path | list[Path], port: int, config: dict | None = None,
             **hps: str) -> list[Path]:
    bases = []
    for i, host in enumerate(HOSTS):
        own = {"resourceconfig.json": {"current_host": host, "hosts": HOSTS, "network_interface_name": "lo"},
               **(config or {})}
        data = channels[i] if isinstance(channels, list) else channels
        bases.append(jobs.make_job(tmp_path / host, data, {**HPS, "ps_port": str(port), **hps}, own))
    return bases


def _train_all(bases: list[Path], **hps: str) -> list[str]:
    """Every host's `train` at once, with these hyperparameters changed; each must succeed."""
    for base in bases:
        path = base / "input" / "config" / "hyperparameters.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **hps}))
    procs = [jobs.start_train(b) for b in bases]
    try:
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:  # a hung cluster must not outlive the test and hold its ports
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out
    return outputs


def _parameter_servers(port: int) -> list[str]:
    """Scheduler and server processes of the cluster whose scheduler listens on `port`."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"DMLC_PS_ROOT_PORT={port}\0".encode() in environ.read_bytes():
                found.append(environ.parent.name)
        except OSError:  # gone meanwhile
            continue
    return found


def _epochs(out: str) -> list[int]:
    return [int(n) for n in re.findall(r"^epoch=(\d+);", out, re.M)]


def test_two_hosts_train_one_model_as_accurate_as_one_host(tmp_path, channels):
    single = jobs.make_job(tmp_path / "single", channels, HPS)
    proc = jobs.start_train(single)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    one_host = jobs.metrics_json(single)["validation_accuracy"]

    bases = _cluster(tmp_path, channels, free_port_pair(HOSTS))
    procs = [jobs.start_train(b) for b in bases]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out
    for host, out in zip(HOSTS, outputs):
        # Each host says which cluster it joined and tags its metric lines.
        assert re.search(r"joined cluster: kvstore=dist_sync rank=[01] workers=2 servers=2", out), out
        assert len(re.findall(rf"^epoch=\d+;.*host={re.escape(host)};$", out, re.M)) == 3, out
        # Each worker trained on its own half of the 12000 records.
        assert "training mlp on 6000 images" in out, out
    # Only the first host writes the model and the outputs.
    assert (bases[0] / "model" / "model-0000.params").is_file()
    assert not (bases[1] / "model" / "model-0000.params").exists()
    two_hosts = jobs.metrics_json(bases[0])["validation_accuracy"]
    assert abs(two_hosts - one_host) <= 0.006, (one_host, two_hosts)
    # Host-unique checkpoint names; the weights are the same on every host.
    weights = [mx.nd.load(str(base / "checkpoints" / f"checkpoint-{host}-e0003-s0000000.params"))["weights"]
               for base, host in zip(bases, HOSTS)]
    np.testing.assert_array_equal(weights[0].asnumpy(), weights[1].asnumpy())


def test_a_dead_peer_fails_the_survivor_within_peer_timeout(tmp_path, channels):
    # 129 images do not split over two hosts: each takes the nearest share, 65.
    port = free_port_pair(HOSTS)
    bases = _cluster(tmp_path, channels, port, epochs="50", log_interval="5", batch_size="129")
    procs = [jobs.start_train(b) for b in bases]
    try:
        # Wait until the second host is training, then kill it as a lost instance would vanish.
        assert any(line.startswith("progress:") for line in procs[1].stdout), "the second host never trained"
        procs[1].send_signal(signal.SIGKILL)
        # Bounded generously: without the heartbeats the survivor would wait for its peer for ever.
        out, _ = procs[0].communicate(timeout=120)
    finally:
        for p in procs:
            p.kill()
    assert procs[0].returncode == 1, out
    reason = (bases[0] / "output" / "failure").read_text().splitlines()[0]
    assert "host 127.0.0.2 stopped answering" in reason and "peer_timeout=15" in reason, reason
    assert "each device takes 65 images per step, a global batch of 130" in out, out
    # Servers and the scheduler die with their `train`, killed or failed.
    wait_until(lambda: not _parameter_servers(port), timeout=30, what="the parameter servers to exit")



def test_a_host_failing_alone_leaves_at_once_and_its_peer_fails_too(tmp_path, channels):
    # The second host's test channel is corrupt: it fails after joining the cluster, while its peer trains.
    broken = tmp_path / "broken-data"
    shutil.copytree(channels, broken)
    (broken / "test" / "images.idx").write_bytes(b"\x00\x00\x08\x03not an image file")
    port = free_port_pair(HOSTS)
    bases = _cluster(tmp_path, [channels, broken], port, epochs="50")
    procs = [jobs.start_train(b) for b in bases]
    try:
        # Bounded generously: left to ps-lite's shutdown, the failed host would wait for its peer for ever.
        out, _ = procs[1].communicate(timeout=120)
        survivor, _ = procs[0].communicate(timeout=120)
    finally:
        for p in procs:
            p.kill()
    assert procs[1].returncode == 1, out
    assert "images.idx" in (bases[1] / "output" / "failure").read_text().splitlines()[0]
    assert procs[0].returncode == 1, survivor
    reason = (bases[0] / "output" / "failure").read_text().splitlines()[0]
    assert "host 127.0.0.2 stopped answering" in reason, reason


SHARDED = {"inputdataconfig.json": {"training": {"TrainingInputMode": "File", "S3DistributionType": "ShardedByS3Key"},
                                    "test": {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"}}}


def test_sharded_channels_are_used_as_given_and_hosts_agree_on_steps_and_where_to_resume(tmp_path, mnist_dir):
    # Shards of unequal size, 64 images a step on each host (the global 128 over two): 3000 records on the first
    # host (46 steps), 2000 on the second (31).
    data = [idx.write_subsets(mnist_dir, tmp_path / f"data-{n}", n, 500) for n in (3000, 2000)]
    bases = _cluster(tmp_path, data, free_port_pair(HOSTS), SHARDED, epochs="1", log_interval="5")
    outputs = _train_all(bases)
    for out, n in zip(outputs, (3000, 2000)):
        assert f"training mlp on {n} images" in out, out
        assert "progress: epoch 1/1 step 30/31 " in out and "step 35/" not in out, out  # the smaller shard's count

    # A host without checkpoints (a replaced instance, a cleared folder): every host starts over.
    for path in (bases[1] / "checkpoints").iterdir():
        path.unlink()
    outputs = _train_all(bases, epochs="2", ps_port=str(free_port_pair(HOSTS)))
    for out in outputs:
        assert "resumed from" not in out and _epochs(out) == [1, 2], out
    # The first host's checkpoint lies past that start: set aside, where it can no longer displace the new ones.
    assert "set aside checkpoint-127.0.0.1-e0001-s0000000.json, checkpoint-127.0.0.1-e0001-s0000000.params: it " \
           "is past epoch 0 step 0, where the hosts resume together" in outputs[0], outputs[0]
    assert (bases[0] / "checkpoints" / "checkpoint-127.0.0.1-e0002-s0000000.json").is_file()

    # One host a checkpoint behind the other: both resume from the older position.
    for path in (bases[1] / "checkpoints").glob("checkpoint-127.0.0.2-e0002-*"):
        path.unlink()
    outputs = _train_all(bases, epochs="3", ps_port=str(free_port_pair(HOSTS)))
    for out in outputs:
        assert "resumed from epoch 1 step 0" in out and _epochs(out) == [2, 3], out
    assert "set aside checkpoint-127.0.0.1-e0002-s0000000.json" in outputs[0], outputs[0]
    assert "set aside" not in outputs[1], outputs[1]
