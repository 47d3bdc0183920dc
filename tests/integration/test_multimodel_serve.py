"""A multi-model endpoint in a real `serve` (SAGEMAKER_MULTI_MODEL=true, nginx in front of 2 gunicorn workers),
driven as SageMaker drives it: 20 models of every kind loaded in parallel, each invoked from many connections at
once, half unloaded, reloaded, listed page by page; a model that cannot load, beside the others."""

from __future__ import annotations

import os
import shutil
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from devkit.mme_models import JSON, ZooModel, zoo
from devkit.script_models import write_script
from devkit.waiting import wait_until

CONNECTIONS = 16
ROUNDS = 5  # requests per model per round of invocations


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[ZooModel]:
    return zoo(tmp_path_factory.mktemp("models"), 20)


@pytest.fixture
def server(start_server, tmp_path):
    running = start_server(tmp_path / "ml", SAGEMAKER_MULTI_MODEL="true")
    running.wait_ready(120)
    return running


def load(server, name: str, folder) -> requests.Response:
    return requests.post(server.url("/models"), json={"model_name": name, "url": str(folder)}, timeout=300)


def invoke_all(server, models: list[ZooModel]) -> list[str]:
    """Every model ROUNDS times, from CONNECTIONS connections at once; the mistakes found."""
    local = threading.local()

    def call(model: ZooModel) -> str | None:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        answer = session.post(server.url(f"/models/{model.name}/invoke"), data=model.body,
                              headers={"Content-Type": model.content_type, "Accept": JSON,
                                       "X-Amzn-SageMaker-Target-Model": f"{model.name}.tar.gz"}, timeout=60)
        if answer.status_code != 200 or not model.expected(answer.content):
            return f"{model.name} ({model.kind}): {answer.status_code} {answer.text[:200]}"
        return None

    with ThreadPoolExecutor(CONNECTIONS) as pool:
        return [m for m in pool.map(call, [m for m in models for _ in range(ROUNDS)]) if m]


def listed(server, limit: int = 7) -> list[str]:
    names, token = [], None
    while True:
        page = requests.get(server.url("/models"), params={"limit": limit, **({"next_page_token": token}
                                                                               if token else {})}, timeout=30)
        assert page.status_code == 200
        names += [m["modelName"] for m in page.json()["models"]]
        token = page.json().get("nextPageToken")
        if token is None:
            return names


def test_twenty_models_loaded_invoked_unloaded_and_reloaded(server, models):
    assert requests.get(server.url("/ping"), timeout=10).status_code == 200  # before any model
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda m: load(server, m.name, m.folder), models))
    assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers if a.status_code != 200]
    assert listed(server) == sorted(m.name for m in models)
    assert invoke_all(server, models) == []

    unloaded, kept = models[::2], models[1::2]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda m: requests.delete(server.url(f"/models/{m.name}"), timeout=120), unloaded))
    assert [a.status_code for a in answers] == [200] * 10
    assert listed(server) == sorted(m.name for m in kept)
    for model in unloaded[:3]:
        gone = requests.post(server.url(f"/models/{model.name}/invoke"), data=model.body,
                             headers={"Content-Type": JSON}, timeout=30)
        assert gone.status_code == 404 and gone.json() == {"error": f"model {model.name!r} is not loaded"}
    assert invoke_all(server, kept) == []

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda m: load(server, m.name, m.folder), unloaded))
    assert [a.status_code for a in answers] == [200] * 10
    assert invoke_all(server, models) == []
    assert listed(server, limit=100) == sorted(m.name for m in models)


