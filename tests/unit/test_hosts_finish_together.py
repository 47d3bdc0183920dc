"""Hosts leave together: a host whose work is done waits until every peer is done or gone (SDK local mode
stops every container once the first exits), told apart by what the peers' heartbeat ports answer.
Two hosts on loopback addresses (127.0.0.1 and 127.0.0.2) in one process."""

from __future__ import annotations

import threading
import time

import pytest

from devkit.net import free_port_pair
from mxnet_byoc.train import distributed
from mxnet_byoc.train.environment import Resources

HOSTS = ["127.0.0.1", "127.0.0.2"]


@pytest.fixture
def watchdogs():
    port = free_port_pair(HOSTS)  # other jobs on this machine may hold any fixed port
    made = []
    for host in HOSTS:
        cluster = distributed.Cluster(Resources(current_host=host, hosts=HOSTS), {h: h for h in HOSTS}, port)
        dog = distributed.Watchdog(cluster, distributed.ParameterServers(cluster), timeout=60,
                                   on_failure=lambda reason: pytest.fail(reason))
        dog.start()
        made.append(dog)
    yield made
    for dog in made:
        dog.stop()


def _finish_in_background(dog, should_stop=lambda: False) -> threading.Thread:
    thread = threading.Thread(target=dog.finish_together, args=(should_stop,), daemon=True)
    thread.start()
    return thread


def test_a_host_waits_while_a_peer_still_works_and_goes_when_it_is_done(watchdogs):
    first, second = watchdogs
    waiting = _finish_in_background(second)
    time.sleep(3 * distributed.HEARTBEAT_INTERVAL / 4)
    assert waiting.is_alive()  # the first host's script still runs
    first_done = _finish_in_background(first)
    waiting.join(5)
    first_done.join(5)
    assert not waiting.is_alive() and not first_done.is_alive()


def test_a_peer_that_is_gone_does_not_hold_anyone(watchdogs):
    first, second = watchdogs
    first.stop()  # its heartbeat port closes, as when its container has exited
    time.sleep(1)
    waiting = _finish_in_background(second)
    waiting.join(5)
    assert not waiting.is_alive()


def test_a_stop_ends_the_wait(watchdogs):
    stop = threading.Event()
    waiting = _finish_in_background(watchdogs[1], stop.is_set)
    time.sleep(0.5)
    assert waiting.is_alive()
    stop.set()
    waiting.join(5)
    assert not waiting.is_alive()
