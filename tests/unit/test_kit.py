"""devkit, the helpers tests, benches and the demo share: job folders the contract reads back, IDX and
.npy bytes, waits and ports, docker commands."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from devkit import KitError, bodies, docker, idx, jobs, net, offline, waiting
from mxnet_byoc.train import data, environment

HPS = {"model": "mlp", "epochs": "2"}


@pytest.fixture(scope="module")
def subsets(mnist_dir, tmp_path_factory):
    return idx.write_subsets(mnist_dir, tmp_path_factory.mktemp("subsets"), 300, 100)


def test_make_job_from_mnist_is_what_the_contract_reads(mnist_dir, tmp_path):
    base = jobs.make_job(tmp_path / "ml", mnist_dir, HPS, sagemaker_config=True)
    env = environment.load(base)
    assert env.paths == environment.Paths(base)
    assert (env.hyperparameters.model, env.hyperparameters.epochs) == ("mlp", 2)
    assert sorted(env.channels) == ["test", "training"]
    assert all(c.input_mode == "File" and c.distribution == "FullyReplicated" for c in env.channels.values())
    assert (env.resources.current_host, env.resources.hosts) == ("algo-1", ["algo-1"])
    for channel, names in idx.MNIST_FILES.items():
        for name in names:
            staged = env.channels[channel].path / name
            # Real files, not links to outside: a Docker mount of `base` must see them.
            assert staged.is_file() and not staged.is_symlink()
            assert staged.read_bytes() == (mnist_dir / name).read_bytes()
            assert not staged.samefile(mnist_dir / name)  # copied: a test may change them


def test_make_job_links_when_asked(mnist_dir, tmp_path):
    base = jobs.make_job(tmp_path / "ml", mnist_dir, channels=("training",), link=True)
    staged = base / "input/data/training" / idx.MNIST_FILES["training"][0]
    assert not staged.is_symlink()
    if os.stat(mnist_dir).st_dev == os.stat(tmp_path).st_dev:  # else a copy, as across file systems
        assert staged.samefile(mnist_dir / idx.MNIST_FILES["training"][0])


def test_make_job_from_channel_folders_with_config_files(subsets, tmp_path):
    resource = {"current_host": "algo-2", "hosts": ["algo-1", "algo-2"]}
    base = jobs.make_job(tmp_path / "ml", subsets, HPS, {"resourceconfig.json": resource},
                         channels=("training",))
    env = environment.load(base)
    assert list(env.channels) == ["training"] and env.resources.rank == 1
    assert not (base / "input/config/inputdataconfig.json").exists()
    assert len(data.read_channel(env.training.path)) == 300


def test_make_job_names_a_channel_it_cannot_fill(tmp_path):
    with pytest.raises(KitError, match="no folder 'validation'"):
        jobs.make_job(tmp_path / "ml", tmp_path, channels=("validation",))


def test_mnist_arrays_and_subsets(mnist_dir, subsets):
    images, labels = idx.mnist_arrays(mnist_dir, "test", 20)
    assert images.shape == (20, 28, 28) and images.dtype == np.uint8 and labels.shape == (20,)
    training = data.read_channel(subsets / "training")
    assert len(training) == 300
    assert np.array_equal(training.images[:, 0], idx.mnist_arrays(mnist_dir, "training", 300)[0])


@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", "<i2", "<i4", ">f4", "<f8"])
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_idx_written_is_read_back_by_the_images_reader(tmp_path, dtype, gz):
    array = (np.arange(60).reshape(3, 4, 5) - 7).astype(dtype)
    path = idx.write_idx(tmp_path / "deep" / "x", array, gz=gz)
    back = idx.read_idx(path)
    assert back.shape == array.shape and np.array_equal(back, array)


def test_idx_refuses_a_type_it_has_not():
    with pytest.raises(ValueError, match="no type for int64"):
        idx.idx_bytes(np.zeros(3, dtype=np.int64))


def test_npy_bytes_round_trip_and_refuse_pickles_unless_asked():
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert np.array_equal(np.load(io.BytesIO(bodies.npy(array))), array)
    objects = np.array([{"a": 1}], dtype=object)
    with pytest.raises(ValueError):
        bodies.npy(objects)
    assert bodies.npy(objects, allow_pickle=True).startswith(b"\x93NUMPY")


def test_png_bytes_decode_to_the_same_pixels():
    from PIL import Image

    image = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    decoded = Image.open(io.BytesIO(bodies.png(image)))
    assert decoded.mode == "L" and np.array_equal(np.asarray(decoded), image)


def test_wait_until_returns_the_first_true_value():
    answers = iter([0, None, "found"])
    assert waiting.wait_until(lambda: next(answers), timeout=5, interval=0) == "found"


def test_wait_until_fails_naming_what_it_waited_for():
    with pytest.raises(KitError, match=r"the answer: not within 0\.05 s\nlog tail"):
        waiting.wait_until(lambda: False, timeout=0.05, what="the answer", details=lambda: "log tail")


def test_wait_until_fails_as_soon_as_the_process_exits():
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    process.wait()
    with pytest.raises(KitError, match="exited with 3 while waiting for a line"):
        waiting.wait_until(lambda: False, timeout=600, what="a line", process=process)


def test_free_port_can_be_listened_on():
    port = net.free_port()
    assert not net.listening(port)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        assert net.listening(port)


def test_docker_command():
    cmd = docker.docker_command("img:1", "serve", name="n", mounts={"/m": "/opt/ml/model:ro"},
                                env={"A": "1"}, user="1:2", extra=("--init",))
    assert cmd == ["docker", "run", "--rm", "--network", "host", "--name", "n", "--user", "1:2",
                   "-v", "/m:/opt/ml/model:ro", "-e", "A=1", "--init", "img:1", "serve"]
    assert docker.docker_command("img:1", detach=True)[:3] == ["docker", "run", "-d"]


def test_metrics_json_and_trained_job(tmp_path):
    output = environment.Paths(tmp_path).output_data
    output.mkdir(parents=True)
    (output / "metrics.json").write_text(json.dumps({"validation_accuracy": 0.5}))
    job = jobs.TrainedJob(tmp_path, None)
    assert jobs.metrics_json(tmp_path) == job.metrics == {"validation_accuracy": 0.5}
    assert job.model_dir == tmp_path / "model" and job.failure == ""


def test_offline_aws_sets_dummy_credentials_for_the_block_only(monkeypatch):
    monkeypatch.setenv("AWS_PROFILE", "real-account")
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    with offline.offline_aws():
        assert "AWS_PROFILE" not in os.environ
        assert os.environ["AWS_SECRET_ACCESS_KEY"] == offline.AWS_OFFLINE["AWS_SECRET_ACCESS_KEY"]
        import boto3

        client = boto3.client("sts")
        with pytest.raises(Exception, match="127.0.0.1:9|proxy|Proxy"):  # the dead proxy, never AWS
            client.get_caller_identity()
    assert os.environ["AWS_PROFILE"] == "real-account" and "HTTPS_PROXY" not in os.environ
