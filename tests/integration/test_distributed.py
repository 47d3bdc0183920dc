"""Several hosts without Docker: two `train` processes on loopback addresses, one parameter-server cluster.

Host names are 127.0.0.1 and 127.0.0.2 (they resolve to themselves), so each process binds its own address
as a separate SageMaker host would.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from byoctl.kit import idx, jobs

pytestmark = pytest.mark.slow

HOSTS = ["127.0.0.1", "127.0.0.2"]
HPS = {"model": "mlp", "epochs": "3", "log_interval": "0", "peer_timeout": "15"}


@pytest.fixture(scope="module")
def channels(mnist_dir, tmp_path_factory) -> Path:
    return idx.write_subsets(mnist_dir, tmp_path_factory.mktemp("dist-data"), 12000, 2000)


def _cluster(tmp_path: Path, channels: Path, port: int, **hps: str) -> list[Path]:
    bases = []
    for host in HOSTS:
        config = {"resourceconfig.json": {"current_host": host, "hosts": HOSTS, "network_interface_name": "lo"}}
        bases.append(jobs.make_job(tmp_path / host, channels, {**HPS, "ps_port": str(port), **hps}, config))
    return bases


def test_two_hosts_train_one_model_as_accurate_as_one_host(tmp_path, channels):
    single = jobs.make_job(tmp_path / "single", channels, HPS)
    proc = jobs.start_train(single)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    one_host = jobs.metrics_json(single)["validation_accuracy"]

    bases = _cluster(tmp_path, channels, 9410)
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
    # Host-unique checkpoint names.
    assert list((bases[1] / "checkpoints").glob("checkpoint-127.0.0.2-*.params"))


def test_a_dead_peer_fails_the_survivor_within_peer_timeout(tmp_path, channels):
    bases = _cluster(tmp_path, channels, 9420, epochs="50", log_interval="5")
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