def test_the_contracts_errors(server, models, tmp_path):
    model = models[2]  # one with code
    assert load(server, model.name, model.folder).status_code == 200
    again = load(server, model.name, model.folder)
    assert again.status_code == 409 and again.json() == {"error": f"model {model.name!r} is loaded already"}
    assert requests.get(server.url("/models/nothing"), timeout=10).status_code == 404
    assert requests.delete(server.url("/models/nothing"), timeout=10).json() == {"error": "model 'nothing' is not "
                                                                                       "loaded"}
    echoed = requests.post(server.url(f"/models/{model.name}/invoke"), data=b"[[1]]",
                           headers={"Content-Type": JSON, "Accept": JSON,
                                    "X-Amzn-SageMaker-Custom-Attributes": "tenant=7"}, timeout=30)
    assert echoed.json()["attributes"] == "tenant=7"

    broken = tmp_path / "broken" / "model"
    write_script(broken / "code", "def model_fn(model_dir):\n    raise RuntimeError('no weights for you')\n")
    failed = load(server, "broken", broken)
    assert failed.status_code == 500 and failed.json() == {"error": "model broken: model_fn raised RuntimeError: no "
                                                                    "weights for you"}
    assert listed(server) == [model.name]
    assert invoke_all(server, [model]) == []  # the others go on serving


def test_a_models_requirements_may_add_packages_but_never_change_one(server, models, tmp_path):
    """pip runs once per model before any worker loads it, pinned to what is installed: a requirement that is met
    loads (pip has nothing to do, offline), one that would change numpy is refused with pip's reason."""
    met, changing = tmp_path / "met" / "model", tmp_path / "changing" / "model"
    for folder, requirement in ((met, "numpy\n"), (changing, "numpy==1.0.0\n")):
        shutil.copytree(models[2].folder, folder)
        (folder / "code" / "requirements.txt").write_text(requirement)
    assert load(server, "met", met).status_code == 200
    refused = load(server, "changing", changing)
    assert refused.status_code == 400
    assert refused.json()["error"].startswith("model changing: pip could not install requirements.txt (exit 1): ")
    assert "Cannot install numpy==1.0.0" in refused.json()["error"]
    assert "may add packages, not change the version of one installed already" in refused.json()["error"]
    assert listed(server) == ["met"]


def test_a_worker_that_dies_is_replaced_by_one_that_holds_every_model(server, models):
    for model in models[:3]:
        assert load(server, model.name, model.folder).status_code == 200
    killed = server.worker_pids()[0]
    os.kill(killed, signal.SIGKILL)
    wait_until(lambda: len(server.worker_pids()) == 2 and killed not in server.worker_pids(), 60,
               "gunicorn's new worker")
    replacement = max(server.worker_pids())

    def loaded_there() -> set[str]:
        return {line.split()[line.split().index("model") + 1] for line in server.output().splitlines()
                if f"(pid {replacement})" in line and " loaded from " in line}

    wait_until(lambda: loaded_there() >= {m.name for m in models[:3]}, 60, "the new worker's loads",
               details=lambda: f"{replacement} {loaded_there()} {server.worker_pids()}")
    assert invoke_all(server, models[:3]) == []  # whichever worker answers, each model answers
    assert requests.delete(server.url(f"/models/{models[0].name}"), timeout=60).status_code == 200


def test_invocations_go_on_while_other_models_load_and_unload(server, models):
    """Models of every kind loaded and unloaded over and over in the workers' loading threads, while their request
    threads answer other models from many connections: every answer right, none failed."""
    steady, churned = models[:6], models[6:]
    for model in steady:
        assert load(server, model.name, model.folder).status_code == 200
    stop, mistakes, answered = threading.Event(), [], []

    def hammer() -> None:
        while not stop.is_set():
            found = invoke_all(server, steady)
            mistakes.extend(found)
            answered.append(len(steady) * ROUNDS)

    callers = threading.Thread(target=hammer)
    callers.start()
    try:
        for _ in range(3):
            with ThreadPoolExecutor(4) as pool:
                loads = list(pool.map(lambda m: load(server, m.name, m.folder), churned))
                assert [a.status_code for a in loads] == [200] * len(churned), [a.text for a in loads]
                gone = list(pool.map(lambda m: requests.delete(server.url(f"/models/{m.name}"), timeout=120),
                                     churned))
                assert [a.status_code for a in gone] == [200] * len(churned)
    finally:
        stop.set()
        callers.join(120)
    assert mistakes == [] and sum(answered) > 0
