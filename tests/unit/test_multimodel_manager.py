"""The model management API and the workers that follow it (serve/multimodel): in one process, each "worker" a
Replica with a pid of its own, the manager's routes through Flask's test client. The handlers are stand-ins whose
folder says what they do (fail, hold memory, wait for a gate); test_multimodel_models.py loads real models."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from devkit.waiting import wait_until
from mxnet_byoc import modeldir
from mxnet_byoc.serve.multimodel import manager as manager_module
from mxnet_byoc.serve.multimodel import memory, state
from mxnet_byoc.serve.multimodel.manager import Manager, create_app
from mxnet_byoc.serve.multimodel.replica import ModelNotLoaded, ModelUnavailable, Replica

GATES: dict[str, threading.Event] = {}  # model folder name -> released when set
WAIT_S = 30


class StandIn:
    def __init__(self, name: str, directory: Path, pid: int):
        self.name, self.directory, self.pid = name, directory, pid
        self.closed = threading.Event()
        size = directory / "hold-mib"
        self.held = bytearray(b"\x01") * (int(size.read_text()) << 20) if size.exists() else b""

    def invoke(self, body, content_type, accept, headers=None):
        return f"{self.name}@{self.pid}:{body.decode()}".encode(), "text/plain"

    def close(self) -> None:
        self.held = b""
        self.closed.set()


def build_for(pid: int, built: list):
    def build(name: str, directory: Path) -> StandIn:
        gate = GATES.get(directory.name)
        if gate is not None:
            assert gate.wait(WAIT_S)
        fail = directory / f"fail-{pid}"
        if not fail.exists():
            fail = directory / "fail"
        if fail.exists():
            raise modeldir.ModelDirError(fail.read_text())
        handler = StandIn(name, directory, pid)
        built.append(handler)
        return handler

    return build


class Server:
    """A manager and its workers; `live` is the set of worker pids the manager sees alive."""

    def __init__(self, folder: Path, pids=(101, 102), free_mib: int = 100_000):
        self.folder = folder
        self.live: set[int] = set()
        self.built: list[StandIn] = []
        self.replicas: dict[int, Replica] = {}
        self.free_mib = free_mib
        self.manager = Manager(folder, lambda: set(self.live), max_payload_bytes=1 << 20, usage=self.usage,
                               load_timeout_s=WAIT_S)
        self.client = create_app(self.manager).test_client()
        for pid in pids:
            self.start_worker(pid)

    def usage(self) -> memory.Usage:
        limit = 200_000 << 20
        held = sum(len(h.held) for h in self.built if not h.closed.is_set())
        return memory.Usage(limit, limit - (self.free_mib << 20) + held, "a test's limit")

    def start_worker(self, pid: int) -> Replica:
        replica = Replica(self.folder, build_for(pid, self.built), pid)
        self.replicas[pid] = replica
        self.live.add(pid)
        replica.start()
        assert replica.started.wait(WAIT_S)
        return replica

    def load(self, name: str, folder: Path):
        return self.client.post("/models", json={"model_name": name, "url": str(folder)})

    def answers(self, name: str) -> set[str]:
        found = set()
        for pid, replica in self.replicas.items():
            if pid in self.live:
                with replica.use(name) as handler:
                    found.add(handler.invoke(b"x", None, None)[0].decode())
        return found

    def close(self) -> None:
        for replica in self.replicas.values():
            replica.close()
        self.manager.close()


@pytest.fixture
def server(tmp_path):
    (tmp_path / "run").mkdir()
    running = Server(tmp_path / "run")
    yield running
    running.close()
    GATES.clear()


def model(tmp_path: Path, name: str, **files: str) -> Path:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    for file, text in files.items():
        (folder / file.replace("_", "-")).write_text(text)
    return folder


def test_a_loaded_model_answers_on_every_worker_and_is_listed(server, tmp_path):
    folder = model(tmp_path, "m1")
    answer = server.load("first", folder)
    assert answer.status_code == 200 and answer.json == {"status": "model first loaded"}
    assert server.answers("first") == {"first@101:x", "first@102:x"}
    assert server.client.get("/models").json == {"models": [{"modelName": "first", "modelUrl": str(folder)}]}
    assert server.client.get("/models/first").json == {"modelName": "first", "modelUrl": str(folder)}


def test_a_name_loaded_already_is_409(server, tmp_path):
    assert server.load("m", model(tmp_path, "a")).status_code == 200
    again = server.load("m", model(tmp_path, "b"))
    assert again.status_code == 409 and again.json == {"error": "model 'm' is loaded already"}
    assert server.answers("m") == {"m@101:x", "m@102:x"}


def test_unloading_frees_every_workers_copy(server, tmp_path):
    server.load("m", model(tmp_path, "a"))
    copies = [h for h in server.built if h.name == "m"]
    answer = server.client.delete("/models/m")
    assert answer.status_code == 200 and answer.json == {"status": "model m unloaded"}
    assert len(copies) == 2 and all(h.closed.is_set() for h in copies)
    for replica in server.replicas.values():
        with pytest.raises(ModelNotLoaded, match="model 'm' is not loaded"):
            with replica.use("m"):
                pass
    assert server.client.get("/models/m").status_code == 404
    assert server.client.delete("/models/m").json == {"error": "model 'm' is not loaded"}
    assert server.load("m", model(tmp_path, "b")).status_code == 200  # the name is free again


def test_the_list_pages_as_sagemaker_reads_it(server, tmp_path):
    for i in range(5):
        assert server.load(f"m{i}", model(tmp_path, f"f{i}")).status_code == 200
    names, token, pages = [], None, 0
    while True:
        query = {"limit": 2, **({"next_page_token": token} if token else {})}
        page = server.client.get("/models", query_string=query).json
        names += [m["modelName"] for m in page["models"]]
        pages += 1
        token = page.get("nextPageToken")
        if token is None:
            break
    assert names == [f"m{i}" for i in range(5)] and pages == 3
    assert server.client.get("/models", query_string={"next_page_token": "x"}).status_code == 400
    assert server.client.get("/models", query_string={"limit": "0"}).status_code == 400


@pytest.mark.parametrize("body, reason", [
    (b"{", "the body is not JSON"),
    (b"[1]", "the body must be a JSON object"),
    (b'{"model_name": "m"}', "expected {\"model_name\""),
    (b'{"model_name": "a/b", "url": "/tmp"}', "model_name 'a/b': expected 1 to 255 letters"),
    (b'{"model_name": "m", "url": "/no/such/folder"}', "url '/no/such/folder' is not a folder in the container"),
])
def test_a_malformed_load_is_400_with_its_reason(server, body, reason):
    answer = server.client.post("/models", data=body, content_type="application/json")
    assert answer.status_code == 400 and reason in answer.json["error"]
    assert server.client.get("/models").json == {"models": []}


def test_a_model_that_fails_on_one_worker_is_unloaded_everywhere_with_its_reason(server, tmp_path):
    folder = model(tmp_path, "bad", fail_102="model-symbol.json is missing")
    answer = server.load("bad", folder)
    assert answer.status_code == 400
    assert answer.json == {"error": "model bad, on worker 102: model-symbol.json is missing"}
    assert all("bad" not in r.loaded() for r in server.replicas.values())
    assert server.client.get("/models").json == {"models": []}
    assert server.load("good", model(tmp_path, "good")).status_code == 200  # the others go on


def test_a_model_that_fails_on_the_first_worker_is_never_loaded_on_the_others(server, tmp_path):
    answer = server.load("bad", model(tmp_path, "bad", fail="no usable model"))
    assert answer.status_code == 400 and answer.json == {"error": "model bad: no usable model"}
    assert [h for h in server.built if h.name == "bad"] == []


def test_507_before_any_worker_loads_when_the_files_do_not_fit(server, tmp_path):
    server.free_mib = 70  # below the margin and the files' estimate
    answer = server.load("big", model(tmp_path, "big"))
    assert answer.status_code == 507
    assert "model big needs about" in answer.json["error"] and "unload a model" in answer.json["error"]
    assert server.built == []


def test_507_after_the_first_copy_when_the_others_would_not_fit(server, tmp_path):
    server.free_mib = manager_module.RESERVE_BYTES // (1 << 20) + 120  # one 100 MiB copy fits, not two
    answer = server.load("big", model(tmp_path, "big", hold_mib="100"))
    assert answer.status_code == 507, answer.json
    assert "1 worker(s) x" in answer.json["error"] and "one copy took" in answer.json["error"]
    [copy] = [h for h in server.built if h.name == "big"]
    assert copy.closed.is_set()  # answered once its memory is given back
    assert server.client.get("/models").json == {"models": []}
    assert server.load("small", model(tmp_path, "small")).status_code == 200


def test_a_worker_that_dies_while_loading_is_507(server, tmp_path):
    GATES["slow"] = threading.Event()
    answers = []
    loading = threading.Thread(target=lambda: answers.append(server.load("slow", model(tmp_path, "slow"))))
    loading.start()
    probe = next(pid for pid in server.live if _loading_on(server, pid))
    server.live.discard(probe)  # gunicorn reaped it
    loading.join(WAIT_S)
    assert answers[0].status_code == 507 and f"(pid {probe}) died while loading it" in answers[0].json["error"]
    GATES["slow"].set()


def _loading_on(server: Server, pid: int) -> bool:
    def started() -> bool:
        entry = state.read_registry(server.folder).models.get("slow")
        return entry is not None and entry.phase == state.PROBE
    wait_until(started, WAIT_S, "the first worker loading")
    return state.read_registry(server.folder).models["slow"].probe == pid


def test_loads_run_in_parallel_and_loaded_models_answer_meanwhile(server, tmp_path):
    assert server.load("ready", model(tmp_path, "ready")).status_code == 200
    GATES["a"], GATES["b"] = threading.Event(), threading.Event()
    answers: dict[str, int] = {}
    threads = [threading.Thread(target=lambda n=n: answers.__setitem__(n, server.load(n, model(tmp_path, n))
                                                                       .status_code)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    wait_until(lambda: {"a", "b"} <= set(state.read_registry(server.folder).models), WAIT_S, "both loads begun")
    assert server.answers("ready") == {"ready@101:x", "ready@102:x"}  # while both loads wait
    with pytest.raises(ModelNotLoaded):
        with server.replicas[101].use("a"):
            pass
    assert server.load("a", model(tmp_path, "a")).status_code == 409
    GATES["a"].set()
    GATES["b"].set()
    for thread in threads:
        thread.join(WAIT_S)
    assert answers == {"a": 200, "b": 200}


def test_an_unload_waits_for_the_request_using_the_model(server, tmp_path):
    server.load("m", model(tmp_path, "m"))
    release, using = threading.Event(), threading.Event()

    def request() -> None:
        with server.replicas[101].use("m"):
            using.set()
            release.wait(WAIT_S)

    user = threading.Thread(target=request)
    user.start()
    assert using.wait(WAIT_S)
    answers = []
    unloading = threading.Thread(target=lambda: answers.append(server.client.delete("/models/m").status_code))
    unloading.start()
    copy = next(h for h in server.built if h.name == "m" and h.pid == 101)
    wait_until(lambda: "m" not in state.read_registry(server.folder).models, WAIT_S, "the unload begun")
    assert not copy.closed.is_set()  # still in use
    release.set()
    unloading.join(WAIT_S)
    assert answers == [200] and copy.closed.is_set()
    user.join(WAIT_S)


def test_a_worker_started_later_loads_every_model_before_it_serves(server, tmp_path):
    for name in ("a", "b"):
        server.load(name, model(tmp_path, name))
    replica = server.start_worker(103)  # its start waits for its first pass over the registry
    assert replica.loaded().keys() == {"a", "b"}
    assert server.answers("b") == {"b@101:x", "b@102:x", "b@103:x"}


def test_a_model_that_failed_on_a_replacement_worker_says_why_there(server, tmp_path):
    folder = model(tmp_path, "m")
    server.load("m", folder)
    (folder / "fail-104").write_text("out of luck")
    replica = server.start_worker(104)
    with pytest.raises(ModelUnavailable, match="could not be loaded on this worker: out of luck"):
        with replica.use("m"):
            pass
