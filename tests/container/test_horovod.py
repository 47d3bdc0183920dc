"""Horovod over MPI in the CPU image, one host (`docker run IMAGE train`): Horovod's build, 2 ranks under
`sagemaker_mpi_enabled` with correct collectives, the MNIST example at 2 ranks reaching the accuracy of 1,
the failing rank's error as the job's reason, a stop reaching every rank, Horovod's own launcher with Gloo,
and the libraries of AWS's training image used once each. Several hosts: test_local_mode_horovod.py and
sdk3/test_sdk3_mpi.py."""

from __future__ import annotations

import json
import shutil
import textwrap
import time
from pathlib import Path

import pytest

from devkit.docker import docker_run
from devkit.idx import write_subsets
from devkit.net import free_port
from devkit.project import ROOT
from devkit.shell import sh

pytestmark = [pytest.mark.container, pytest.mark.slow]

EXAMPLE = ROOT / "examples" / "horovod" / "train_hvd_mnist.py"
RANK_FILES = "hvd-rank-{}.json"
MAX_ACCURACY_GAP = 0.015  # 1.5 points on 1,000 test images: the ranks see the data in another order


@pytest.fixture(scope="module")
def small_mnist(mnist_dir, tmp_path_factory) -> Path:
    return write_subsets(mnist_dir, tmp_path_factory.mktemp("hvd-data"), 6000, 1000)


def script_job(base: Path, code: Path, data: Path | None = None, **hyperparameters) -> Path:
    """/opt/ml for a script-mode job whose code is `code` (mounted at /opt/ml/code); `data`'s channels copied."""
    config = base / "input" / "config"
    config.mkdir(parents=True)
    channels = {name: {"TrainingInputMode": "File"} for name in ("training", "test")} if data is not None else {}
    (config / "inputdataconfig.json").write_text(json.dumps(channels))
    hps = {"sagemaker_program": '"train.py"', "sagemaker_submit_directory": '"/opt/ml/code"',
           **{k: json.dumps(v) for k, v in hyperparameters.items()}}
    (config / "hyperparameters.json").write_text(json.dumps(hps))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"],
                                                            "network_interface_name": "eth0"}))
    if data is not None:
        for name in ("training", "test"):
            shutil.copytree(data / name, base / "input" / "data" / name)
    return base


def run_script(image: str, tmp_path: Path, source: str, data: Path | None = None, name: str = "train.py",
               **hyperparameters):
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / name).write_text(textwrap.dedent(source))
    base = script_job(tmp_path / "ml", code, data, **hyperparameters)
    run = docker_run(image, "train", mounts={base: "/opt/ml", code: "/opt/ml/code"}, timeout=600)
    return run, base


def test_horovod_is_built_with_mxnet_mpi_and_gloo(cpu_image):
    out = sh("docker", "run", "--rm", "--network", "none", cpu_image, "horovodrun", "--check-build").stdout
    print(out)
    for line in ("[X] MXNet", "[X] MPI", "[X] Gloo"):
        assert line in out, out
    # (Its PyTorch line says [X]: Horovod's check imports horovod.torch, which only warns without its library.)
    assert "[ ] TensorFlow" in out, out


