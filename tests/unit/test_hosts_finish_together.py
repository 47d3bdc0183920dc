"""Hosts leave together: a host whose work is done waits until every peer is done or gone (SDK local mode
stops every container once the first exits), told apart by what the peers' heartbeat ports answer.
Two hosts on loopback addresses (127.0.0.1 and 127.0.0.2) in one process."""

from __future__ import annotations

import threading

import pytest

from devkit.net import free_port_pair
from devkit.waiting import wait_until
from mxnet_byoc.train import distributed
from mxnet_byoc.train.environment import Resources

HOSTS = ["127.0.0.1", "127.0.0.2"]
JOIN_S = 10  # a bound on a thread that has been told to end, not a wait for something to happen


@pytest.fixture
def watchdogs():
    port = free_port_pair(HOSTS)  # other jobs on this machine may hold any fixed port
    made, failures = [], []
    for host in HOSTS:
        cluster = distributed.Cluster(Resources(current_host=host, hosts=HOSTS), {h: h for h in HOSTS}, port)
        dog = distributed.Watchdog(cluster, distributed.ParameterServers(cluster), timeout=60,
                                   on_failure=failures.append)
        dog.start()
        made.append(dog)
    yield made
    for dog in made:
        dog.stop()
    assert not failures  # a watchdog thread reports here: raising there would go unseen


def peer_answers(dog: distributed.Watchdog, monkeypatch) -> list[bytes]:
    """What `dog` hears from its peer, each time it asks (the answers, in order, as they come)."""
    heard: list[bytes] = []
    ask = dog._state

    def recording(address: str) -> bytes:
        answer = ask(address)
        heard.append(answer)
        return answer

    monkeypatch.setattr(dog, "_state", recording)
    return heard


def _finish_in_background(dog, should_stop=lambda: False) -> threading.Thread:
    thread = threading.Thread(target=dog.finish_together, args=(should_stop,), daemon=True)
    thread.start()
    return thread


def test_a_host_waits_while_a_peer_still_works_and_goes_when_it_is_done(watchdogs, monkeypatch):
    first, second = watchdogs
    heard = peer_answers(second, monkeypatch)
    waiting = _finish_in_background(second)
    # Twice "still running" from the first host, whose work goes on: the second has looked again after the
    # first answer instead of leaving.
    wait_until(lambda: heard.count(distributed.RUNNING) >= 2, timeout=30, what="two answers from the first host")
    assert waiting.is_alive()
    first_done = _finish_in_background(first)
    waiting.join(JOIN_S)
    first_done.join(JOIN_S)
    assert not waiting.is_alive() and not first_done.is_alive()
    assert heard[-1] == distributed.DONE


def test_a_peer_that_is_gone_does_not_hold_anyone(watchdogs, monkeypatch):
    first, second = watchdogs
    heard = peer_answers(second, monkeypatch)
    first.stop()  # its heartbeat port closes, as when its container has exited
    waiting = _finish_in_background(second)
    waiting.join(JOIN_S)
    assert not waiting.is_alive()
    assert heard[-1] == b""  # no answer: gone, not done


def test_a_stop_ends_the_wait(watchdogs, monkeypatch):
    stop = threading.Event()
    heard = peer_answers(watchdogs[1], monkeypatch)
    waiting = _finish_in_background(watchdogs[1], stop.is_set)
    wait_until(lambda: distributed.RUNNING in heard, timeout=30, what="an answer from the first host")
    assert waiting.is_alive()
    stop.set()
    waiting.join(JOIN_S)
    assert not waiting.is_alive()
