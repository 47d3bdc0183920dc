"""Several hosts: the parameter-server settings each role gets, and waiting for host names (distributed.py)."""

from __future__ import annotations

import time

import pytest

from mxnet_byoc.train import distributed
from mxnet_byoc.train.environment import Resources, TrainingError

# A heterogeneous cluster as resourceconfig.json describes it (instance_groups, current_group_name).
GROUPS = [{"instance_group_name": "cpu", "instance_type": "ml.c5.xlarge", "hosts": ["algo-1", "algo-2"]},
          {"instance_group_name": "gpu", "instance_type": "ml.p3.2xlarge", "hosts": ["algo-3"]}]
ADDRESSES = {"algo-1": "10.0.0.1", "algo-2": "10.0.0.2", "algo-3": "10.0.0.3"}


def cluster(current: str, interface: str | None = "eth0") -> distributed.Cluster:
    resources = Resources(current_host=current, hosts=["algo-1", "algo-2", "algo-3"], network_interface=interface,
                          instance_groups=GROUPS)
    return distributed.Cluster(resources, ADDRESSES, 9000)


@pytest.mark.parametrize("role", ["scheduler", "server", "worker"])
def test_every_host_of_every_group_is_one_worker_and_one_server_of_one_cluster(role):
    env = cluster("algo-3").environment(role)
    assert env == {
        "DMLC_ROLE": role,
        "DMLC_PS_ROOT_URI": "10.0.0.1",  # the scheduler runs on the first host
        "DMLC_PS_ROOT_PORT": "9000",
        "DMLC_NUM_WORKER": "3",
        "DMLC_NUM_SERVER": "3",
        "DMLC_NODE_HOST": "10.0.0.3",
        "DMLC_INTERFACE": "eth0",  # from network_interface_name
        "MXNET_KVSTORE_BIGARRAY_BOUND": "65536",
    }


def test_without_a_network_interface_ps_lite_picks_one():
    assert "DMLC_INTERFACE" not in cluster("algo-1", interface=None).environment("worker")


def test_host_names_resolve_to_addresses():
    assert distributed.resolve(["localhost", "127.0.0.2"], timeout=5) == {"localhost": "127.0.0.1",
                                                                         "127.0.0.2": "127.0.0.2"}


def test_a_host_name_that_never_resolves_fails_after_peer_timeout():
    started = time.monotonic()
    with pytest.raises(TrainingError, match=r"hosts \['algo-9.invalid'\] did not resolve within 1 s \(peer_timeout\)"):
        distributed.resolve(["localhost", "algo-9.invalid"], timeout=1)
    assert time.monotonic() - started >= 1
