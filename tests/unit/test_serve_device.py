"""Serving's device (mxnet_byoc.serve.device): the GPU when there is one, spread over the workers, else the
CPU, for the built-in model, AWS's default handlers and a user's script alike. This machine has no GPU and
a CPU build of MXNet: asking for gpu(0) reaches MXNet, which refuses it, and that shows the device is used."""

from __future__ import annotations

import pytest
from serving_models import export_indicator_model

from devkit.script_models import AWS_MODEL, write_script
from mxnet_byoc import modeldir
from mxnet_byoc.serve import device, mxnet_defaults, network, script

CUDA_REFUSAL = "Compile with USE_CUDA=1 to enable GPU usage"


@pytest.fixture
def slot():
    yield device.set_worker_slot
    device.set_worker_slot(0)


def test_a_cpu_build_counts_no_gpu_and_serves_on_the_cpu():
    assert device.gpu_count() == 0
    assert device.current() == device.Device() and str(device.current()) == "cpu(0)"


def test_workers_are_spread_over_the_gpus(monkeypatch, slot):
    monkeypatch.setattr(device, "gpu_count", lambda: 2)
    placed = []
    for worker in range(5):
        slot(worker)
        placed.append(device.current().gpu_id)
    assert placed == [0, 1, 0, 1, 0]
    assert str(device.Device(1)) == "gpu(1)" and (device.Device(1).dev_type, device.Device(1).dev_id) == (2, 1)


def test_the_built_in_model_is_loaded_on_the_device(tmp_path):
    model_dir = export_indicator_model(tmp_path / "model")
    assert network.load(model_dir, device.Device()).predict is not None
    with pytest.raises(modeldir.ModelDirError, match=CUDA_REFUSAL):
        network.load(model_dir, device.Device(0))


def test_the_default_handlers_load_on_the_device():
    with pytest.raises(modeldir.ModelDirError, match=CUDA_REFUSAL):
        mxnet_defaults.load_default(AWS_MODEL, device.Device(0))


def test_a_scripts_default_model_fn_binds_on_the_device_and_context_names_it(tmp_path):
    with pytest.raises(RuntimeError, match=CUDA_REFUSAL):  # Module.bind wraps MXNet's error
        mxnet_defaults.default_model_fn(AWS_MODEL, device.Device(0))
    write_script(tmp_path, """
        def model_fn(model_dir, context):
            return context.system_properties["gpu_id"]

        def transform_fn(model, body, content_type, accept):
            return str(model)
    """)
    code = script.UserCode(tmp_path, "inference", named=True)
    handler = script.load_script(code, AWS_MODEL, device.Device(1), "application/json")
    assert handler.invoke(b"", None, None) == (b"1", "application/json")
    assert "on gpu(1)" in str(handler)


def test_each_new_worker_takes_the_lowest_free_slot(monkeypatch, slot):
    """gunicorn's pre_fork (in the master) and post_fork (in the worker): a replacement takes its GPU back."""
    from types import SimpleNamespace

    from mxnet_byoc.serve import server

    master = SimpleNamespace(WORKERS={})
    for pid in (101, 102, 103):
        worker = SimpleNamespace()
        server._assign_slot(master, worker)
        master.WORKERS[pid] = worker
    assert [w.slot for w in master.WORKERS.values()] == [0, 1, 2]
    del master.WORKERS[102]  # a worker died
    replacement = SimpleNamespace()
    server._assign_slot(master, replacement)
    assert replacement.slot == 1
    monkeypatch.setattr(device, "gpu_count", lambda: 2)
    server._after_fork(master, replacement)
    assert device.current() == device.Device(1)
