"""Devices, engine and threads, decided once from the environment and the hyperparameters (runtime.py)."""

from __future__ import annotations

import os

import pytest

from mxnet_byoc.train import hostpath, runtime
from mxnet_byoc.train.environment import ContractError
from mxnet_byoc.train.hyperparameters import HyperparameterError, Hyperparameters
from mxnet_byoc.train.runtime import Device


def resolve(contexts: str = "", distributed: bool = False, gpu_present: bool = False, **environ: str):
    return runtime.resolve(Hyperparameters(contexts=contexts), distributed, environ, gpu_present=gpu_present)


def test_the_environment_variable_wins_over_the_hyperparameter():
    rt = resolve("gpu(0)", MXNET_BYOC_CONTEXTS="cpu(0), CPU(1)")
    assert rt.devices == (Device("cpu", 0), Device("cpu", 1))
    assert rt.source == "MXNET_BYOC_CONTEXTS"
    rt = resolve("cpu(0),cpu(1),cpu(2)")
    assert rt.devices == (Device("cpu", 0), Device("cpu", 1), Device("cpu", 2))
    assert rt.source == "hyperparameter 'contexts'"
    assert resolve().devices == () and resolve().source == "detected"


@pytest.mark.parametrize("contexts, environ, error, message", [
    ("", {"MXNET_BYOC_CONTEXTS": "tpu(0)"}, ContractError,
     r"^MXNET_BYOC_CONTEXTS: cannot read device 'tpu\(0\)': expected cpu\(N\) or gpu\(N\)"),
    ("cpu(0),gpu", {}, HyperparameterError, r"^hyperparameter 'contexts': cannot read device 'gpu'"),
    (" , ", {}, HyperparameterError, r"^hyperparameter 'contexts': no device in ','"),
])
def test_an_unreadable_device_list_names_where_it_came_from(contexts, environ, error, message):
    with pytest.raises(error, match=message):
        resolve(contexts, **environ)


@pytest.mark.parametrize("contexts, distributed, gpu_present, naive", [
    ("", False, False, True),  # no GPU: the CPU, synchronously
    ("cpu(0),cpu(1)", False, True, True),  # CPU devices asked for on a GPU machine
    ("", False, True, False),  # every GPU: the threaded engine
    ("gpu(0)", False, False, False),
    ("", True, False, False),  # parameter servers need the threaded engine
])
def test_the_naive_engine_only_for_cpu_devices_on_one_host(contexts, distributed, gpu_present, naive):
    rt = resolve(contexts, distributed, gpu_present)
    assert rt.naive_engine is naive
    assert (rt.environment().get("MXNET_ENGINE_TYPE") == "NaiveEngine") is naive
    if not naive:
        assert "MXNET_ENGINE_TYPE" not in rt.environment()  # MXNet's default, the threaded engine


def test_the_callers_engine_and_threads_stand():
    rt = resolve(MXNET_ENGINE_TYPE="ThreadedEngine", OMP_NUM_THREADS="3")
    assert not rt.naive_engine
    assert rt.environment() == {"MXNET_ENGINE_TYPE": "ThreadedEngine", "OMP_NUM_THREADS": "3"}
    assert resolve(MXNET_ENGINE_TYPE="NaiveEngine", gpu_present=True).naive_engine


def test_threads_default_to_every_core_this_process_may_use():
    assert resolve().threads == str(len(os.sched_getaffinity(0)))


def test_apply_puts_the_choices_into_the_environment(monkeypatch):
    # A stand-in environment: this process's own must not change (its MXNet may not have started its engine yet).
    monkeypatch.setattr(os, "environ", {"MXNET_SUBGRAPH_VERBOSE": "1"})
    rt = resolve("cpu(0)", OMP_NUM_THREADS="1")
    runtime.apply(rt)
    assert os.environ["MXNET_ENGINE_TYPE"] == "NaiveEngine" and os.environ["OMP_NUM_THREADS"] == "1"
    assert os.environ["MXNET_STORAGE_FALLBACK_LOG_VERBOSE"] == "0"
    assert os.environ["MXNET_SUBGRAPH_VERBOSE"] == "1"  # the caller's setting stands
    assert "cpu(0) (hyperparameter 'contexts'), engine NaiveEngine, OpenMP threads 1" in rt.describe()


def test_contexts_and_the_host_path_follow_the_runtime():
    import mxnet as mx

    rt = resolve("cpu(0),cpu(1)")
    contexts = rt.contexts()
    assert contexts == [mx.cpu(0), mx.cpu(1)]
    assert hostpath.available(contexts, rt.naive_engine)
    assert not hostpath.available(contexts, naive_engine=False)
    assert not hostpath.available([mx.gpu(0)], naive_engine=True)
    # Nothing listed and no GPU in this build: the CPU.
    assert resolve().contexts() == [mx.cpu()]