def test_two_ranks_on_one_host_under_sagemaker_mpi_enabled(cpu_image, tmp_path):
    run, base = run_script(cpu_image, tmp_path, """
        import json, os
        import horovod.mxnet as hvd
        import mxnet as mx
        hvd.init()
        r = hvd.rank()
        out = {"rank": r, "local_rank": hvd.local_rank(), "size": hvd.size(),
               "sum": float(hvd.allreduce(mx.nd.array([r + 1.0]), average=False, name="s").asscalar()),
               "bcast": float(hvd.broadcast(mx.nd.array([r + 5.0]), root_rank=1, name="b").asscalar()),
               "gather": hvd.allgather(mx.nd.array([[r]] * (r + 1)), name="g").asnumpy().ravel().tolist(),
               "host": os.environ["SM_CURRENT_HOST"], "hps": json.loads(os.environ["SM_HPS"])}
        json.dump(out, open(os.path.join(os.environ["SM_MODEL_DIR"], f"rank-{r}.json"), "w"))
        os.write(1, f"rank {r} of {hvd.size()} done\\n".encode())  # one write: mpirun tags what it reads
    """, sagemaker_mpi_enabled=True, sagemaker_mpi_num_of_processes_per_host=2, epochs=1)
    assert run.returncode == 0, run.log[-4000:]
    ranks = [json.loads((base / "model" / f"rank-{r}.json").read_text()) for r in range(2)]
    for r, seen in enumerate(ranks):
        assert seen == {"rank": r, "local_rank": r, "size": 2, "sum": 3.0, "bcast": 6.0, "gather": [0.0, 1.0, 1.0],
                        "host": "algo-1", "hps": {"epochs": 1}}, seen
    assert "[1,0]<stdout>:rank 0 of 2 done" in run.log and "[1,1]<stdout>:rank 1 of 2 done" in run.log
    assert (base / "output" / "success").is_file()


def _mnist(image: str, tmp_path: Path, data: Path, processes: int) -> dict:
    code = tmp_path / "code"
    code.mkdir(parents=True)
    shutil.copy(EXAMPLE, code / "train.py")
    base = script_job(tmp_path / "ml", code, data, sagemaker_mpi_enabled=True,
                      sagemaker_mpi_num_of_processes_per_host=processes, epochs=2, **{"batch-size": 64})
    run = docker_run(image, "train", mounts={base: "/opt/ml", code: "/opt/ml/code"}, timeout=600)
    assert run.returncode == 0, run.log[-4000:]
    for rank in range(processes):
        checks = json.loads((base / "model" / RANK_FILES.format(rank)).read_text())
        assert checks["size"] == processes and checks["allreduce_sum"] == checks["expected_sum"], checks
        assert checks["broadcast"] == 7.0, checks  # rank 0's value everywhere
    assert (base / "model" / "model-symbol.json").is_file() and (base / "model" / "model-0000.params").is_file()
    return json.loads((base / "output" / "data" / "metrics.json").read_text())


def test_the_mnist_example_at_two_ranks_reaches_the_accuracy_of_one(cpu_image, small_mnist, tmp_path):
    one = _mnist(cpu_image, tmp_path / "one", small_mnist, 1)
    two = _mnist(cpu_image, tmp_path / "two", small_mnist, 2)
    print(f"MNIST (6,000 images, 2 epochs): 1 rank {one['test_accuracy']:.4f}, 2 ranks {two['test_accuracy']:.4f}")
    assert one["steps_per_epoch"] == two["steps_per_epoch"]  # the same global batch, so the same steps
    assert one["test_accuracy"] > 0.9, one
    assert abs(two["test_accuracy"] - one["test_accuracy"]) <= MAX_ACCURACY_GAP, (one, two)


def test_the_failing_ranks_error_is_the_jobs_reason(cpu_image, tmp_path):
    run, base = run_script(cpu_image, tmp_path, """
        import time
        import horovod.mxnet as hvd
        hvd.init()
        if hvd.rank() == 1:
            raise ValueError("rank 1 has no data shard")
        time.sleep(120)  # rank 0 would wait for ever in a collective: mpirun must end it
    """, sagemaker_mpi_enabled=True, sagemaker_mpi_num_of_processes_per_host=2)
    assert run.returncode != 0, run.log[-4000:]
    failure = (base / "output" / "failure").read_text()
    assert failure.startswith("ValueError: rank 1 has no data shard (the script train.py exited with code "), failure
    assert "[1,1]" not in failure.splitlines()[0]


def test_a_stop_reaches_every_rank(cpu_image, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text(textwrap.dedent("""
        import os, signal, sys, time
        import horovod.mxnet as hvd
        hvd.init()
        def stop(signum, frame):
            open(os.path.join(os.environ["SM_MODEL_DIR"], f"stopped-{hvd.rank()}"), "w").close()
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        open(os.path.join(os.environ["SM_MODEL_DIR"], f"ready-{hvd.rank()}"), "w").close()
        while True:
            time.sleep(0.1)
    """))
    base = script_job(tmp_path / "ml", code, sagemaker_mpi_enabled=True, sagemaker_mpi_num_of_processes_per_host=2)
    (base / "model").mkdir()
    name = f"mxnet-byoc-hvd-stop-{free_port()}"
    sh("docker", "run", "-d", "--name", name, "--network", "host", "-v", f"{base}:/opt/ml",
       "-v", f"{code}:/opt/ml/code", cpu_image, "train")
    try:
        deadline = time.monotonic() + 180
        while not all((base / "model" / f"ready-{r}").exists() for r in range(2)):
            assert time.monotonic() < deadline, sh("docker", "logs", name).stdout[-3000:]
            time.sleep(0.2)
        sh("docker", "stop", "-t", "60", name, timeout=90)
        state = json.loads(sh("docker", "inspect", "--format", "{{json .State}}", name).stdout)
        logs = sh("docker", "logs", name).stdout
    finally:
        sh("docker", "rm", "-f", name, check=False)
    assert state["ExitCode"] == 143, (state, logs[-3000:])
    assert all((base / "model" / f"stopped-{r}").exists() for r in range(2)), logs[-3000:]
    assert (base / "output" / "failure").read_text().startswith("Training job stopped: SIGTERM received and passed on")


def test_horovods_own_launcher_with_gloo_from_a_users_script(cpu_image, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "worker.py").write_text(textwrap.dedent("""
        import json, os
        import horovod.mxnet as hvd
        import mxnet as mx
        hvd.init()
        total = float(hvd.allreduce(mx.nd.array([hvd.rank() + 1.0]), average=False, name="s").asscalar())
        json.dump({"rank": hvd.rank(), "size": hvd.size(), "sum": total, "gloo": hvd.gloo_enabled()},
                  open(os.path.join(os.environ["SM_MODEL_DIR"], f"gloo-{hvd.rank()}.json"), "w"))
    """))
    run, base = run_script(cpu_image, tmp_path, """
        import subprocess, sys
        subprocess.run(["horovodrun", "--gloo", "-np", "2", "-H", "localhost:2", sys.executable, "worker.py"],
                       check=True)
    """)
    assert run.returncode == 0, run.log[-4000:]
    for rank in range(2):
        seen = json.loads((base / "model" / f"gloo-{rank}.json").read_text())
        assert seen == {"rank": rank, "size": 2, "sum": 3.0, "gloo": True}, seen


LIBRARIES_SCRIPT = """
    import io, json, os, subprocess
    import numpy as np
    import mxnet as mx
    report = {}

    import gluoncv
    net = gluoncv.model_zoo.get_model("resnet18_v1", pretrained=False, classes=10)
    net.initialize()
    report["gluoncv"] = list(net(mx.nd.random.uniform(shape=(1, 3, 64, 64))).shape)

    import gluonnlp
    vocab = gluonnlp.Vocab(gluonnlp.data.count_tokens("the cat sat on the mat".split()))
    report["gluonnlp"] = [len(vocab), vocab["the"] != vocab["cat"]]

    import pandas as pd
    frame = pd.DataFrame({"a": [1, 2, 3], "b": [4.0, 5.0, 6.0]})
    report["pandas"] = float(frame.b.sum())

    import cv2
    report["cv2"] = list(cv2.resize(np.zeros((28, 28), np.uint8), (14, 7)).shape)

    import onnx
    model_dir = os.environ["SM_MODEL_DIR"]
    mlp = mx.gluon.nn.HybridSequential()
    mlp.add(mx.gluon.nn.Dense(8, activation="relu", in_units=4), mx.gluon.nn.Dense(2, in_units=8))
    mlp.initialize()
    mlp.hybridize()
    mlp(mx.nd.ones((1, 4)))
    mlp.export(os.path.join(model_dir, "mlp"), 0)
    onnx_file = mx.onnx.export_model(os.path.join(model_dir, "mlp-symbol.json"),
                                     os.path.join(model_dir, "mlp-0000.params"), [(1, 4)], np.float32,
                                     os.path.join(model_dir, "mlp.onnx"))
    onnx.checker.check_model(onnx.load(onnx_file))
    report["onnx"] = [n.op_type for n in onnx.load(onnx_file).graph.node]

    from sklearn.linear_model import LogisticRegression
    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    report["sklearn"] = LogisticRegression().fit(x, [0, 0, 1, 1]).predict([[0.2], [2.8]]).tolist()

    import scipy.sparse, h5py, yaml, tqdm, requests, mpi4py, sagemaker, smdebug
    report["scipy"] = int(scipy.sparse.eye(3).sum())
    with h5py.File(os.path.join(model_dir, "x.h5"), "w") as f:
        f["x"] = np.arange(3)
    report["h5py"] = h5py.File(os.path.join(model_dir, "x.h5"))["x"][:].tolist()
    report["yaml"] = yaml.safe_load("a: 1")

    from sagemaker_training import environment
    env = environment.Environment()
    report["sagemaker_training"] = [env.current_host, env.hosts, env.module_name]
    from sagemaker_inference import content_types, decoder, encoder, errors
    buffer = io.BytesIO()
    np.save(buffer, np.arange(3))
    decoded = decoder.decode(buffer.getvalue(), content_types.NPY)
    report["sagemaker_inference"] = [decoded.tolist(), encoder.encode(decoded, content_types.JSON),
                                     issubclass(errors.UnsupportedFormatError, Exception)]
    report["awscli"] = subprocess.run(["aws", "--version"], capture_output=True, text=True).stdout.split("/")[0]
    json.dump(report, open(os.path.join(model_dir, "libraries.json"), "w"))
"""


def test_the_libraries_of_awss_training_image_each_used_once(cpu_image, tmp_path):
    run, base = run_script(cpu_image, tmp_path, LIBRARIES_SCRIPT)
    assert run.returncode == 0, run.log[-4000:]
    report = json.loads((base / "model" / "libraries.json").read_text())
    assert report["gluoncv"] == [1, 10]
    assert report["gluonnlp"][1] is True and report["gluonnlp"][0] >= 5
    assert report["pandas"] == 15.0 and report["cv2"] == [7, 14]
    assert "Gemm" in report["onnx"] and "Relu" in report["onnx"]
    assert report["sklearn"] == [0, 1] and report["scipy"] == 3 and report["h5py"] == [0, 1, 2]
    assert report["yaml"] == {"a": 1}
    assert report["sagemaker_training"] == ["algo-1", ["algo-1"], "train"]
    assert report["sagemaker_inference"] == [[0, 1, 2], "[0, 1, 2]", True]
    assert report["awscli"] == "aws-cli"


LIBCUDA_IN_IMAGE = "/usr/lib/x86_64-linux-gnu/libcuda.so.1"


def test_the_gpu_images_horovod_reduces_cpu_tensors_over_mpi(gpu_image, libcuda_standin):
    """The GPU image's Horovod is the CPU build (no nvcc for CUDA 11 on PyPI): it loads against mxnet-cu112 and
    runs collectives on CPU NDArrays; with the driver stand-in, no GPU is visible here."""
    mount = ["-v", f"{libcuda_standin}:{LIBCUDA_IN_IMAGE}:ro"]
    build = sh("docker", "run", "--rm", "--network", "none", *mount, gpu_image, "horovodrun", "--check-build").stdout
    assert "[X] MXNet" in build and "[X] MPI" in build and "[X] Gloo" in build, build
    assert "[ ] NCCL" in build, build
    # One write per rank: print() writes each argument apart, and two ranks' unbuffered pieces interleave.
    probe = ("import os, horovod.mxnet as hvd, mxnet as mx; hvd.init(); "
             "total = hvd.allreduce(mx.nd.array([hvd.rank() + 1.0]), average=False).asscalar(); "
             "os.write(1, f'sum {hvd.rank()} {total}\\n'.encode())")
    out = sh("docker", "run", "--rm", "--network", "none", *mount, gpu_image, "mpirun", "-np", "2",
             "--host", "localhost:2", "python3", "-c", probe).stdout
    assert sorted(line.strip() for line in out.splitlines() if line.startswith("sum")) == ["sum 0 3.0", "sum 1 3.0"]
